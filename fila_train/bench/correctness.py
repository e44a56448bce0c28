"""Correctness on the device (the GPU check's last section): tiny FILA stage 2 in the given dtype trains with a
falling loss, a packed batch gives the padded batch's loss, and generate() answers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.images import load_rgb_image
from ..inference.generation import GenerationOptions, build_prompt, generate_answers
from ..inference.loading import InferenceModel
from ..model.builder import load_tokenizer
from ..processing.processor import FilaProcessor
from .configs import BENCH_CONFIGS
from .runner import BenchOptions, build_dataset, prepare_model, to_device

# bf16 sums a batch's per-token losses in a different order when packed; fp32 agrees to rounding.
PACKING_TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}
TRAIN_STEPS, LEARNING_RATE, SAMPLES = 30, 1e-3, 4


def batch_of(dataset, collator, device: torch.device) -> dict:
    batch = collator([dataset[i] for i in range(SAMPLES)])
    batch.pop("sample_ids")
    batch.pop("skipped", None)
    return to_device(batch, device)


def run_correctness(device: str, dtype: str, workdir: Path, config_name: str = "tiny-fila") -> dict[str, Any]:
    target = torch.device(device)
    options = BenchOptions(config=config_name, stage=2, batch_size=SAMPLES, dtype=dtype, device=device)
    model, tokenizer_path, data = prepare_model(BENCH_CONFIGS.get(config_name), options, workdir, target, SAMPLES)
    padded = batch_of(*build_dataset(model, tokenizer_path, data, 2, None, workdir), target)
    packed = batch_of(*build_dataset(model, tokenizer_path, data, 2, None, workdir, packing=True), target)
    model.eval()
    with torch.no_grad():
        loss_padded, loss_packed = float(model(**padded).loss), float(model(**packed).loss)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    losses = []
    for _ in range(TRAIN_STEPS):
        loss = model(**padded).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    fila_processor = FilaProcessor.for_model(load_tokenizer(tokenizer_path, model, 512), model.config)
    loaded = InferenceModel(model, fila_processor, tokenizer_path)
    prompt = build_prompt(loaded, "What is the title of this document?", load_rgb_image(data.image_paths()[0]))
    (answer,) = generate_answers(loaded, [prompt], GenerationOptions(max_new_tokens=8))
    difference = abs(loss_padded - loss_packed)
    result = {"dtype": dtype, "loss_padded": loss_padded, "loss_packed": loss_packed,
              "packing_matches_padding": difference <= PACKING_TOLERANCE[dtype], "packing_difference": difference,
              "train_loss_first": losses[0], "train_loss_last": losses[-1],
              "loss_falls": losses[-1] < 0.5 * losses[0], "generated": answer}
    result["failed_checks"] = (
        ([] if result["loss_falls"] else [f"the loss does not halve in {TRAIN_STEPS} steps "
                                          f"({losses[0]:.3f} -> {losses[-1]:.3f})"])
        + ([] if result["packing_matches_padding"] else [f"packed and padded losses differ by {difference:.2e} "
                                                         f"(tolerance {PACKING_TOLERANCE[dtype]:.0e} in {dtype})"]))
    return result
