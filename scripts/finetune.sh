#!/usr/bin/env bash
# Stage 2 (instruction tuning): load the stage-1 artifact (connector + CVFM / fuser) and train
# them with the LLM. Defaults are the real-size FILA-7B recipe (CLIP-ViT-L/14-336 + ConvNeXt-L-d-320
# + Vicuna-7B-v1.5; global batch 128, lr 2e-5, 1 epoch, cosine, warmup 0.03, ZeRO-3, max length
# 4096, 2048 with VISION_ENCODER=clip); VISION_ENCODER=clip and CONNECTOR=mmfuser select the baselines as in
# pretrain.sh. Override
# by environment variable (model options: scripts/lib/model_flags.sh); extra flags go to `fila-train train`.
# Launch (scripts/lib/launch.sh): all local GPUs by default; several nodes with HOSTFILE=hostfile
# (DeepSpeed over ssh), with NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT / GPUS_PER_NODE on
# every node (torchrun), or under SLURM (scripts/slurm/train.sbatch). DRY_RUN=1 prints the command.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-lmsys/vicuna-7b-v1.5}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14-336}
TEMPLATE=${TEMPLATE:-vicuna_v1}
PRETRAINED_CONNECTOR=${PRETRAINED_CONNECTOR:-checkpoints/fila-7b-pretrain/connector.safetensors}
# A mixture spec (data/*.yaml; files under playground/data, see playground/README.md), or one
# LLaVA annotation file with IMAGE_FOLDER. ON_BAD_SAMPLE=skip skips and counts unusable records.
DATA_PATH=${DATA_PATH:-data/stage2_doc_ocr.yaml}
IMAGE_FOLDER=${IMAGE_FOLDER:-}
ON_BAD_SAMPLE=${ON_BAD_SAMPLE:-error}
GROUP_BY_MODALITY=${GROUP_BY_MODALITY:-True}  # image / text-only batches apart, similar lengths together
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/fila-7b}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-128}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-16}
LEARNING_RATE=${LEARNING_RATE:-2e-5}  # and of every part without its own rate (CONNECTOR_LR, CVFM_LR, FUSER_LR)
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:--1}
ZERO_CONFIG=${ZERO_CONFIG:-zero_configs/zero3.json}
REPORT_TO=${REPORT_TO:-wandb}
SAVE_STEPS=${SAVE_STEPS:-500}
LOGGING_STEPS=${LOGGING_STEPS:-1}
DATALOADER_WORKERS=${DATALOADER_WORKERS:-4}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-True}
# LoRA on the LLM (0 = full fine-tuning). LLaVA-1.5's LoRA recipe: r 128, alpha 256 (the default,
# 2 x r), lr 2e-4 for the adapters, 2e-5 for the connector (and CVFM / fuser):
#   LORA_R=128 LEARNING_RATE=2e-4 CONNECTOR_LR=2e-5 CVFM_LR=2e-5 FUSER_LR=2e-5 bash scripts/finetune.sh
# With LoRA the tune part "llm" trains the adapters only (the base LLM stays frozen); --lora_alpha,
# --lora_dropout, --lora_target (a regex over full module paths inside the LLM) and --bits 4|8
# (QLoRA: the qlora extra's bitsandbytes, with ZERO_CONFIG=zero_configs/zero2.json) go as extra flags.
# The saved model holds the adapters; export merges them (dequantizing a QLoRA LLM).
LORA_R=${LORA_R:-0}
source scripts/lib/model_flags.sh
source scripts/lib/speed_flags.sh
TUNE_PARTS=${TUNE_PARTS:-connector,llm$EXTRA_PARTS}
part_rate_args

TRAIN_ARGS=(
  --model_name_or_path "$MODEL" --vision_tower "$VISION_TOWER" "${MODEL_ARGS[@]}"
  --conversation_template "$TEMPLATE"
  --pretrained_connector "$PRETRAINED_CONNECTOR"
  --data_path "$DATA_PATH" ${IMAGE_FOLDER:+--image_folder "$IMAGE_FOLDER"} --on_bad_sample "$ON_BAD_SAMPLE"
  --output_dir "$OUTPUT_DIR"
  --tune_parts "$TUNE_PARTS" ${RATE_ARGS[@]+"${RATE_ARGS[@]}"} --deepspeed "$ZERO_CONFIG" --lora_r "$LORA_R"
  --learning_rate "$LEARNING_RATE" --weight_decay 0.0 --warmup_ratio 0.03 --lr_scheduler_type cosine
  --group_by_modality_length "$GROUP_BY_MODALITY" --num_train_epochs "$EPOCHS" --max_steps "$MAX_STEPS" --model_max_length "$MAX_LENGTH"
  --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1
  --logging_steps "$LOGGING_STEPS" --report_to "$REPORT_TO" "${SPEED_ARGS[@]}"
  --max_grad_norm 1.0
)
source scripts/lib/launch.sh
