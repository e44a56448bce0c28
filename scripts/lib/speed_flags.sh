#!/usr/bin/env bash
# Sourced by pretrain.sh / finetune.sh: data-loading and speed options as flags (SPEED_ARGS).
#   DATALOADER_WORKERS (set by the stage script)   worker processes per rank (0: load in the training process)
#   DATALOADER_PREFETCH_FACTOR=2                   batches each worker prepares ahead (workers > 0 only)
#   DATALOADER_PIN_MEMORY=True                     page-locked batches for faster host-to-GPU copies (off on CPU)
#   DATALOADER_PERSISTENT_WORKERS=True             keep workers across epochs instead of re-forking them
#   PACKING=False                                  padding-free batches (--packing); pays off with
#                                                  ATTN_IMPLEMENTATION=flash_attention_2, which skips the
#                                                  cross-sample blocks that sdpa/eager compute and mask
#   ATTN_IMPLEMENTATION=sdpa                       sdpa, eager or flash_attention_2 (needs flash-attn)
#   GRADIENT_CHECKPOINTING=False                   recompute activations in the backward pass (finetune.sh: True)
#   GRADIENT_CHECKPOINTING_PARTS=                  checkpoint only these parts, e.g. llm or llm,vision; setting it
#                                                  turns an unset GRADIENT_CHECKPOINTING on (empty: every part
#                                                  the model has: llm, vision, cvfm)
#   USE_LIGER=False                                Liger kernels on the LLM (needs liger-kernel and a GPU)
#   TORCH_COMPILE=False                            torch.compile the model (HF --torch_compile). It runs, but
#                                                  every new sequence length / image-grid mix recompiles
#                                                  (graph breaks at the image scatter): on CPU a step takes
#                                                  minutes; on GPU measure before keeping it
DATALOADER_PREFETCH_FACTOR=${DATALOADER_PREFETCH_FACTOR:-2}
DATALOADER_PIN_MEMORY=${DATALOADER_PIN_MEMORY:-True}
DATALOADER_PERSISTENT_WORKERS=${DATALOADER_PERSISTENT_WORKERS:-True}
PACKING=${PACKING:-False}
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-sdpa}
GRADIENT_CHECKPOINTING_PARTS=${GRADIENT_CHECKPOINTING_PARTS:-}
# The parts mean nothing without checkpointing: they turn it on, unless it was set False (then the run
# refuses the contradiction in one line).
if [ -n "$GRADIENT_CHECKPOINTING_PARTS" ]; then GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-True}; fi
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-False}
USE_LIGER=${USE_LIGER:-False}
TORCH_COMPILE=${TORCH_COMPILE:-False}

SPEED_ARGS=(--dataloader_num_workers "$DATALOADER_WORKERS" --dataloader_pin_memory "$DATALOADER_PIN_MEMORY"
            --packing "$PACKING" --attn_implementation "$ATTN_IMPLEMENTATION"
            --activation_checkpointing "$GRADIENT_CHECKPOINTING"
            --use_liger "$USE_LIGER" --torch_compile "$TORCH_COMPILE")
if [ "$DATALOADER_WORKERS" -gt 0 ]; then  # both are refused without worker processes
  SPEED_ARGS+=(--dataloader_prefetch_factor "$DATALOADER_PREFETCH_FACTOR"
               --dataloader_persistent_workers "$DATALOADER_PERSISTENT_WORKERS")
fi
if [ -n "$GRADIENT_CHECKPOINTING_PARTS" ]; then
  SPEED_ARGS+=(--gradient_checkpointing_parts "$GRADIENT_CHECKPOINTING_PARTS")
fi
