#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a machine with a CUDA GPU (CI has none). Each step has its own
# time limit so that one slow step cannot eat the others; full logs go to ${OUT:-/tmp}/gpu-STEP.log.
#
#   ORTHO_TEST_SHARED=/path/to/shared bash bench/gpu.sh [STEP ...]    (default: every step, in this order)
set -u
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
declare -A limit=([checks]=180 [backbone]=150 [backbone-batch8]=90 [inference]=150 [backbone-compiled]=300)
declare -A command=(
    [checks]="python3 bench/cuda_checks.py"
    [backbone]="python3 bench/backbone.py --device cuda --feature-batch 1 --train-batch 10 --repeats 10"
    [backbone-batch8]="python3 bench/backbone.py --device cuda --feature-batch 8 --train-batch 0 --repeats 10"
    [inference]="python3 bench/inference.py --device cuda --config both --repeats 5"
    [backbone-compiled]="python3 bench/backbone.py --device cuda --feature-batch 8 --train-batch 10 --repeats 10 --compile"
)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(checks backbone backbone-batch8 inference backbone-compiled)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
for name in "${steps[@]}"; do
    echo "== $name"
    timeout "${limit[$name]}" ${command[$name]} > "$out/gpu-$name.log" 2>&1
    echo "(exit $?)" >> "$out/gpu-$name.log"
    grep -v -e 'step/s' -e '^W[0-9]' -e 'warn' "$out/gpu-$name.log" | tail -n 15
done
