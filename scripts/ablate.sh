#!/usr/bin/env bash
# FILA's ablation (docs/ablation.md): the crop-only anyres encoder against FILA's hybrid encoder with concat
# fusion (--variants adds fila_add and fila_cross_attn), 3 seeds each, the same stage-1 + stage-2 recipe through
# pretrain.sh and finetune.sh, every run scored on the fragmentation probe (tile borders cut the symbols) and its
# control.
# Writes results.md, results.json and results.png to the ablation folder; training runs and the results go
# to wandb as one group (offline unless WANDB_MODE says otherwise).
#   bash scripts/ablate.sh                                         # tiny models on CPU (~17 min on 2 cores)
#   bash scripts/ablate.sh --config configs/ablation/fila7b.yaml   # the real models on a GPU node
# Other flags: --variants anyres fila_concat ... (+mmfuser), --seeds 0 1 2, --output DIR, --name GROUP;
# `fila-train ablate report` rewrites the table and chart from finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen
source .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} PYTHON=python
fila-train ablate run "$@"
