#!/usr/bin/env bash
# Every GPU measurement of the project in one go (issue #17): LLaVA-7B vs FILA-7B stage 2 at FILA's largest
# batch (with and without gradient checkpointing), packing vs padding with SDPA and flash-attention varlen,
# torch.compile and Liger, the vision side alone at FILA's 672 canvas (hybrid vs ViT alone, ConvNeXt
# channels_last and compiled), and correctness on the device (falling bf16 loss, packing == padding, generate).
# Random weights, one GPU, nothing downloaded. Writes OUTPUT/gpu_check.json and OUTPUT/gpu_check.md.
#   bash scripts/gpu_check.sh                      # on the GPU
#   bash scripts/gpu_check.sh --device cpu         # the same sequence on the tiny configs (how it is tested)
# Packages the GPU machine lacks come as wheels: WHEELS=folder installs every *.whl in it first (no index).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUTPUT=${OUTPUT:-playground/gpu_check}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    *) echo "[gpu_check] error: unknown option $1 (known: --device, --output)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python}
if [ -n "${WHEELS:-}" ]; then
  $PYTHON -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
$PYTHON -m fila_train.cli bench --suite gpu_check --device "$DEVICE" --output "$OUTPUT"
