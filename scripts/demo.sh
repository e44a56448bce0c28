#!/usr/bin/env bash
# The main job on the embedded default, on CPU in minutes, with no downloads: synthetic
# document/OCR + caption data, a locally trained tokenizer, a tiny FILA (tiny random-init CLIP
# tile 56/14 + tiny ConvNeXt through CVFM) and a tiny LLM, stage 1 (ZeRO-2) then stage 2
# (ZeRO-3) on 2 processes, then export, one answer (generate), a held-out score (eval) and a summary. VISION_ENCODER=clip gives the plain LLaVA baseline,
# CONNECTOR=mmfuser adds MMFuser (with fuser layers valid for the tiny ViT).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen
source .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} PYTHON=python
DEMO=${DEMO_DIR:-playground/demo}
start=$(date +%s)
# A port nobody listens on now (MASTER_PORT wins): two demos on one machine must not collide.
free_port() { python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

echo "== preparing synthetic data and tiny models in $DEMO"
fila-train demo prepare --output "$DEMO"
paths() { python -c "import json,sys; print(json.load(open('$DEMO/paths.json'))[sys.argv[1]])" "$1"; }
VISION_ENCODER=${VISION_ENCODER:-fila_hybrid}
CONNECTOR=${CONNECTOR:-mlp2x_gelu}
COMMON=(MODEL="$(paths llm)" VISION_TOWER="$(paths vision_tower)" IMAGE_FOLDER="$(paths image_folder)"
        REPORT_TO=${REPORT_TO:-wandb} DATALOADER_WORKERS=0 NPROC_PER_NODE=2 LOGGING_STEPS=1 SAVE_STEPS=1000
        VISION_ENCODER="$VISION_ENCODER" CONNECTOR="$CONNECTOR")
# The tiny models' variables for the parts this model has (the scripts name any other as unused).
if [ "$VISION_ENCODER" = fila_hybrid ]; then
  COMMON+=(CONVNEXT_CHECKPOINT="$(paths convnext_checkpoint)" CONVNEXT_DIMS="$(paths convnext_dims)"
           CONVNEXT_DEPTHS="$(paths convnext_depths)" CVFM_LAYERS="$(paths cvfm_layers)")
fi
if [ "$VISION_ENCODER" != clip ]; then COMMON+=(ANYRES_CANVASES="$(paths anyres_canvases)"); fi
if [ "$CONNECTOR" = mmfuser ]; then
  COMMON+=(FUSER_KEY_LAYERS="$(paths fuser_key_layers)" FUSER_QUERY_LAYER="$(paths fuser_query_layer)")
fi

# A demo run starts over: an earlier demo's stage folders hold a finished run, which training refuses to start
# over in (it would rotate out that run's checkpoints), so a second `bash scripts/demo.sh` stopped at stage 1.
rm -rf "$DEMO/stage1" "$DEMO/stage2"

echo "== stage 1: align the connector (+ CVFM / fuser) on captions (ZeRO-2)"
env "${COMMON[@]}" DATA_PATH="$(paths stage1_data)" OUTPUT_DIR="$DEMO/stage1" \
  GLOBAL_BATCH_SIZE=16 PER_DEVICE_BATCH_SIZE=8 LEARNING_RATE=2e-3 EPOCHS=4 MAX_LENGTH=512 \
  MASTER_PORT=${MASTER_PORT:-$(free_port)} bash scripts/pretrain.sh

echo "== stage 2: instruction tuning of connector (+ CVFM / fuser) + LLM (ZeRO-3)"
env "${COMMON[@]}" DATA_PATH="$(paths stage2_data)" OUTPUT_DIR="$DEMO/stage2" \
  PRETRAINED_CONNECTOR="$DEMO/stage1/connector.safetensors" TEMPLATE=vicuna_v1 \
  GLOBAL_BATCH_SIZE=16 PER_DEVICE_BATCH_SIZE=8 LEARNING_RATE=1e-3 EPOCHS=6 MAX_LENGTH=512 \
  GRADIENT_CHECKPOINTING=False MASTER_PORT=${MASTER_PORT:-$(free_port)} bash scripts/finetune.sh

echo "== export: one merged, self-contained model folder"
fila-train export --checkpoint "$DEMO/stage2" --output "$DEMO/export" --dtype fp32 --overwrite

echo "== generate: one question about one held-out document"
QUESTION=$(python -c "import json; r=json.loads(open('$(paths eval_data)').readline()); print(json.dumps(r))")
IMAGE="$(paths image_folder)/$(python -c "import json,sys; print(json.loads(sys.argv[1])['image'])" "$QUESTION")"
PROMPT=$(python -c "import json,sys; print(json.loads(sys.argv[1])['question'])" "$QUESTION")
echo "Q: $PROMPT  ($IMAGE)"
fila-train generate --model "$DEMO/export" --image "$IMAGE" --prompt "$PROMPT" --max_new_tokens 16 \
  | tee "$DEMO/answer.txt"

echo "== eval: ANLS on the held-out synthetic split"
# The demo's instructions carry no "single word or phrase" suffix, so none is added here either.
fila-train eval --model "$DEMO/export" --bench "$(paths eval_data)" --image_folder "$(paths image_folder)" \
  --metric anls --no_short_answer_prompt --max_new_tokens 16 --output "$DEMO/eval"

echo "== summary"
fila-train demo summarize --output "$DEMO" --stage1 "$DEMO/stage1" --stage2 "$DEMO/stage2" \
  --export "$DEMO/export" --question "$QUESTION" --answer_file "$DEMO/answer.txt" --eval "$DEMO/eval"
echo "demo finished in $(( $(date +%s) - start )) s"
