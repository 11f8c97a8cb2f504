#!/usr/bin/env bash
# Every figure issue 21 asks of a bundled model, in one run (about an hour on 2 CPU cores, nothing else running):
#
#     bench/evaluate_model.sh [MODEL_DIR]      # default: ortho_node/bundled
#
# the real GE knee (Dice on the hand-made slices, overlays into bench/figures), the held-out synthetic studies
# with the knee's contrast sweep, false positives per normal study, and seconds per three-plane study.
# The golden reference (python3 -m tests.inference.golden) and bench/label_efficiency.py are not run here:
# the first only once the model ships, the second trains its own models.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-ortho_node/bundled}"
echo "== model $model ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "== real GE knee";                 python3 bench/real_knee.py --model "$model"
echo "== held-out synthetic, contrast sweep"; python3 bench/quality.py --model "$model" --knee 20 --ankle 20 --shoulder 20
echo "== false positives per normal study"; python3 bench/false_positives.py --model "$model" --studies 100
echo "== inference time";               python3 bench/inference.py --model "$model" --repeats 5
