#!/usr/bin/env bash
# Stage 1 (alignment): train the connector (+ FILA's CVFM / MMFuser's fuser) on captions with
# the "plain" template; the LLM and the vision towers stay frozen. Defaults are the real-size
# FILA-7B recipe: CLIP-ViT-L/14-336 + ConvNeXt-L-d-320 (OpenCLIP laion2B soup) + Vicuna-7B-v1.5,
# LLaVA-1.5 schedule (global batch 256, lr 1e-3, 1 epoch, cosine, warmup 0.03, ZeRO-2), max length
# 4096 (2048 with VISION_ENCODER=clip: scripts/lib/model_flags.sh).
#   VISION_ENCODER=clip bash scripts/pretrain.sh     the plain LLaVA-1.5-7B baseline
#   CONNECTOR=mmfuser VISION_ENCODER=clip ...        LLaVA-1.5-7B + MMFuser (fuser lr FUSER_LR=1e-4,
#                                                    the MMFuser-13B recipe's separate fuser lr)
# Every value can be overridden by environment variable (model options: scripts/lib/model_flags.sh),
# and extra flags are passed to `fila-train train`.
# Launch (scripts/lib/launch.sh): all local GPUs by default; several nodes with HOSTFILE=hostfile
# (DeepSpeed over ssh), with NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT / GPUS_PER_NODE on
# every node (torchrun), or under SLURM (scripts/slurm/train.sbatch). DRY_RUN=1 prints the command.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-lmsys/vicuna-7b-v1.5}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14-336}
# A mixture spec (data/*.yaml; files under playground/data, see playground/README.md), or one
# LLaVA annotation file with IMAGE_FOLDER. ON_BAD_SAMPLE=skip skips and counts unusable records.
DATA_PATH=${DATA_PATH:-data/stage1_captions.yaml}
IMAGE_FOLDER=${IMAGE_FOLDER:-}
ON_BAD_SAMPLE=${ON_BAD_SAMPLE:-error}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/fila-7b-pretrain}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-32}
LEARNING_RATE=${LEARNING_RATE:-1e-3}  # and of every part without its own rate (CONNECTOR_LR, CVFM_LR, FUSER_LR)
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:--1}
ZERO_CONFIG=${ZERO_CONFIG:-zero_configs/zero2.json}
REPORT_TO=${REPORT_TO:-wandb}
SAVE_STEPS=${SAVE_STEPS:-500}
LOGGING_STEPS=${LOGGING_STEPS:-1}
DATALOADER_WORKERS=${DATALOADER_WORKERS:-4}
source scripts/lib/model_flags.sh
if [ -n "${CONVNEXT_LR:-}" ]; then
  echo "pretrain.sh: CONVNEXT_LR is for stage 2 (finetune.sh): the stage-1 artifact carries the connector and CVFM, not the ConvNeXt" >&2
  exit 2
fi
STAGE_2_VARIABLES=()  # finetune.sh's: this stage trains the connector side with the plain template
for name in TEMPLATE LORA_R GROUP_BY_MODALITY PRETRAINED_CONNECTOR; do
  if [ -n "${!name:-}" ]; then STAGE_2_VARIABLES+=("$name"); fi
done
if [ "${#STAGE_2_VARIABLES[@]}" -gt 0 ]; then  # a note, not an error: a shell may hold them from a stage-2 run
  echo "[fila-train] note: pretrain.sh does not use ${STAGE_2_VARIABLES[*]} (finetune.sh's, stage 2); not passed" >&2
fi
source scripts/lib/speed_flags.sh
TUNE_PARTS=${TUNE_PARTS:-connector$EXTRA_PARTS}
# MMFuser-13B's separate fuser rate, where the fuser trains (a rate for a frozen part stops the run)
if [[ ",$TUNE_PARTS," == *",fuser,"* ]]; then FUSER_LR=${FUSER_LR:-1e-4}; fi
part_rate_args

TRAIN_ARGS=(
  --model_name_or_path "$MODEL" --vision_tower "$VISION_TOWER" "${MODEL_ARGS[@]}"
  --conversation_template plain
  --data_path "$DATA_PATH" ${IMAGE_FOLDER:+--image_folder "$IMAGE_FOLDER"} --on_bad_sample "$ON_BAD_SAMPLE"
  --output_dir "$OUTPUT_DIR"
  --tune_parts "$TUNE_PARTS" ${RATE_ARGS[@]+"${RATE_ARGS[@]}"} --deepspeed "$ZERO_CONFIG"
  --learning_rate "$LEARNING_RATE" --weight_decay 0.0 --warmup_ratio 0.03 --lr_scheduler_type cosine
  --num_train_epochs "$EPOCHS" --max_steps "$MAX_STEPS" --model_max_length "$MAX_LENGTH"
  --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1
  --logging_steps "$LOGGING_STEPS" --report_to "$REPORT_TO" "${SPEED_ARGS[@]}"
  --max_grad_norm 1.0
)
source scripts/lib/launch.sh
