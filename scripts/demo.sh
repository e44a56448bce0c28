#!/usr/bin/env bash
# The main job on the embedded default, on CPU in minutes, with no downloads: synthetic
# document/OCR + caption data, a locally trained tokenizer, a tiny FILA (tiny random-init CLIP
# tile 56/14 + tiny ConvNeXt through CVFM) and a tiny LLM, stage 1 (ZeRO-2) then stage 2
# (ZeRO-3) on 2 processes, then a summary. VISION_ENCODER=clip gives the plain LLaVA baseline,
# CONNECTOR=mmfuser adds MMFuser (with fuser layers valid for the tiny ViT).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen
source .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} PYTHON=python
DEMO=${DEMO_DIR:-playground/demo}
start=$(date +%s)

echo "== preparing synthetic data and tiny models in $DEMO"
fila-train demo prepare --output "$DEMO"
paths() { python -c "import json,sys; print(json.load(open('$DEMO/paths.json'))[sys.argv[1]])" "$1"; }
COMMON=(MODEL="$(paths llm)" VISION_TOWER="$(paths vision_tower)" IMAGE_FOLDER="$(paths image_folder)"
        REPORT_TO=${REPORT_TO:-wandb} DATALOADER_WORKERS=0 NPROC_PER_NODE=2 LOGGING_STEPS=1 SAVE_STEPS=1000
        VISION_ENCODER=${VISION_ENCODER:-fila_hybrid} CONNECTOR=${CONNECTOR:-mlp2x_gelu}
        CONVNEXT_CHECKPOINT="$(paths convnext_checkpoint)" CONVNEXT_DIMS="$(paths convnext_dims)"
        CONVNEXT_DEPTHS="$(paths convnext_depths)" ANYRES_CANVASES="$(paths anyres_canvases)"
        CVFM_LAYERS="$(paths cvfm_layers)" FUSER_KEY_LAYERS="$(paths fuser_key_layers)"
        FUSER_QUERY_LAYER="$(paths fuser_query_layer)")

echo "== stage 1: align the connector (+ CVFM / fuser) on captions (ZeRO-2)"
env "${COMMON[@]}" DATA_PATH="$(paths stage1_data)" OUTPUT_DIR="$DEMO/stage1" \
  GLOBAL_BATCH_SIZE=16 PER_DEVICE_BATCH_SIZE=8 LEARNING_RATE=2e-3 EPOCHS=4 MAX_LENGTH=512 \
  MASTER_PORT=${MASTER_PORT:-29531} bash scripts/pretrain.sh

echo "== stage 2: instruction tuning of connector (+ CVFM / fuser) + LLM (ZeRO-3)"
env "${COMMON[@]}" DATA_PATH="$(paths stage2_data)" OUTPUT_DIR="$DEMO/stage2" \
  PRETRAINED_CONNECTOR="$DEMO/stage1/connector.safetensors" TEMPLATE=vicuna_v1 \
  GLOBAL_BATCH_SIZE=16 PER_DEVICE_BATCH_SIZE=8 LEARNING_RATE=1e-3 EPOCHS=6 MAX_LENGTH=512 \
  GRADIENT_CHECKPOINTING=False MASTER_PORT=${MASTER_PORT:-29532} bash scripts/finetune.sh

echo "== summary"
fila-train demo summarize --output "$DEMO" --stage1 "$DEMO/stage1" --stage2 "$DEMO/stage2"
echo "demo finished in $(( $(date +%s) - start )) s"
