#!/usr/bin/env bash
# Every GPU measurement of the project in one go (issue #17): correctness on the device first (falling bf16 loss,
# packing == padding, generate), LLaVA-7B vs FILA-7B stage 2 at FILA's largest batch (with and without gradient
# checkpointing), packing vs padding with SDPA and flash-attention varlen, the vision side alone at FILA's 672
# canvas (hybrid vs ViT alone, ConvNeXt channels_last), Liger, and torch.compile last.
# Random weights, one GPU, nothing downloaded. Writes OUTPUT/gpu_check.json and OUTPUT/gpu_check.md after every
# measurement, so a run stopped at its time limit still leaves what it finished; no measurement starts after the
# suite's budget (--budget_s, default in fila_train/bench/suite.py).
#   bash scripts/gpu_check.sh --output "$OUT"        # on the GPU machine
#   bash scripts/gpu_check.sh --device cpu           # the same sequence on the tiny configurations (how it is tested)
# The GPU machine's image lacks some packages and has an older transformers than ours: `bash scripts/gpu_wheels.sh`
# fetches them here as wheels, and WHEELS=folder installs every *.whl in it into a folder of its own, ahead of the
# image's packages on the path (no index, no dependency resolution: the image has the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUTPUT=()  # default: the CLI's (playground/gpu_check)
BUDGET=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --output) OUTPUT=(--output "$2"); shift 2 ;;
    --budget_s) BUDGET=(--budget_s "$2"); shift 2 ;;
    *) echo "[gpu_check] error: unknown option $1 (known: --device, --output, --budget_s)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
unset FILA_GPU_CHECK_SITE  # set below only for this run's wheels (the JSON lists what is in it)
if [ -n "${WHEELS:-}" ]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "[gpu_check] error: WHEELS=$WHEELS holds no *.whl (bash scripts/gpu_wheels.sh makes them)" >&2; exit 2
  fi
  export FILA_GPU_CHECK_SITE=${TMPDIR:-/tmp}/fila-gpu-check-site
  rm -rf "$FILA_GPU_CHECK_SITE"
  $PYTHON -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$FILA_GPU_CHECK_SITE" "${wheels[@]}"
  export PYTHONPATH="$FILA_GPU_CHECK_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
$PYTHON -m fila_train.cli bench --suite gpu_check --device "$DEVICE" "${OUTPUT[@]}" "${BUDGET[@]}"
