"""The global batch decides the update, not how it is split over ranks and accumulation steps.

The reference is one process taking the whole batch at once. The same 4 records as 2 ranks x 1 sample x
2 accumulation steps must give the same loss and the same weights. The records have answers of different
lengths, so averaging per micro-batch (mean of means: the gradient-accumulation bug transformers fixed
with ``num_items_in_batch``) or per rank would weight their tokens differently and move the weights
elsewhere. SGD without clipping makes the update lr x gradient: Adam's first step, about lr x sign(g),
would hide a wrongly scaled gradient.
"""
from __future__ import annotations

import json

import pytest
import torch
from distributed_utils import assets, first_records, run_distributed, train_args  # noqa: F401  (a fixture)
from safetensors.torch import load_file


def test_two_ranks_with_accumulation_update_as_one_whole_batch(assets, tmp_path):
    data = first_records(assets.stage2_data, tmp_path, count=4)
    answers = [sum(len(turn["value"]) for turn in json.loads(line)["conversations"][1::2])
               for line in data.read_text().splitlines()]
    assert len(set(answers)) == 4, answers  # a mean of means would differ from the token mean

    def trained(nproc: int, batch: int, accumulation: int):
        args = train_args(assets, hybrid=True, fuser=True, stage=2, zero=3, steps=1) + [
            "--data_path", str(data), "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--optim", "sgd", "--learning_rate", "1",
            "--connector_lr", "1", "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--report_to", "none"]
        run = run_distributed(args, tmp_path / f"{nproc}x{batch}x{accumulation}", nproc=nproc)
        return run.summary()["losses"], load_file(run.output_dir / "model.safetensors")

    whole_losses, whole = trained(nproc=1, batch=4, accumulation=1)
    split_losses, split = trained(nproc=2, batch=1, accumulation=2)

    assert split_losses == pytest.approx(whole_losses, rel=1e-6)
    assert split.keys() == whole.keys()
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=1e-5, msg=name)
    # The step really moved the trained parts, by far more than the tolerance.
    initial = {f"language_model.{name}": tensor for name, tensor in load_file(assets.llm / "model.safetensors").items()}
    moved = max((whole[name] - tensor).abs().max().item() for name, tensor in initial.items())
    assert moved > 1e-2
