"""fila-train bench: MFU arithmetic by hand, FLOP counting against the encoder's own count, a tiny
CPU run and --data through the CLI, real sizes on the meta device, MFU/memory in training logs."""
from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from distributed_utils import TINY, assets, build_tiny_model, tiny_batch  # noqa: F401 (fixture)

from fila_train.bench.cli import main as bench_main
from fila_train.training.throughput.flop_count import ModelFlopCounter, llm_size, sample_lengths
from fila_train.training.throughput.mfu import (ImageForward, LLMSize, llm_flops, mfu, peak_tflops, stage_multipliers,
                                  step_flops, trained_stages)
from fila_train.demo.tiny_models import as_cli
from fila_train.training.parts import apply_tune_parts

SIZE = LLMSize(params=1000, layers=2, attention_width=8)


def test_llm_flops_by_hand() -> None:
    # Samples of 10 and 6 tokens; attention 12*L*d*T per token in training (4*L*d*T forward), no causal halving.
    assert llm_flops(SIZE, [10, 6], multiplier=3) == 10 * (6000 + 1920) + 6 * (6000 + 1152) == 122112  # stage 2: 6N
    assert llm_flops(SIZE, [10, 6], multiplier=2) == 10 * (4000 + 1920) + 6 * (4000 + 1152) == 90112  # stage 1: 4N
    assert llm_flops(SIZE, [10, 6], multiplier=1) == 10 * (2000 + 640) + 6 * (2000 + 384) == 40704  # forward only


@pytest.mark.parametrize("trained", [True, False])
def test_llm_flops_equal_torch_s_flop_counter(trained: bool) -> None:
    """6N (stage 2) or 4N (stage 1: frozen LLM, gradients flow through) per token plus 12·L·d·T of attention is
    what torch's FlopCounterMode counts for a real forward and backward of a Llama (GQA, untied head; eager
    attention, whose matmuls it sees: it has no formula for the CPU SDPA kernel). N counts the norm weights,
    which do no matmul: the only difference, 0.3% of this tiny model and 0.004% of a 7B one."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, attn_implementation="eager"))
    model.requires_grad_(trained)
    lengths = [10, 6]
    with FlopCounterMode(display=False) as counter:
        for length in lengths:
            embeds = model.get_input_embeddings()(torch.randint(0, 300, (1, length))).detach().requires_grad_(True)
            model(inputs_embeds=embeds, labels=torch.randint(0, 300, (1, length))).loss.backward()
    size = llm_size(model)
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    matmul_size = LLMSize(size.params - norms, size.layers, size.attention_width)
    assert counter.get_total_flops() == llm_flops(matmul_size, lengths, multiplier=3 if trained else 2)


def test_stage_1_vs_stage_2_and_frozen_vs_trained_vision() -> None:
    clip = ImageForward(vit_before_fusion=100.0, projector=10.0)
    stage1 = step_flops(SIZE, [10], [clip], trained_stages(["connector"]))
    assert (stage1.llm, stage1.vision, stage1.connector) == (59200, 100, 30)  # LLM 4N, frozen ViT forward only
    stage2 = step_flops(SIZE, [10], [clip], trained_stages(["connector", "llm"]))
    assert (stage2.llm, stage2.vision, stage2.connector, stage2.total) == (79200, 100, 30, 79330)
    vision_trained = step_flops(SIZE, [10], [clip], trained_stages(["vision", "connector", "llm"]))
    assert vision_trained.vision == 300

    # FILA stage 1: CVFM trains, so the ViT blocks after the first fusion pass gradients (x2);
    # the ConvNeXt and the ViT blocks before the fusion stay forward-only.
    fila = ImageForward(convnext=50.0, vit_before_fusion=20.0, cvfm=5.0, vit_after_fusion=80.0, projector=10.0)
    flops = step_flops(SIZE, [10], [fila, fila], trained_stages(["connector", "cvfm"]))
    assert (flops.vision, flops.connector) == (2 * (50 + 20 + 15 + 160), 2 * 30)
    assert stage_multipliers(trained_stages(["connector", "cvfm"]))["llm"] == 2

    # LoRA: "llm" trains the adapters (x3); the frozen base LLM passes gradients (4N).
    lora_size = LLMSize(params=1000, layers=2, attention_width=8, adapter_params=50)
    lora = step_flops(lora_size, [10], [], trained_stages(["connector", "llm"], lora=True))
    assert lora.llm == 10 * (4000 + 300 + 1920)


def test_mfu_and_peak_table() -> None:
    assert mfu(1e12, 2.0, 1.0) == 0.5
    assert mfu(1e12, 2.0, None) is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 66.9
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0
    assert peak_tflops("H100", "bf16") is None  # exact device names only, no substring guessing
    assert peak_tflops(None, "bf16") is None
    assert peak_tflops(None, "bf16", override=12.5) == 12.5
    with pytest.raises(ValueError, match="peak_tflops"):
        peak_tflops(None, "bf16", override=0)


@pytest.mark.parametrize("setting, column", [("tf32", "tf32"), ("ieee", "fp32")])
def test_the_peak_column_follows_tf32_set_through_torch_s_new_api(setting: str, column: str) -> None:
    """transformers' --tf32 sets torch.backends.fp32_precision (torch >= 2.9); reading the legacy
    ``matmul.allow_tf32`` after that raised RuntimeError ("mix of the legacy and new APIs"), so an fp32 run with
    --tf32 True on a GPU stopped at the trainer's start. In a subprocess: the setting is process-wide."""
    import subprocess
    import sys

    code = ("import torch; from fila_train.training.throughput.device import matmul_precision; "
            f"torch.backends.fp32_precision = {setting!r}; "
            "print(matmul_precision(torch.float32, torch.device('cuda')), "
            "matmul_precision(torch.bfloat16, torch.device('cuda')), matmul_precision(torch.float32, torch.device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [column, "bf16", "fp32"]


def test_packed_batches_count_every_sample() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sample_lengths({"position_ids": positions, "input_ids": torch.zeros(1, 9)}) == [3, 2, 4]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert sample_lengths({"attention_mask": mask, "input_ids": torch.zeros(2, 4)}) == [3, 4]


def test_counter_agrees_with_the_encoders_own_count_and_the_batch(assets) -> None:  # noqa: F811
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    apply_tune_parts(model, ["connector", "cvfm", "llm"])
    counter = ModelFlopCounter.for_model(model)
    assert counter.trained == {"projector", "cvfm", "llm"}
    for rows, cols in ((2, 2), (1, 2)):
        image = counter.image_forward((rows, cols))
        own = model.vision_tower.vision_flops_per_image((cols * TINY.tile, rows * TINY.tile))
        vision = image.convnext + image.vit_before_fusion + image.cvfm + image.vit_after_fusion
        assert vision == pytest.approx(own["total"] * 1e12, rel=1e-9)
        assert image.convnext == pytest.approx(own["convnext"] * 1e12, rel=1e-9)
        assert image.vit_after_fusion > image.vit_before_fusion > 0  # CVFM after block 1 of 6
    batch = tiny_batch(model, assets, size=4, stage2=True)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    layouts = [tuple(grid) for grid in batch["images"]["grids"].tolist()]
    flops = counter.batch_flops(batch)
    assert flops.llm == llm_flops(counter.llm, lengths, 3)
    expected = step_flops(counter.llm, lengths, [counter.image_forward(g) for g in layouts], counter.trained)
    assert flops == expected and flops.vision > 0 and flops.connector > 0


def test_tiny_cpu_bench_through_the_cli(tmp_path, capsys, recwarn) -> None:
    output = tmp_path / "bench.json"
    code = bench_main(["tiny-fila", "--stage", "2", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                       "--threads", "1", "--seq_len", "300", "--peak_tflops", "0.5", "--gradient_checkpointing",
                       "--output", str(output)])
    assert code == 0
    # Checkpointing through the installed transformers' own names: 5.23 deprecates the old ones, once per row.
    deprecations = [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)]
    assert not [message for message in deprecations if "checkpointing" in message], deprecations
    printed = capsys.readouterr().out
    assert "median step time" in printed and "MFU" in printed and "no DeepSpeed" in printed
    result = json.loads(output.read_text())
    for key in ("median_step_seconds", "samples_per_second", "tokens_per_second_per_device",
                "model_tflops_per_step", "mfu", "peak_memory_gib"):
        assert result[key] > 0, key
    assert result["tune_parts"] == ["connector", "cvfm", "llm"] and result["gradient_checkpointing"] is True
    assert 280 <= result["tokens_per_sample"] <= 300  # towards the target by words and rounds, never over it
    assert result["image_tokens_per_sample"] == 80  # 2x2 tiles + global view, 16 tokens each


def test_a_target_length_at_the_llms_context_fits_in_it(tmp_path) -> None:
    """--seq_len is a ceiling: at the tiny LLM's context (2048) every sample fits; one past it is a one-line error
    before any step. Text used to be added in whole turns past the target, so a target at the context always
    failed as overlong (FILA-7B at Vicuna's 4096 on the GPU)."""
    from fila_train.utils.errors import ConfigError

    output = tmp_path / "bench.json"
    common = ["tiny-fila", "--stage", "2", "--steps", "1", "--warmup", "0", "--threads", "1"]
    assert bench_main([*common, "--seq_len", "2048", "--output", str(output)]) == 0
    assert 2020 <= json.loads(output.read_text())["tokens_per_sample"] <= 2048
    with pytest.raises(ConfigError, match="--seq_len 2049 exceeds the LLM's context of 2048 tokens"):
        bench_main([*common, "--seq_len", "2049"])


def test_packed_bench_counts_the_same_tokens_with_no_padding(tmp_path) -> None:
    results = {}
    for packing in (False, True):
        output = tmp_path / f"bench_{packing}.json"
        flags = ["--packing"] * packing
        assert bench_main(["tiny-clip", "--batch_size", "3", "--steps", "1", "--warmup", "0", "--threads", "1",
                           "--output", str(output), *flags]) == 0
        results[packing] = json.loads(output.read_text())
    padded, packed = results[False], results[True]
    assert packed["packing"] and packed["padding_fraction"] == 0 < padded["padding_fraction"]
    assert packed["tokens_per_sample"] == padded["tokens_per_sample"]
    assert packed["model_tflops_per_step"] > 0


def test_compiled_bench_runs_the_compiled_model(tmp_path, capsys) -> None:
    from torch._dynamo.utils import counters

    counters.clear()
    output = tmp_path / "bench.json"
    assert bench_main(["tiny-clip", "--steps", "1", "--warmup", "0", "--threads", "1",
                       "--torch_compile_backend", "aot_eager", "--output", str(output)]) == 0
    assert counters["stats"]["unique_graphs"] > 0, "the bench did not run a compiled model"
    result = json.loads(output.read_text())
    assert result["torch_compile_backend"] == "aot_eager" and result["median_step_seconds"] > 0
    assert "torch.compile" in capsys.readouterr().out


def test_data_bench_reports_ours_and_the_reference(tmp_path, capsys) -> None:
    output = tmp_path / "data.json"
    assert bench_main(["tiny-fila", "--data", "--num_images", "3", "--repeats", "1", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "reference (LLaVA-NeXT style)" in printed
    result = json.loads(output.read_text())
    assert result["ours"]["images_per_second"] > 0 and result["baseline"]["images_per_second"] > 0
    # The same tensors, up to the resampling noise of our reduced-size JPEG decode (PIL draft).
    assert result["mean_abs_difference"] < 1e-2 and result["max_abs_difference"] < 1
    assert result["samples_per_second"] > 0 and result["tokenization"]["text_tokens_per_second"] > 0


@pytest.mark.parametrize("argv, refused", [
    (["tiny-fila", "--channels_last"], "--channels_last"),
    (["tiny-fila", "--num_images", "4"], "--num_images"),
    (["tiny-fila", "--dry_run", "--batch_size", "4", "--packing"], "--batch_size, --packing"),
    (["tiny-fila", "--vision_only", "--stage", "1", "--use_liger", "--peak_tflops", "9"], "--stage, --peak_tflops, --use_liger"),
    (["tiny-fila", "--data", "--threads", "2", "--gradient_checkpointing"], "--gradient_checkpointing, --threads"),
    (["tiny-fila", "--suite", "gpu_check", "--batch_size", "4", "--budget_s", "0"], "CONFIG, --batch_size"),
    # The suite's rows work in temporary folders of their own: a --workdir was silently not used.
    (["--suite", "gpu_check", "--budget_s", "0", "--workdir", "kept"], "--workdir"),
])
def test_an_option_the_chosen_measurement_does_not_use_is_refused(argv, refused, tmp_path) -> None:
    """Before, each mode read its own options and silently dropped the rest: --channels_last on a training
    bench, --batch_size or --packing on a dry run, --use_liger on the vision bench measured nothing they name."""
    from fila_train.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=f"does not use {re.escape(refused)}"):
        bench_main([*argv, "--output", str(tmp_path / "out")])


def test_the_vision_bench_runs_on_the_threads_asked_for(tmp_path) -> None:
    output = tmp_path / "vision.json"
    assert bench_main(["tiny-clip", "--vision_only", "--threads", "1", "--steps", "1", "--warmup", "0",
                       "--image_size", "112x112", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["torch_threads"] == 1


def test_real_size_config_builds_on_meta_and_matches_the_anchors(tmp_path) -> None:
    output = tmp_path / "dry.json"
    assert bench_main(["fila-7b", "--dry_run", "--stage", "2", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["llm"]["params"] == 6_607_343_616  # Llama-2-7B without its input embedding
    assert result["canvas"] == [672, 672] and result["image_tokens"] == 2880
    vision = result["vision_forward_tflops_per_image"]
    # anchors.md: ViT-L/14-336 ~0.38 TFLOP per view (here 23 of 24 blocks run, up to layer -2);
    # ConvNeXt-L ~3.2 TFLOP at 1536.
    assert (vision["vit_before_fusion"] + vision["vit_after_fusion"]) / 5 == pytest.approx(0.38 * 23 / 24, rel=0.03)
    assert vision["convnext"] == pytest.approx(3.2, rel=0.05)
    assert result["model_tflops_per_sample"]["total"] > result["model_tflops_per_sample"]["llm"] > 100


def test_a_dry_run_refuses_the_lengths_a_real_run_refuses(tmp_path) -> None:
    """The dry run reports FLOPs for a length only if training could take it: past the LLM's context (Vicuna's
    4096) or within one image (FILA-7B's 2880 tokens) it is the same one-line error as the bench's."""
    from fila_train.utils.errors import ConfigError

    common = ["fila-7b", "--dry_run", "--stage", "2"]
    with pytest.raises(ConfigError, match="--seq_len 4097 exceeds the LLM's context of 4096 tokens"):
        bench_main([*common, "--seq_len", "4097"])
    with pytest.raises(ConfigError, match="--seq_len 2880 leaves no room for text: one image alone is 2880"):
        bench_main([*common, "--seq_len", "2880"])
    output = tmp_path / "dry.json"
    assert bench_main([*common, "--seq_len", "4096", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["tokens_per_sample"] == 4096


def test_the_vision_bench_builds_the_encoder_without_the_llm(tmp_path) -> None:
    """The vision rows measure the encoder: at real size it is built alone (a 7B LLM beside it is 13.5 GB of
    memory and build time that the rows would report as the encoder's), the same encoder the whole model holds."""
    from fila_train.bench.configs import BENCH_CONFIGS

    meta = torch.device("meta")
    for name in ("fila-7b", "anyres-7b"):
        config = BENCH_CONFIGS.get(name)
        alone = config.build_vision(tmp_path, tmp_path, meta, torch.bfloat16)
        whole, _ = config.build(tmp_path, tmp_path, meta, torch.bfloat16)
        assert [(key, value.shape) for key, value in alone.state_dict().items()] == \
            [(key, value.shape) for key, value in whole.vision_tower.state_dict().items()]
        assert all(value.dtype == torch.bfloat16 for value in alone.state_dict().values())
        assert not any("language_model" in key or "embed_tokens" in key for key in alone.state_dict())


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets the peak RSS through Linux's /proc")
def test_each_measurement_reports_its_own_peak_memory(tmp_path) -> None:
    """The GPU check runs every row in one process: a row's peak memory is its own, not the largest of the rows
    before it. Before, the vision bench never reset the CUDA peak (its rows reported the 7B training rows' peak),
    and on a CPU no row did (the process's peak RSS). Here: 1.5 GiB held and freed before each bench."""
    import resource

    from fila_train.bench.runner import BenchOptions, run_training_bench
    from fila_train.bench.vision import run_vision_bench

    def balloon() -> float:
        held = torch.ones(3 * 2**27)  # 1.5 GiB, touched
        del held
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (KiB on Linux)

    peak = balloon()
    vision = run_vision_bench("tiny-fila", "cpu", "fp32", (112, 112), 1, 0, tmp_path / "vision")
    assert vision["peak_memory_gib"] < peak - 1.0
    peak = balloon()
    training = run_training_bench(BenchOptions("tiny-clip", steps=1, warmup=0), tmp_path / "training")
    assert training["peak_memory_gib"] < peak - 1.0


def train_logs(assets, output_dir, capsys, **extra: str) -> list[dict]:  # noqa: F811
    """The per-step log dicts of a 2-step in-process stage-1 run: without the progress bar (--disable_tqdm)
    transformers prints each one (the bar's own lines are shorter, every ~5% of the run)."""
    from fila_train.training.train import parse_args, train

    flags = assets.model_flags(hybrid=False, fuser=False) | {
        "data_path": str(assets.stage1_data), "image_folder": str(assets.image_folder),
        "conversation_template": "plain", "tune_parts": "connector", "per_device_train_batch_size": "2",
        "max_steps": "2", "logging_steps": "1", "model_max_length": "512", "save_strategy": "no",
        "report_to": "none", "output_dir": str(output_dir), "seed": "5", "disable_tqdm": "True"} | extra
    model_args, data_args, args = parse_args(as_cli(flags))
    args.peak_tflops = 0.5  # a CPU has no known peak; --peak_tflops is how a run names one
    train(model_args, data_args, args)
    return [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{") and "'loss'" in line]


def test_training_log_has_mfu_model_tflops_and_peak_memory(assets, tmp_path, capsys) -> None:  # noqa: F811
    logs = train_logs(assets, tmp_path / "run", capsys)
    assert len(logs) == 2
    for entry in logs:
        for key in ("mfu", "model_tflops_per_second_per_device", "peak_memory_gib", "tokens_per_second"):
            assert float(entry[key]) > 0, (key, entry)


def test_in_process_run_leaves_logging_as_it_found_it(assets, tmp_path, capsys) -> None:  # noqa: F811
    # A run's stderr handler is bound to this test's captured stream, closed once the test ends: left on
    # the root logger (with transformers at info) it broke the log lines of every later in-process call.
    import transformers

    root = logging.getLogger()
    before = (root.handlers[:], root.level, transformers.utils.logging.get_verbosity())
    assert train_logs(assets, tmp_path / "run", capsys)
    assert (root.handlers, root.level, transformers.utils.logging.get_verbosity()) == before


def test_torch_compile_trains_the_same_losses(assets, tmp_path, capsys) -> None:  # noqa: F811
    # HF's --torch_compile wraps the whole composite; aot_eager traces forward and backward through
    # dynamo and AOT autograd (the graph machinery inductor builds on) without a C++ compile step.
    from torch._dynamo.utils import counters

    eager = train_logs(assets, tmp_path / "eager", capsys)
    counters.clear()
    compiled = train_logs(assets, tmp_path / "compiled", capsys, torch_compile_backend="aot_eager")
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert [float(e["loss"]) for e in compiled] == pytest.approx([float(e["loss"]) for e in eager], rel=1e-4)


def test_only_training_batches_count_as_throughput(assets, tmp_path) -> None:  # noqa: F811
    from fila_train.training.arguments import TrainingArguments
    from fila_train.training.trainer import FilaTrainer

    model = build_tiny_model(assets, hybrid=False, fuser=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    trainer = FilaTrainer(model=model, args=args)
    batch = tiny_batch(model, assets, size=2)
    model.eval()
    trainer.compute_loss(model, dict(batch))
    assert trainer.tokens_seen == 0 and trainer._last_log_time is None  # evaluation: not training throughput
    model.train()
    trainer.compute_loss(model, dict(batch))
    assert trainer.tokens_seen == int(batch["attention_mask"].sum())
    assert trainer._last_log_time is not None  # the first logged window starts at the first training batch
