#!/usr/bin/env bash
# Shared launcher for pretrain.sh / finetune.sh: picks the launcher, the process layout and the
# precision, computes gradient accumulation from the global batch, then runs `fila-train train`.
#
# Multi-node:
#   deepspeed launcher:  HOSTFILE=hostfile bash scripts/finetune.sh        (passwordless ssh)
#   torchrun (per node): NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash scripts/finetune.sh
#   SLURM:               see scripts/slurm/
# Without a GPU it runs on CPU (gloo) with NPROC_PER_NODE processes (default 2).
set -euo pipefail

PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=${HOSTFILE:-}

HAS_GPU=$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$HAS_GPU" = 1 ]; then
  GPUS_PER_NODE=${GPUS_PER_NODE:-$($PYTHON -c "import torch; print(torch.cuda.device_count())")}
  PRECISION=${PRECISION:-bf16}
else
  GPUS_PER_NODE=${GPUS_PER_NODE:-${NPROC_PER_NODE:-2}}
  PRECISION=${PRECISION:-fp32}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
if [ -n "$HOSTFILE" ]; then
  NNODES=$(grep -cE '^[^#[:space:]]' "$HOSTFILE")
fi
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
GRAD_ACCUM=$((GLOBAL_BATCH_SIZE / (PER_DEVICE_BATCH_SIZE * WORLD_SIZE)))
if [ "$GRAD_ACCUM" -lt 1 ] || [ $((GRAD_ACCUM * PER_DEVICE_BATCH_SIZE * WORLD_SIZE)) -ne "$GLOBAL_BATCH_SIZE" ]; then
  echo "GLOBAL_BATCH_SIZE=$GLOBAL_BATCH_SIZE is not a multiple of PER_DEVICE_BATCH_SIZE=$PER_DEVICE_BATCH_SIZE x $WORLD_SIZE processes" >&2
  exit 2
fi
PRECISION_FLAGS=()
case "$PRECISION" in
  bf16) PRECISION_FLAGS=(--bf16 True) ;;
  fp16) PRECISION_FLAGS=(--fp16 True) ;;
  fp32) ;;
  *) echo "PRECISION must be bf16, fp16 or fp32, got $PRECISION" >&2; exit 2 ;;
esac
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/fila_train/torch_extensions}

LAUNCHER=${LAUNCHER:-$([ -n "$HOSTFILE" ] && echo deepspeed || echo torchrun)}
case "$LAUNCHER" in
  deepspeed)
    if [ -n "$HOSTFILE" ]; then
      LAUNCH=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module)
    else
      LAUNCH=(deepspeed --num_gpus "$GPUS_PER_NODE" --master_port "$MASTER_PORT" --module)
    fi ;;
  torchrun)
    LAUNCH=($PYTHON -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node "$GPUS_PER_NODE" -m) ;;
  *) echo "LAUNCHER must be deepspeed or torchrun, got $LAUNCHER" >&2; exit 2 ;;
esac

echo "[fila-train] $LAUNCHER: $NNODES node(s) x $GPUS_PER_NODE process(es), global batch $GLOBAL_BATCH_SIZE" \
     "= $PER_DEVICE_BATCH_SIZE x $WORLD_SIZE x accumulation $GRAD_ACCUM, precision $PRECISION"
exec "${LAUNCH[@]}" fila_train.cli train \
  --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" \
  --gradient_accumulation_steps "$GRAD_ACCUM" \
  "${PRECISION_FLAGS[@]}" \
  "${TRAIN_ARGS[@]}" "$@"
