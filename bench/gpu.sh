#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a machine with a CUDA GPU (CI has none). Each step has its own
# time limit so that one slow step cannot eat the others, and the limits add up to 9.5 minutes (a lent GPU's
# command may run 10); full logs go to ${OUT:-/tmp}/gpu-STEP.log, each starting with the card, driver, torch
# and CUDA versions.
#
#   ORTHO_TEST_SHARED=/path/to/shared bash bench/gpu.sh [STEP ...]    (default: every step, in this order)
#
# Issue 26's official-configuration fine-tuning figure is the extra step `finetune` (bash bench/gpu.sh finetune;
# 4 minutes), outside the default run so that the default stays within one command's 10 minutes.
set -u
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
declare -A limit=([checks]=120 [backbone]=75 [backbone-batch8]=50 [inference]=75 [throughput]=150 [backbone-compiled]=100
                  [finetune]=240)
declare -A command=(
    [checks]="python3 bench/cuda_checks.py"
    [backbone]="python3 bench/backbone.py --device cuda --feature-batch 1 --train-batch 10 --repeats 5"
    [backbone-batch8]="python3 bench/backbone.py --device cuda --feature-batch 8 --train-batch 0 --repeats 5"
    [inference]="python3 bench/inference.py --device cuda --config both --repeats 3"
    [throughput]="python3 bench/throughput.py --device cuda --config official --studies 64 --batch 1 4 8 16 --window-batch 16 --result-workers 12 --threads 4"
    [backbone-compiled]="python3 bench/backbone.py --device cuda --feature-batch 8 --train-batch 10 --repeats 5 --compile"
    [finetune]="python3 bench/finetune.py --device cuda --config official --task knee-seg --studies 40 --epochs 2 --evaluate 40 --threads 4"
)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(checks backbone backbone-batch8 inference throughput backbone-compiled)
versions=$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
           python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())")
echo "$versions"
for name in "${steps[@]}"; do
    echo "== $name"
    echo "$versions" > "$out/gpu-$name.log"
    timeout "${limit[$name]}" ${command[$name]} >> "$out/gpu-$name.log" 2>&1
    echo "(exit $?)" >> "$out/gpu-$name.log"
    grep -v -e 'step/s' -e '^W[0-9]' -e 'warn' "$out/gpu-$name.log" | tail -n 15
done
