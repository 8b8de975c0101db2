#!/usr/bin/env bash
# The ratios that matter on one GPU, in one script (under 8 minutes on one GPU):
#   1. bio train stage: the training engine vs the per-fit Lightning loop (the demo study), members equal
#   2. embedding stage vs the bare encoder forward, both in bf16
#   3. ECA vs softmax vs nn.MultiheadAttention, forward+backward, eager and torch.compile'd
#   4. `eca-bio demo --accelerator gpu`, end to end
#
#   bash benchmarks/gpu_check.sh           # on a machine with CUDA
#   bash benchmarks/gpu_check.sh --dry     # (or without CUDA) the same four steps, tiny, on the CPU, in seconds
#
# PYTHON picks the interpreter (default: python). Every step prints its own table; the script stops at the
# first step that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

DRY=0
if [ "${1:-}" = "--dry" ] || ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DRY=1
fi
step() { echo; echo "== $*"; }
SECONDS=0

if [ "$DRY" = 1 ]; then
  echo "gpu_check: dry pass on the CPU (tiny sizes; the numbers mean nothing, the steps must run)"
  step "1. train engine vs per-fit loop (demo study: one fold, one epoch)"
  "$PY" benchmarks/train_throughput.py --study demo --work "$WORK/train" \
    --set train.epochs=1 --set train.seeds=[0] --set train.tune_trials=1 --set "train.methods=[ridge, eca]" \
    --set "train.transforms=[egn]" --set train.final_method=null --set train.cv=fixed --set "train.test_slides=[SYN4]"
  step "2. embedding stage vs bare encoder (one section, tiny ViT)"
  "$PY" benchmarks/embed_throughput.py --sections B4 --encoder vit_tiny_patch16_224 --patch-px 32 --batch-size 64 \
    --num-workers 0
  step "3. ECA vs softmax vs nn.MultiheadAttention (eager)"
  "$PY" benchmarks/attention_cost.py --rounds 1 --iters 1 --target 100
  step "4. eca-bio demo (3 small slides, one epoch)"
  "$PY" -m eca_bio.cli demo --run-dir "$WORK/demo" --slides 3 --grid 5 --set train.epochs=1 --set train.seeds=[0] \
    --set train.tune_trials=1 --set "train.methods=[ridge, eca]" --set "train.transforms=[egn]" --set train.final_transform=egn \
    --accelerator cpu 2>/dev/null | tail -3
else
  "$PY" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
  step "1. train engine vs per-fit loop (demo study)"
  "$PY" benchmarks/train_throughput.py --study demo --work "$WORK/train" --accelerator gpu
  step "2. embedding stage vs bare encoder, bf16 (4 HER2+ sections, ViT-S/16)"
  "$PY" benchmarks/embed_throughput.py --accelerator gpu --precision bf16-mixed --batch-size 256 --num-workers 8 --threads 4
  step "3. ECA vs softmax vs nn.MultiheadAttention, forward+backward, eager and compiled"
  "$PY" benchmarks/attention_cost.py --device cuda --compile --rounds 9 --iters 20
  step "4. eca-bio demo --accelerator gpu"
  "$PY" -m eca_bio.cli demo --run-dir "$WORK/demo" --accelerator gpu --devices 1 | tail -3
fi
echo
echo "gpu_check finished in ${SECONDS}s"
