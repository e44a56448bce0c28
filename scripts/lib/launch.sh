#!/usr/bin/env bash
# Shared launcher, sourced by pretrain.sh / finetune.sh once they have set TRAIN_ARGS,
# GLOBAL_BATCH_SIZE and PER_DEVICE_BATCH_SIZE: works out and checks the process layout, picks the
# precision, computes gradient accumulation from the global batch and runs `fila-train train`.
#
# Layouts (paths are relative to the repository root):
#   one node (default):   all local GPUs (GPUS_PER_NODE to choose); without a GPU, NPROC_PER_NODE
#                         CPU processes (default 2) in fp32
#   DeepSpeed + hostfile: HOSTFILE=hostfile bash scripts/finetune.sh, run on one node; lines are
#                         "hostname slots=N"; DeepSpeed starts the other nodes over passwordless ssh;
#                         MASTER_ADDR defaults to the first host's address
#   torchrun, per node:   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<address of rank 0> MASTER_PORT=29500
#                         [GPUS_PER_NODE=8] bash scripts/finetune.sh, on every node
#   SLURM:                sbatch --nodes=2 scripts/slurm/train.sbatch scripts/finetune.sh; inside an
#                         srun step (one task per node) NNODES, NODE_RANK (SLURM_PROCID), MASTER_ADDR
#                         (the step's first host) and MASTER_PORT (from the job id) come from SLURM
# LAUNCHER=deepspeed|torchrun overrides the choice (deepspeed with a HOSTFILE, torchrun otherwise).
# The backend is DeepSpeed's choice for the device (nccl with CUDA, gloo without); it is logged.
# DRY_RUN=1 prints the launch command instead of running it. A misconfiguration stops here with a
# one-line reason (exit 1) before anything is launched. Extra flags go last to `fila-train train`, except
# --per_device_train_batch_size and --gradient_accumulation_steps: set PER_DEVICE_BATCH_SIZE / GLOBAL_BATCH_SIZE.
set -euo pipefail

PYTHON=${PYTHON:-python}
HOSTFILE=${HOSTFILE:-}
DRY_RUN=${DRY_RUN:-0}

fail() {
  echo "[fila-train] error: $*" >&2
  exit 1
}

require_int() {  # require_int NAME MIN: $NAME is a plain decimal integer >= MIN
  local value=${!1}
  [[ "$value" =~ ^(0|[1-9][0-9]*)$ ]] && [ "$value" -ge "$2" ] || fail "$1 must be an integer >= $2, got '$value'"
}

first_host() {  # first_host NODELIST: the first host of a SLURM node list such as gpu[07-08,12],cpu1
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | sed -n 1p
  else  # e.g. inside a container without the SLURM client tools
    local head=${1%%,*}
    if [[ "$head" == *"["* ]]; then
      local range=${head#*\[}
      echo "${head%%\[*}${range%%[]-]*}"
    else
      echo "$head"
    fi
  fi
}

read_hostfile() {  # sets HOSTFILE_SLOTS ("host:slots" per node) and HOSTFILE_WORLD_SIZE; DeepSpeed's rules
  [ -f "$HOSTFILE" ] || fail "HOSTFILE=$HOSTFILE: no such file (relative paths start at $PWD)"
  HOSTFILE_SLOTS=()
  HOSTFILE_WORLD_SIZE=0
  local line number=0 seen=" "
  while IFS= read -r line || [ -n "$line" ]; do
    number=$((number + 1))
    line=${line#"${line%%[![:space:]]*}"}
    [[ -z "$line" || "$line" == \#* ]] && continue
    [[ "$line" =~ ^([^[:space:]]+)[[:space:]]+slots=([1-9][0-9]*)([[:space:]]|$) ]] ||
      fail "HOSTFILE=$HOSTFILE line $number: expected 'hostname slots=N' (N >= 1), got '$line'"
    [[ "$seen" != *" ${BASH_REMATCH[1]} "* ]] || fail "HOSTFILE=$HOSTFILE line $number: host ${BASH_REMATCH[1]} is listed twice"
    seen+="${BASH_REMATCH[1]} "
    HOSTFILE_SLOTS+=("${BASH_REMATCH[1]}:${BASH_REMATCH[2]}")
    HOSTFILE_WORLD_SIZE=$((HOSTFILE_WORLD_SIZE + BASH_REMATCH[2]))
  done < "$HOSTFILE"
  [ "${#HOSTFILE_SLOTS[@]}" -gt 0 ] || fail "HOSTFILE=$HOSTFILE lists no hosts"
}

refuse_computed_flags() {  # refuse_computed_flags "$@": an extra flag must not override the computed batch layout
  local word flag variable
  for word in "$@"; do
    flag=${word%%=*}
    case "${flag//-/_}" in  # either spelling: --per-device-train-batch-size too
      __per_device_train_batch_size) variable=PER_DEVICE_BATCH_SIZE ;;
      __gradient_accumulation_steps) variable=GLOBAL_BATCH_SIZE ;;
      *) continue ;;
    esac
    # Passed last, it would win over the script's own, and the run would train another global batch than
    # the one printed and checked here.
    fail "$flag overrides the batch layout this script computes (global batch = per device x processes x accumulation): set $variable instead"
  done
}

refuse_computed_flags "$@"
# Any other value would launch the training a user meant to preview (DRY_RUN=true read as "not 1").
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || fail "DRY_RUN must be 1 (print the launch command, run nothing) or 0, got '$DRY_RUN'"

# ---- process layout: checked before anything slow runs
[ -z "${GPUS_PER_NODE:-}" ] || [ -z "${NPROC_PER_NODE:-}" ] || [ "$GPUS_PER_NODE" = "$NPROC_PER_NODE" ] ||
  fail "GPUS_PER_NODE=$GPUS_PER_NODE and NPROC_PER_NODE=$NPROC_PER_NODE both give the processes per node: set one"
LAUNCHER=${LAUNCHER:-$([ -n "$HOSTFILE" ] && echo deepspeed || echo torchrun)}
[[ "$LAUNCHER" == deepspeed || "$LAUNCHER" == torchrun ]] || fail "LAUNCHER must be deepspeed or torchrun, got '$LAUNCHER'"
LAYOUT_SOURCE=environment
if [ -n "$HOSTFILE" ]; then
  [ "$LAUNCHER" = deepspeed ] ||
    fail "HOSTFILE needs LAUNCHER=deepspeed (torchrun runs once per node with NNODES / NODE_RANK / MASTER_ADDR)"
  read_hostfile
  [ -z "${NNODES:-}" ] || [ "$NNODES" = "${#HOSTFILE_SLOTS[@]}" ] ||
    fail "NNODES=$NNODES but HOSTFILE=$HOSTFILE lists ${#HOSTFILE_SLOTS[@]} host(s)"
  for entry in "${HOSTFILE_SLOTS[@]}"; do
    [ -z "${GPUS_PER_NODE:-}" ] || [ "$GPUS_PER_NODE" = "${entry##*:}" ] ||
      fail "GPUS_PER_NODE=$GPUS_PER_NODE but HOSTFILE=$HOSTFILE gives ${entry%%:*} slots=${entry##*:} (with a HOSTFILE its slots decide)"
  done
  NNODES=${#HOSTFILE_SLOTS[@]}
  NODE_RANK=0
  LAYOUT_SOURCE="HOSTFILE=$HOSTFILE (${HOSTFILE_SLOTS[*]})"
elif [[ "${SLURM_STEP_ID:-}" =~ ^[0-9]+$ && -n "${SLURM_STEP_NUM_NODES:-}" ]]; then
  # Inside an srun step: one task per node, each task's rank is its node rank.
  [ "${SLURM_STEP_NUM_TASKS:-$SLURM_STEP_NUM_NODES}" = "$SLURM_STEP_NUM_NODES" ] ||
    fail "srun started ${SLURM_STEP_NUM_TASKS} tasks on $SLURM_STEP_NUM_NODES node(s): run one task per node (srun --ntasks-per-node=1), torchrun starts the processes of each node"
  [ -z "${NNODES:-}" ] || [ "$NNODES" = "$SLURM_STEP_NUM_NODES" ] ||
    fail "NNODES=$NNODES but this srun step spans $SLURM_STEP_NUM_NODES node(s) (leave NNODES unset inside srun)"
  [ -z "${NODE_RANK:-}" ] || [ "$NODE_RANK" = "${SLURM_PROCID:-}" ] ||
    fail "NODE_RANK=$NODE_RANK but this is srun task ${SLURM_PROCID:-?}: every node needs its own rank (leave NODE_RANK unset inside srun)"
  [ -n "${SLURM_PROCID:-}" ] || fail "SLURM_STEP_ID=$SLURM_STEP_ID is set but SLURM_PROCID is not: run the script through srun"
  NNODES=$SLURM_STEP_NUM_NODES
  NODE_RANK=$SLURM_PROCID
  if [ -z "${MASTER_ADDR:-}" ]; then
    MASTER_ADDR=$(first_host "${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}") ||
      fail "cannot read the first host of SLURM_STEP_NODELIST=${SLURM_STEP_NODELIST:-} (set MASTER_ADDR)"
  fi
  # The same on every node of the job, and different for jobs that share a node.
  MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
  LAYOUT_SOURCE="SLURM step ${SLURM_JOB_ID:-?}.$SLURM_STEP_ID"
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_PORT=${MASTER_PORT:-29500}
require_int NNODES 1
require_int NODE_RANK 0
require_int MASTER_PORT 1
[ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK=$NODE_RANK is out of range for NNODES=$NNODES (0 to $((NNODES - 1)))"
if [ -z "$HOSTFILE" ] && [ "$NNODES" -gt 1 ]; then
  [ "$LAUNCHER" = torchrun ] || fail "LAUNCHER=deepspeed runs several nodes from a HOSTFILE only (NNODES=$NNODES without HOSTFILE)"
  [ -n "${MASTER_ADDR:-}" ] || fail "NNODES=$NNODES needs MASTER_ADDR: the address of the NODE_RANK=0 node, the same on every node"
  [[ "$MASTER_ADDR" != localhost && "$MASTER_ADDR" != 127.* ]] ||
    fail "MASTER_ADDR=$MASTER_ADDR is a loopback address; with NNODES=$NNODES it must be the NODE_RANK=0 node's address as the other nodes reach it"
fi
if [ -z "$HOSTFILE" ]; then MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; fi
MASTER_ADDR=${MASTER_ADDR:-}  # empty with a HOSTFILE: DeepSpeed asks the first host

# ---- the run's own flags (names, paths, DeepSpeed config, stage-1 connector, checkpoint), in about a
# second and before any slow import or model load; a dry run only previews the command
if [ "$DRY_RUN" != 1 ]; then
  $PYTHON -m fila_train.training.preflight "${TRAIN_ARGS[@]}" "$@" || exit $?
fi

# ---- device, precision and backend, as DeepSpeed will see them on this node
PROBE=$($PYTHON -c "import torch
from deepspeed.accelerator import get_accelerator
print(int(torch.cuda.is_available()), torch.cuda.device_count(), get_accelerator().communication_backend_name())" \
  2>/dev/null | tail -n 1) || fail "$PYTHON cannot import torch and deepspeed (activate the environment or set PYTHON)"
read -r HAS_GPU LOCAL_GPUS BACKEND <<< "$PROBE"
if [ "$HAS_GPU" = 1 ]; then
  GPUS_PER_NODE=${GPUS_PER_NODE:-${NPROC_PER_NODE:-$LOCAL_GPUS}}
  PRECISION=${PRECISION:-bf16}
  DEVICE="CUDA, $LOCAL_GPUS GPU(s) here"
else
  GPUS_PER_NODE=${GPUS_PER_NODE:-${NPROC_PER_NODE:-2}}
  PRECISION=${PRECISION:-fp32}
  DEVICE="no CUDA: CPU processes"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
require_int GPUS_PER_NODE 1
if [ -n "$HOSTFILE" ]; then
  WORLD_SIZE=$HOSTFILE_WORLD_SIZE
else
  if [ "$HAS_GPU" = 1 ] && [ "$GPUS_PER_NODE" -gt "$LOCAL_GPUS" ]; then
    fail "GPUS_PER_NODE=$GPUS_PER_NODE but this node has $LOCAL_GPUS GPU(s)"
  fi
  WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
fi
PRECISION_FLAGS=()
case "$PRECISION" in
  bf16) PRECISION_FLAGS=(--bf16 True) ;;
  fp16) PRECISION_FLAGS=(--fp16 True) ;;
  fp32) ;;
  *) fail "PRECISION must be bf16, fp16 or fp32, got '$PRECISION'" ;;
esac

# ---- the global batch stays fixed: accumulation absorbs the process count
require_int GLOBAL_BATCH_SIZE 1
require_int PER_DEVICE_BATCH_SIZE 1
PER_STEP=$((PER_DEVICE_BATCH_SIZE * WORLD_SIZE))
[ $((GLOBAL_BATCH_SIZE % PER_STEP)) -eq 0 ] ||
  fail "GLOBAL_BATCH_SIZE=$GLOBAL_BATCH_SIZE is not a multiple of PER_DEVICE_BATCH_SIZE=$PER_DEVICE_BATCH_SIZE x world size $WORLD_SIZE = $PER_STEP"
GRAD_ACCUM=$((GLOBAL_BATCH_SIZE / PER_STEP))
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/fila_train/torch_extensions}

case "$LAUNCHER" in
  deepspeed)
    # DeepSpeed's runner, reporting Ctrl-C in one line (fila_train/training/deepspeed_launch.py)
    LAUNCH=($PYTHON -m fila_train.training.deepspeed_launch)
    if [ -n "$HOSTFILE" ]; then
      LAUNCH+=(--hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
      if [ -n "$MASTER_ADDR" ]; then LAUNCH+=(--master_addr "$MASTER_ADDR"); fi
    elif [ "$HAS_GPU" = 1 ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
      # Given --num_gpus N, DeepSpeed's runner drops CUDA_VISIBLE_DEVICES and takes GPUs 0..N-1 (another job's on a
      # shared node): name the first GPUS_PER_NODE visible ones instead, by the indices its --include takes.
      IFS=, read -r -a VISIBLE <<< "$CUDA_VISIBLE_DEVICES"
      for device in "${VISIBLE[@]:0:$GPUS_PER_NODE}"; do
        [[ "$device" =~ ^[0-9]+$ ]] || fail "LAUNCHER=deepspeed picks GPUs by index, and CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names '$device': give indices, or use LAUNCHER=torchrun"
      done
      LAUNCH+=(--include "localhost:$(IFS=,; echo "${VISIBLE[*]:0:$GPUS_PER_NODE}")" --master_port "$MASTER_PORT")
    else
      LAUNCH+=(--num_gpus "$GPUS_PER_NODE" --master_port "$MASTER_PORT")
    fi
    # fila-train takes its command first: the rank travels as LOCAL_RANK, not as --local_rank.
    LAUNCH+=(--no_local_rank --module) ;;
  torchrun)
    # torchrun, reporting a failed worker in one line (fila_train/training/launch.py)
    LAUNCH=($PYTHON -m fila_train.training.launch --nnodes "$NNODES" --node_rank "$NODE_RANK"
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node "$GPUS_PER_NODE" -m) ;;
esac
COMMAND=("${LAUNCH[@]}" fila_train.cli train
  --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACCUM"
  "${PRECISION_FLAGS[@]}" "${TRAIN_ARGS[@]}" "$@")

echo "[fila-train] $LAUNCHER: $NNODES node(s), world size $WORLD_SIZE, node rank $NODE_RANK," \
     "master ${MASTER_ADDR:-<first host>}:$MASTER_PORT (layout from $LAYOUT_SOURCE)"
echo "[fila-train] backend $BACKEND ($DEVICE), precision $PRECISION; global batch $GLOBAL_BATCH_SIZE" \
     "= $PER_DEVICE_BATCH_SIZE per device x $WORLD_SIZE processes x accumulation $GRAD_ACCUM"
if [ "$DRY_RUN" = 1 ]; then
  printf '[fila-train] dry run:'
  for word in "${COMMAND[@]}"; do  # quoted only where the shell needs it, so it reads as typed
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then printf ' %s' "$word"; else printf ' %q' "$word"; fi
  done
  printf '\n'
  exit 0
fi
exec "${COMMAND[@]}"
