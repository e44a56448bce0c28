#!/usr/bin/env bash
# Sourced by pretrain.sh / finetune.sh: the model choice as flags (MODEL_ARGS), the parts it
# adds to the stage's default TUNE_PARTS (EXTRA_PARTS) and part_rate_args (the per-part learning rates).
#   VISION_ENCODER=fila_hybrid (default): CLIP-ViT + ConvNeXt through CVFM (FILA); trains "cvfm"
#     (and "convnext" with CONVNEXT_LR set: its learning rate; the ConvNeXt is frozen otherwise)
#   VISION_ENCODER=clip:                  the plain LLaVA-1.5 vision side
#   VISION_ENCODER=anyres:                FILA's global view + tiles on the ViT alone (crop-only baseline)
#   CONNECTOR=mlp2x_gelu (default) | linear | mmfuser (MMFuser fuser + mlp2x_gelu; trains "fuser")
# Unset option variables leave the flag out, so the spec's defaults apply (e.g. ConvNeXt model
# convnext_large_d_320, CVFM after ViT layers 2,6,12,20, fuser keys -22,-17,-12,-7, query -2).
# VISION_OPTIONS / CONNECTOR_OPTIONS: any option of the part's options dataclass, space-separated KEY=VALUE
#   (e.g. VISION_OPTIONS="cvfm.gate=channel anyres.global_view=canvas convnext.trainable=true").
# CONVNEXT_CHECKPOINT defaults to the FILA recipe's LAION ConvNeXt-L, except with CONVNEXT_DIMS (a small
#   ConvNeXt of its own architecture) or VISION_OPTIONS=convnext.random_init=true (random weights on purpose).
VISION_ENCODER=${VISION_ENCODER:-fila_hybrid}
CONNECTOR=${CONNECTOR:-mlp2x_gelu}
# The longest sample (MAX_LENGTH, tokens): LLaVA-1.5's 2048 holds one 576-token CLIP view and its text. FILA's
# anyres views make an image up to (4 tiles + the global view) x 576 = 2880 tokens on the 672x672 canvas: 4096,
# as LLaVA-NeXT trains them (Vicuna-v1.5's context); under 2048 most records would be dropped.
if [ "$VISION_ENCODER" = clip ]; then MAX_LENGTH=${MAX_LENGTH:-2048}; else MAX_LENGTH=${MAX_LENGTH:-4096}; fi
MODEL_ARGS=(--vision_encoder "$VISION_ENCODER" --connector_type "$CONNECTOR")
EXTRA_PARTS=""
optional_flag() {  # optional_flag NAME VALUE: add --NAME=VALUE when VALUE is set ("=": values may start with "-")
  if [ -n "${2:-}" ]; then MODEL_ARGS+=("--$1=$2"); fi
}

if [ "$VISION_ENCODER" = fila_hybrid ]; then
  # Random weights (convnext.random_init=true) or a checkpoint given in VISION_OPTIONS take no default checkpoint:
  # either with it would be refused (contradicting options; one key given twice).
  if [ -z "${CONVNEXT_DIMS:-}" ] && [[ " ${VISION_OPTIONS:-} " != *" convnext.random_init=true "* ]] \
      && [[ " ${VISION_OPTIONS:-} " != *" convnext.checkpoint="* ]]; then
    CONVNEXT_CHECKPOINT=${CONVNEXT_CHECKPOINT:-laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup}
  fi
  optional_flag convnext_checkpoint "${CONVNEXT_CHECKPOINT:-}"
  optional_flag convnext_model "${CONVNEXT_MODEL:-}"
  optional_flag convnext_dims "${CONVNEXT_DIMS:-}"
  optional_flag convnext_depths "${CONVNEXT_DEPTHS:-}"
  optional_flag anyres_canvases "${ANYRES_CANVASES:-}"
  optional_flag cvfm_layers "${CVFM_LAYERS:-}"
  optional_flag cvfm_align "${CVFM_ALIGN:-}"
  optional_flag cvfm_fusion "${CVFM_FUSION:-}"
  EXTRA_PARTS+=",cvfm"
  if [ -n "${CONVNEXT_LR:-}" ]; then  # also train the ConvNeXt, at this rate (stage 2 only: see pretrain.sh)
    MODEL_ARGS+=(--convnext_lr "$CONVNEXT_LR")
    EXTRA_PARTS+=",convnext"
  fi
fi
if [ "$VISION_ENCODER" = anyres ]; then  # FILA's views and ViT without ConvNeXt and CVFM (its ablation)
  optional_flag anyres_canvases "${ANYRES_CANVASES:-}"
fi
if [ "$CONNECTOR" = mmfuser ]; then
  optional_flag fuser_key_layers "${FUSER_KEY_LAYERS:-}"
  optional_flag fuser_query_layer "${FUSER_QUERY_LAYER:-}"
  EXTRA_PARTS+=",fuser"
fi
# Variables for parts this model lacks are not passed; said in one line, so a typo in VISION_ENCODER or CONNECTOR
# (or a variable left from another run) does not silently train another model than the one asked for.
UNUSED_VARIABLES=()
unused_unless() {  # unused_unless HAS_PART NAME...: where the model lacks the part (HAS_PART 0), each NAME set
  local name
  if [ "$1" = 1 ]; then return; fi
  for name in "${@:2}"; do if [ -n "${!name:-}" ]; then UNUSED_VARIABLES+=("$name"); fi; done
}
HAS_CONVNEXT=0; HAS_ANYRES=0; HAS_FUSER=0
if [ "$VISION_ENCODER" = fila_hybrid ]; then HAS_CONVNEXT=1; HAS_ANYRES=1; fi
if [ "$VISION_ENCODER" = anyres ]; then HAS_ANYRES=1; fi
if [ "$CONNECTOR" = mmfuser ]; then HAS_FUSER=1; fi
unused_unless $HAS_CONVNEXT CONVNEXT_CHECKPOINT CONVNEXT_MODEL CONVNEXT_DIMS CONVNEXT_DEPTHS CONVNEXT_LR \
  CVFM_LAYERS CVFM_ALIGN CVFM_FUSION CVFM_LR
unused_unless $HAS_ANYRES ANYRES_CANVASES
unused_unless $HAS_FUSER FUSER_KEY_LAYERS FUSER_QUERY_LAYER FUSER_LR
if [ "${#UNUSED_VARIABLES[@]}" -gt 0 ]; then
  echo "[fila-train] note: VISION_ENCODER=$VISION_ENCODER CONNECTOR=$CONNECTOR has no part for" \
       "${UNUSED_VARIABLES[*]}; not passed" >&2
fi
# Word splitting is wanted: one KEY=VALUE per word.
# shellcheck disable=SC2206
if [ -n "${VISION_OPTIONS:-}" ]; then MODEL_ARGS+=(--vision_option $VISION_OPTIONS); fi
# shellcheck disable=SC2206
if [ -n "${CONNECTOR_OPTIONS:-}" ]; then MODEL_ARGS+=(--connector_option $CONNECTOR_OPTIONS); fi

# Per-part learning rates (RATE_ARGS), once TUNE_PARTS is known: CONNECTOR_LR, CVFM_LR and FUSER_LR (for the
# parts this model has) each give their part's flag when set; unset, the part trains at --learning_rate,
# an extra --learning_rate flag included. A rate set for a part TUNE_PARTS leaves frozen stops the run in one line.
part_rate_args() {
  RATE_ARGS=()
  local part rate
  for part in connector cvfm fuser; do
    rate=${part^^}_LR
    rate=${!rate:-}
    if [ -n "$rate" ] && { [ "$part" = connector ] || [[ "$EXTRA_PARTS," == *",$part,"* ]]; }; then
      RATE_ARGS+=("--${part}_lr=$rate")
    fi
  done
}
