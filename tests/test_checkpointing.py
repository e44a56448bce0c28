"""Activation checkpointing per part (--gradient_checkpointing_parts): same gradients, really recomputed.

For each part (llm, vision, cvfm) of the tiny FILA composite (and the plain CLIP one), gradients
with checkpointing on that part equal those without, and the part's blocks run twice (forward +
recompute in backward) while the other parts' run once. Tiny models, CPU fp32; ~20 s.
"""
from __future__ import annotations

import pytest
import torch
from distributed_utils import assets, build_tiny_model, tiny_batch  # noqa: F401  (assets is a fixture)
from transformers import HfArgumentParser

from fila_train.demo.tiny_models import as_cli
from fila_train.model.builder import build_model
from fila_train.model.checkpointing import checkpointable_parts
from fila_train.training.arguments import ModelArguments, TrainingArguments
from fila_train.training.parts import apply_tune_parts

ALL_PARTS = ["vision", "convnext", "cvfm", "connector", "llm"]


def gradients_and_saved_bytes(model, batch) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one backward, and the bytes autograd kept from the forward for it. A
    checkpointed block keeps only its inputs (checkpointing saves its own tensors inside), so the
    bytes drop exactly when a part is really checkpointed."""
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved[0]


def assert_same_gradients(gradients: dict, reference: dict, what: str) -> None:
    assert gradients.keys() == reference.keys(), what
    for name, gradient in reference.items():
        torch.testing.assert_close(gradients[name], gradient, rtol=1e-6, atol=1e-7, msg=f"{what}: {name}")


def trainable_model(assets, hybrid: bool):  # noqa: F811
    """Every part trained (the ConvNeXt too), so gradients flow through every checkpointed block."""
    if hybrid:  # the tiny FILA with a trainable ConvNeXt (frozen and grad-free by default)
        (flags,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
            args=as_cli(assets.model_flags(hybrid=True, fuser=False)))
        options = flags.vision_options()
        options["convnext"]["trainable"] = True
        torch.manual_seed(0)
        model = build_model(str(assets.llm), str(assets.clip), vision_encoder="fila_hybrid", vision_options=options)
    else:
        model = build_tiny_model(assets, hybrid=False, fuser=False)
    apply_tune_parts(model, ALL_PARTS)
    return model.train()


@pytest.mark.parametrize("hybrid", [True, False], ids=["fila_hybrid", "clip"])
def test_each_part_checkpoints_with_equal_gradients(assets, hybrid):  # noqa: F811
    model = trainable_model(assets, hybrid)
    batch = tiny_batch(model, assets, size=3, stage2=True)
    reference, reference_bytes = gradients_and_saved_bytes(model, batch)
    assert any("convnext" in name for name in reference) == hybrid

    saved = {}
    for part in checkpointable_parts(model):
        model.checkpointing_parts = (part,)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        gradients, saved[part] = gradients_and_saved_bytes(model, batch)
        model.activation_checkpointing_disable()
        assert_same_gradients(gradients, reference, part)
    assert all(bytes_ < reference_bytes for bytes_ in saved.values()), (reference_bytes, saved)
    _, after = gradients_and_saved_bytes(model, batch)
    assert after == reference_bytes  # disabled again: nothing stays checkpointed


def test_all_parts_by_default_and_reentrant_kwargs_do_not_reach_vision(assets):  # noqa: F811
    model = trainable_model(assets, hybrid=True)
    batch = tiny_batch(model, assets, size=2, stage2=True)
    reference, reference_bytes = gradients_and_saved_bytes(model, batch)
    # The trainer's kwargs may ask for reentrant checkpointing: the LLM gets it, vision and CVFM
    # stay non-reentrant (reentrant would drop the gradients of CVFM's ConvNeXt inputs).
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    gradients, saved_bytes = gradients_and_saved_bytes(model, batch)
    assert_same_gradients(gradients, reference, "all parts")
    assert saved_bytes < reference_bytes / 2, (saved_bytes, reference_bytes)


def test_cvfm_refused_without_the_hybrid_encoder(assets):  # noqa: F811
    model = build_tiny_model(assets, hybrid=False, fuser=False)
    model.checkpointing_parts = ("llm", "cvfm")
    with pytest.raises(ValueError, match=r"\['cvfm'\] cannot be checkpointed.*'clip'"):
        model.activation_checkpointing_enable()


def parse(*flags: str) -> TrainingArguments:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(args=["--report_to", "none", *flags])
    return args


def test_checkpointing_flags():
    assert parse("--gradient_checkpointing", "True").checkpointing_parts() is None
    args = parse("--gradient_checkpointing", "True", "--gradient_checkpointing_parts", "llm, vision")
    assert args.checkpointing_parts() == ("llm", "vision")
    with pytest.raises(ValueError, match="unknown part"):
        parse("--gradient_checkpointing", "True", "--gradient_checkpointing_parts", "llm,connector")
    with pytest.raises(ValueError, match="needs --gradient_checkpointing True"):
        parse("--gradient_checkpointing_parts", "llm")
