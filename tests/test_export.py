"""fila-train export: ZeRO-2/3 checkpoints and HF saves -> one merged folder; shards, dtype, LoRA, stages, llava.

The session's shared 2-process runs (distributed_utils.SHARED_RUNS) cover {baseline, FILA + MMFuser, MMFuser}
x {ZeRO-2, ZeRO-3}, spread over stage 1 (connector side trained, vision and LLM frozen) and stage 2 (+ LLM), so
trainable and frozen partitions are both consolidated. FILA's ZeRO-3 run is a full stage 2 started from its
ZeRO-2 stage-1 run (the model card's stages); the baseline's ZeRO-3 run trains LoRA adapters, merged by the
export. Everything else uses tiny composites saved in-process (~1 s each).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_utils import (  # noqa: F401  (assets and runs are fixtures)
    REPO,
    SHARED_RUNS,
    SHARED_STEPS,
    DistributedRun,
    RunSpec,
    assets,
    build_tiny_model,
    runs,
    tiny_batch,
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from fila_train.export.cli import main as export_main
from fila_train.export.errors import ExportError
from fila_train.export.exporter import ExportOptions, export_checkpoint
from fila_train.export.folder import PREVIOUS, STAGING, atomic_folder, sibling
from fila_train.export.source import find_source
from fila_train.model import FilaForConditionalGeneration
from fila_train.model.builder import load_tokenizer
from fila_train.model.lora import LoraSettings, add_lora, lora_layers, merge_lora
from fila_train.processing.processor import load_processor

STEPS = SHARED_STEPS
INDEX = "model.safetensors.index.json"
STAGE_NAMES = {1: "1 (alignment)", 2: "2 (instruction tuning)"}
# Every shared run but the baseline's stage 1 (its stage 2, which starts from it, is exported).
EXPORTED = [name for name in SHARED_RUNS if name != "baseline_stage1_zero2"]


def export(checkpoint: Path, output: Path, *flags: str) -> Path:
    assert export_main(["--checkpoint", str(checkpoint), "--output", str(output), *flags]) == 0
    return output


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def save_as_training_output(model, assets, folder: Path) -> Path:
    """What trainer.save_model leaves: save_pretrained weights + config, and the tokenizer."""
    tokenizer = load_tokenizer(str(assets.llm), model, 512)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def assert_one_indexed_shard(out: Path, model) -> None:
    """A model under max_shard_size is still written as shards + index (shard 1 of 1)."""
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / INDEX).read_text())
    with safe_open(out / "model-00001-of-00001.safetensors", "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert index["weight_map"] == {key: "model-00001-of-00001.safetensors" for key in tensors}
    assert index["metadata"] == {"total_parameters": model.num_parameters(),
                                 "total_size": sum(t.numel() * t.element_size() for t in tensors.values())}


def stage_row(spec: RunSpec, folder: Path, summary: dict, record: str, started: str = "n/a",
              exported: bool = False) -> str:
    """The model card's row for one run (``summary``: train_summary.json or the trainer state's numbers)."""
    stage = STAGE_NAMES[spec.stage] + (" **exported**" if exported else "")
    return (f"| {stage} | `{folder}` | {started} | {', '.join(summary['tune_parts'])} | {summary['steps']} | "
            f"{summary['loss_first']:.4f} | {summary['loss_last']:.4f} | {record} |")


def assert_data_mix(card: str, run: DistributedRun) -> None:
    plan = json.loads((run.output_dir / "data_plan.json").read_text())  # the run's; also for its checkpoints
    assert f"From `{run.output_dir / 'data_plan.json'}`: seed {plan['seed']}, {plan['total']} samples in total" in card
    assert all(f"| {source['name']} |" in card for source in plan["sources"])


@pytest.fixture(scope="module")
def baseline_folder(assets, tmp_path_factory) -> Path:
    return save_as_training_output(build_tiny_model(assets, hybrid=False, fuser=False),
                                   assets, tmp_path_factory.mktemp("baseline") / "run")


@pytest.fixture(scope="module")
def hybrid_folder(assets, tmp_path_factory) -> Path:
    return save_as_training_output(build_tiny_model(assets, hybrid=True, fuser=True),
                                   assets, tmp_path_factory.mktemp("hybrid") / "run")


# ----------------------------------------------------------------------------- (a) ZeRO checkpoints


@pytest.mark.parametrize("name", EXPORTED)
def test_zero_checkpoint_export_reproduces_the_trained_model_exactly(name, runs, assets, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fila_train.export")
    spec, run = SHARED_RUNS[name], runs[name].run
    checkpoint = run.output_dir / f"checkpoint-{STEPS}"
    assert find_source(checkpoint).kind == "deepspeed" and (checkpoint / "model.safetensors").is_file()
    out = export(checkpoint, tmp_path / "export", "--dtype", "fp32")
    # Both kinds are there: the fp32 masters win, and the log says so.
    assert "using the DeepSpeed fp32 master weights" in caplog.text
    assert f"DeepSpeed ZeRO checkpoint {checkpoint / f'global_step{STEPS}'}" in caplog.text

    exported = FilaForConditionalGeneration.from_pretrained(out)
    trained = FilaForConditionalGeneration.from_pretrained(run.output_dir)  # the run's own save, as trained
    assert exported.dtype == torch.float32 and exported.config.lora is None
    batch = tiny_batch(trained, assets, size=2, stage2=spec.stage == 2)
    card = (out / "README.md").read_text()
    if spec.lora_r:  # the export merged the adapters: so must the reference, after checking the merge
        q_proj = "language_model.model.layers.0.self_attn.q_proj"
        base = trained.state_dict()[f"{q_proj}.base_layer.weight"].clone()
        # Merged vs adapter model (the trained adapters move these logits by ~0.3, the merge by float rounding).
        torch.testing.assert_close(logits(exported, batch), logits(trained, batch), rtol=1e-5, atol=1e-5)
        trained = merge_lora(trained)
        assert not torch.equal(exported.state_dict()[f"{q_proj}.weight"], base)  # the trained adapters count
        assert json.loads((out / "config.json").read_text()).get("lora") is None
        assert not any("lora_" in key or "base_layer" in key for key in exported.state_dict())
        assert f"LoRA adapters (r={spec.lora_r}, alpha={2.0 * spec.lora_r}) are merged" in card
    ours, theirs = exported.state_dict(), trained.state_dict()
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert torch.equal(logits(exported, batch), logits(trained, batch))
    assert_one_indexed_shard(out, exported)

    for part, params in exported.named_parts().items():
        assert f"| {part} | {sum(p.numel() for _, p in params):,} |" in card
    from_state = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in from_state if "loss" in entry]
    summary = run.summary()
    assert summary["losses"] == losses and summary["steps"] == STEPS
    started = "n/a"
    if spec.starts_from:
        stage1 = runs[spec.starts_from].run
        started = f"`{stage1.output_dir / 'connector.safetensors'}`"
        assert stage_row(SHARED_RUNS[spec.starts_from], stage1.output_dir, stage1.summary(), "train_summary.json") in card
        assert_data_mix(card, stage1)
    assert stage_row(spec, checkpoint, summary, "trainer_state.json", started, exported=True) in card
    assert_data_mix(card, run)


def test_card_names_the_stage_the_run_started_from_while_its_folder_is_there(runs, tmp_path):
    stage2, stage1 = runs["fila_mmfuser_zero3"].run, runs["fila_mmfuser_zero2"].run
    out = export(stage2.output_dir, tmp_path / "export")  # the finished run's own save: train_summary.json
    card = (out / "README.md").read_text()
    artifact = f"`{stage1.output_dir / 'connector.safetensors'}`"
    rows = [stage_row(SHARED_RUNS["fila_mmfuser_zero2"], stage1.output_dir, stage1.summary(), "train_summary.json"),
            stage_row(SHARED_RUNS["fila_mmfuser_zero3"], stage2.output_dir, stage2.summary(), "train_summary.json", artifact,
                      exported=True)]
    assert "\n".join(rows) in card  # stage 1 first
    assert f"### Stage 1 (alignment): `{stage1.output_dir}`" in card
    assert f"### Stage 2 (instruction tuning): `{stage2.output_dir}`" in card

    moved = stage1.output_dir.with_name("moved")
    os.rename(stage1.output_dir, moved)
    try:
        card = (export(stage2.output_dir, tmp_path / "again") / "README.md").read_text()
    finally:
        os.rename(moved, stage1.output_dir)
    assert (f"| 1 (its connector started the next run) | `{stage1.output_dir}` (no longer there: steps, loss and "
            f"data mix unknown) | n/a | n/a | n/a | n/a | n/a | n/a |") in card
    assert f"| {STAGE_NAMES[2]} **exported** | `{stage2.output_dir}` | {artifact} |" in card
    assert "Unknown: the run's output folder is no longer there." in card


# ----------------------------------------------------------------------------- (b) shards, index, dtype


def test_sharded_bf16_export_round_trips(hybrid_folder, assets, tmp_path):
    plan = {"seed": 3, "total": 30, "sources": [
        {"name": "docs", "annotations": ["docs.jsonl"], "image_root": "images", "records": 24, "sampled": 20,
         "rule": "repeat 0.8"},
        {"name": "captions", "annotations": ["cap.jsonl"], "image_root": "images", "records": 10, "sampled": 10,
         "rule": "all"}]}
    (hybrid_folder / "data_plan.json").write_text(json.dumps(plan))
    out = export(hybrid_folder, tmp_path / "export", "--dtype", "bf16", "--max_shard_size", "150KB")

    index = json.loads((out / INDEX).read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    # The index of one shard is the one transformers writes for several.
    single = export(hybrid_folder, tmp_path / "single", "--dtype", "bf16")
    assert json.loads((single / INDEX).read_text())["metadata"] == index["metadata"]
    assert sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    original = FilaForConditionalGeneration.from_pretrained(hybrid_folder)
    assert set(index["weight_map"]) == set(original.state_dict())
    for shard in shards:
        with safe_open(shard, "pt") as handle:
            keys = list(handle.keys())
            assert all(index["weight_map"][key] == shard.name for key in keys)
            assert {handle.get_tensor(key).dtype for key in keys} == {torch.bfloat16}

    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert type(loaded) is FilaForConditionalGeneration and loaded.dtype == torch.bfloat16
    expected = original.to(torch.bfloat16).state_dict()
    assert [k for k, v in loaded.state_dict().items() if not torch.equal(v, expected[k])] == []
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    tokenizer = load_tokenizer(str(out), loaded, 512)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id and generation["pad_token_id"] == tokenizer.pad_token_id
    settings = json.loads((out / "fila_image_processor.json").read_text())
    processor = loaded.image_processor()
    assert settings["vision_encoder"] == "fila_hybrid" and settings["processor"] == "HybridImageProcessor"
    assert settings["anyres"]["tile_size"] == processor.anyres.tile_size
    assert [tuple(c) for c in settings["anyres"]["canvases"]] == list(processor.anyres.canvases)
    assert tuple(settings["mean"]) == processor.mean and settings["tokens_per_view"] == processor.tokens_per_view
    card = (out / "README.md").read_text()
    assert "**bf16**" in card and "seed 3, 30 samples" in card
    assert "| docs | docs.jsonl | images | 24 | 20 | repeat 0.8 |" in card


def test_an_fp32_export_merges_bf16_base_weights_and_fp32_adapters_without_rounding(assets, tmp_path):
    """A bf16 ZeRO run keeps its frozen LLM weights in bf16 and its adapters as fp32 masters. PEFT's merge adds the
    update in the base weight's dtype: an fp32 export held bf16-rounded sums, a third of the adapters' update lost
    (logits off by 40% of what the adapters change). The merge is done in fp32 and rounded once, to --dtype."""
    model = build_tiny_model(assets, hybrid=False, fuser=False)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    layers = lora_layers(model)
    for layer in layers.values():
        base = layer.get_base_layer()
        base.weight.data = base.weight.data.to(torch.bfloat16)
        layer.lora_B["default"].weight.data.normal_(0, 0.02 * base.weight.float().abs().mean().item())
    out = export(save_as_training_output(model, assets, tmp_path / "run"), tmp_path / "export", "--dtype", "fp32")
    exported = load_file(out / "model-00001-of-00001.safetensors")
    for name, layer in layers.items():
        delta = layer.get_delta_weight("default")
        error = exported[f"{name}.weight"] - (layer.get_base_layer().weight.float() + delta)
        assert error.norm() <= 1e-5 * delta.norm(), name


def test_importing_the_model_needs_no_training_code():
    # The export command itself imports DeepSpeed only to consolidate a ZeRO checkpoint.
    code = ("import sys, fila_train.model, fila_train.export.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'deepspeed' or m.startswith('fila_train.training')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ----------------------------------------------------------------------------- (c) --format llava


def test_the_llava_folder_reads_a_legacy_llama_tokenizer_back_as_it_trained(baseline_folder, tmp_path):
    """transformers 5 saves a Llama tokenizer loaded with legacy=True (Mistral-7B's, older Llama conversions)
    without the flag, and a LlamaTokenizer reads it back legacy=False ("</s>USER" one token fewer); our own folder
    needed the flag written back (test_token_parity). The llava folder's tokenizer loads as the generic class
    from tokenizer.json, so it gives the training ids as it is: this keeps it so."""
    from transformers import AutoProcessor, LlamaTokenizer

    from fila_train.export.llava import write_llava
    from fila_train.processing.processor import FilaProcessor
    from distributed_utils import LLAMA2_DIR

    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"no Llama-2 SentencePiece tokenizer at {LLAMA2_DIR}")
    model = FilaForConditionalGeneration.from_pretrained(baseline_folder)
    trained = LlamaTokenizer.from_pretrained(str(LLAMA2_DIR), legacy=True)
    write_llava(model, FilaProcessor.for_model(trained, model.config), tmp_path / "llava", torch.float32, "5GB")
    text = "USER: Hi ASSISTANT: Hello</s>USER: And then? ASSISTANT:"
    served = AutoProcessor.from_pretrained(tmp_path / "llava").tokenizer
    assert served(text)["input_ids"] == trained(text)["input_ids"]


def test_llava_export_matches_our_logits(baseline_folder, assets, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from fila_train.processing.chat_templates import get_template
    from fila_train.processing.tokenization import ConversationTokenizer

    # torch's spelling, as generate's --dtype: both spellings are accepted by every command
    out = export(baseline_folder, tmp_path / "export", "--dtype", "float32", "--format", "llava")
    ours = FilaForConditionalGeneration.from_pretrained(out).eval()
    # Loaded as the model card says, from the path of the "llava" folder (transformers 5.23 reads a local
    # subfolder="llava" generation_config.json from the parent folder).
    llava, loading = LlavaForConditionalGeneration.from_pretrained(out / "llava", dtype=torch.float32,
                                                                   output_loading_info=True)
    llava.eval()
    assert all(not keys for keys in loading.values()), loading  # no missing, unexpected or mismatched key
    assert_one_indexed_shard(out / "llava", llava)
    with safe_open(out / "llava" / "model-00001-of-00001.safetensors", "pt") as handle:  # the llava-hf layout
        assert any(key.startswith("vision_tower.vision_model.") for key in handle.keys())
    processor = AutoProcessor.from_pretrained(out / "llava", backend="pil")
    image_token_id = llava.config.image_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == image_token_id == ours.config.text_config.vocab_size
    assert llava.generation_config.suppress_tokens == [image_token_id]

    image = Image.open(min(assets.image_folder.iterdir())).convert("RGB")
    assert image.width != image.height
    our_processor = ours.image_processor()
    pixels = our_processor(image)["pixel_values"]
    theirs = processor(text="USER: <image>\nRead it. ASSISTANT:", images=image, return_tensors="pt")
    num_image_tokens = our_processor.num_image_tokens({"pixel_values": pixels})
    assert int((theirs["input_ids"] == image_token_id).sum()) == num_image_tokens
    # Same geometry, resampling and pad colour (int(255 * mean), as LLaVA): identical pixels.
    assert torch.equal(theirs["pixel_values"], pixels)
    square = image.crop((0, 0, image.height, image.height))
    assert torch.equal(processor(text="<image>", images=square, return_tensors="pt")["pixel_values"],
                       our_processor(square)["pixel_values"])

    tokenizer = load_tokenizer(str(out), ours, 512)
    prompter = ConversationTokenizer(tokenizer, get_template("vicuna_v1"), ours.config.image_token_id)
    sample = prompter.encode([{"from": "human", "value": "<image>\nWhat is written here?"}],
                             [num_image_tokens], add_generation_prompt=True)
    input_ids = torch.tensor([sample.input_ids])
    # The folder's chat template gives the trainer's generation prompt.
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is written here?"}]}]
    served = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert served["input_ids"][0] == input_ids.masked_fill(input_ids == ours.config.image_token_id,
                                                           image_token_id)[0].tolist()
    tokenizer_config = json.loads((out / "llava" / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == (out / "llava" / "chat_template.jinja").read_text()
    card = (out / "README.md").read_text()  # the card shows the prompt format the template renders
    assert "### Prompt format" in card and "USER: <image>\nWhat is written here? ASSISTANT:\n```" in card
    with torch.no_grad():
        expected = ours(input_ids=input_ids, images={"pixel_values": pixels}).logits
        got = llava(input_ids=input_ids.masked_fill(input_ids == ours.config.image_token_id, image_token_id),
                    pixel_values=pixels).logits
    assert got.shape[-1] == expected.shape[-1] + 1  # the <image> row
    torch.testing.assert_close(got[..., :-1], expected, rtol=0, atol=1e-5)


def test_the_llava_folder_is_read_back_with_the_template_its_model_trained_with(baseline_folder, assets, tmp_path):
    """A model trained with --conversation_template llava_v1 (LLaVA-1.5's --version), exported --format llava:
    generate, eval and lmms-eval read the llava folder as a LLaVA release, and prompted it with vicuna_v1's
    system prompt ("a curious user", not "human"), silently; its chat template says which one it trained with."""
    from fila_train.data.images import load_rgb_image
    from fila_train.inference.generation import build_prompt
    from fila_train.inference.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(baseline_folder, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "conversation_template": "llava_v1"}))
    out = export(run, tmp_path / "export", "--dtype", "float32", "--format", "llava")
    image = load_rgb_image(min(assets.image_folder.iterdir()))
    prompts = []
    for loaded in (load_model(out, "float32", "cpu"), load_model(out / "llava", "float32", "cpu")):
        assert loaded.prompter.template.name == "llava_v1"
        image_id = loaded.model.config.image_token_id  # -200 in ours, the <image> token's id in the llava folder
        prompts.append([None if i == image_id else i for i in build_prompt(loaded, "What is this?", image).input_ids])
    assert prompts[0] == prompts[1]


def test_the_llava_folder_generates_a_batch_as_it_generates_each_prompt(baseline_folder, assets, tmp_path):
    """transformers' batched generation with the llava folder's own processor: its tokenizer padded on the right (as
    training saved it), so a shorter prompt's answer continued after its padding: another answer than alone, with
    only a logged warning."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = export(baseline_folder, tmp_path / "export", "--dtype", "float32", "--format", "llava")
    processor = AutoProcessor.from_pretrained(out / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out / "llava", dtype=torch.float32).eval()
    images = [Image.open(path).convert("RGB") for path in sorted(assets.image_folder.iterdir())[:2]]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True)
             for q in ("What is the title of this document?", "Date?")]  # of different lengths

    def answers(prompts: list[str], pictures: list) -> list[list[int]]:
        inputs = processor(text=prompts, images=pictures, padding=True, return_tensors="pt")
        with torch.no_grad():
            tokens = llava.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
        return tokens[:, inputs["input_ids"].shape[1]:].tolist()

    assert answers(texts, images) == [answers([text], [image])[0] for text, image in zip(texts, images)]


LLAVA_ERA_TRANSFORMERS = ("4.49.*", "4.57.*")  # what LLaVA-era stacks and many vLLM releases pin


@pytest.mark.parametrize("version", LLAVA_ERA_TRANSFORMERS)
def test_llava_export_loads_in_llava_era_transformers(baseline_folder, assets, tmp_path, version):
    """The --format llava folder in transformers 4.x (an isolated uv environment, never the lockfile's):
    no missing or unexpected key, AutoProcessor works, and its chat-template prompt gives our logits."""

    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv runs the test suite, so it is on PATH (or in $UV under `uv run`)"
    out = export(baseline_folder, tmp_path / "export", "--dtype", "fp32", "--format", "llava")
    image = Image.open(min(assets.image_folder.iterdir())).convert("RGB")
    square = tmp_path / "image.png"
    image.save(square)  # not square: 4.x pads it as LLaVA and we do
    result = tmp_path / "logits.safetensors"
    run = subprocess.run([uv, "run", "--no-project", "--python", f"{sys.version_info.major}.{sys.version_info.minor}",
                          "--with", f"transformers=={version}", "--with", f"torch=={torch.__version__.split('+')[0]}",
                          "--with", "pillow", "--with", "numpy", "python",
                          str(REPO / "tests" / "isolated" / "llava_load_check.py"), str(out / "llava"), str(square),
                          str(result)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["transformers"].startswith(version.rstrip("*"))
    assert all(not keys for keys in report["loading"].values()), report["loading"]
    assert report["processor"] == "LlavaProcessor" and report["tokenizer_has_chat_template"]
    theirs = load_file(result)

    ours = FilaForConditionalGeneration.from_pretrained(out).eval()
    processor = load_processor(out, ours.config)
    pixels = processor.image_processor([Image.open(square).convert("RGB")])[0]["pixel_values"]
    torch.testing.assert_close(theirs["pixel_values"], pixels, rtol=0, atol=1e-6)
    sample = processor.conversations.encode([{"from": "human", "value": "<image>\nWhat is written here?"}],
                                            [processor.image_processor.encoder_processor.tokens_per_view],
                                            add_generation_prompt=True)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert theirs["input_ids"][0].tolist() == [image_token_id if t == ours.config.image_token_id else t
                                               for t in sample.input_ids]
    with torch.no_grad():
        expected = ours(input_ids=torch.tensor([sample.input_ids]), images={"pixel_values": pixels}).logits
    torch.testing.assert_close(theirs["logits"][..., :expected.shape[-1]], expected, rtol=0, atol=1e-5)


def test_llava_format_refuses_non_baseline_models(hybrid_folder, tmp_path):
    with pytest.raises(ExportError) as error:
        export_checkpoint(hybrid_folder, tmp_path / "export", ExportOptions(format="llava"))
    message = str(error.value)
    assert str(hybrid_folder) in message and "'fila_hybrid'" in message and "'mmfuser'" in message
    assert not (tmp_path / "export").exists()


# ----------------------------------------------------------------------------- (d) bad input


def test_folder_of_neither_kind_is_an_error_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main(["--checkpoint", str(empty), "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert str(empty) in error and "config.json" in error and "model.safetensors" in error and "global_stepN" in error

    # A run folder that crashed before its final save: config copied, weights only in checkpoint-N.
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_type": "fila"}))
    with pytest.raises(ExportError, match=r"holds no weights to export: looked for .*model\.safetensors.*"
                                          r"global_stepN.*it holds checkpoint-3"):
        find_source(run)
    with pytest.raises(ExportError, match="does not exist"):
        find_source(tmp_path / "missing")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section, key", [("vision_options", "anyres"), ("vision_options", "cvfm"),
                                          ("vision_options", None), ("connector_options", None)])
def test_an_option_this_version_does_not_know_is_one_line_before_any_weights(hybrid_folder, tmp_path, capsys,
                                                                             section, key):
    """A config.json from another fila_train version (or edited by hand) with an option key the parts do not
    have: before, generate and export ended in a TypeError traceback from the options dataclass."""
    from fila_train.cli import main

    folder = tmp_path / "model"
    shutil.copytree(hybrid_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (config[section][key] if key else config[section])["tile"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")  # not read: the options are checked before any weights
    for command in (["generate", "--model", str(folder), "--prompt", "What?"],
                    ["export", "--checkpoint", str(folder), "--output", str(tmp_path / "out")]):
        assert main(command) == 1
        error = capsys.readouterr().err
        assert "Traceback" not in error
        line = error.strip().splitlines()[-1]
        assert line.startswith(f"fila-train {command[0]}: error: {folder}/config.json: unknown key(s) ['tile'] in "
                               f"the "), line
        assert "options; valid keys: " in line


@pytest.mark.parametrize("damage", ["cut_in_a_checkpoint", "cut_in_a_model_folder", "optimizer_files_of_another_run"])
def test_a_damaged_weights_file_is_one_line_naming_it(runs, baseline_folder, tmp_path, capsys, damage):
    """Weights cut short (a copy or a sync that stopped), or a ZeRO checkpoint holding another run's optimizer
    shard: before, export and generate ended in tracebacks from safetensors, torch.load or DeepSpeed. A
    checkpoint-N folder is held against its manifest first, which names the short file."""
    from fila_train.cli import main

    if damage == "cut_in_a_model_folder":
        folder = tmp_path / "model"
        shutil.copytree(baseline_folder, folder)
    else:
        folder = tmp_path / "run" / f"checkpoint-{STEPS}"
        shutil.copytree(runs["baseline_zero2"].run.output_dir / f"checkpoint-{STEPS}", folder)
    optimizer_files = sorted((folder / f"global_step{STEPS}").glob("*optim_states.pt"))
    if damage == "optimizer_files_of_another_run":
        shutil.copy(optimizer_files[0], optimizer_files[0].with_name("zero_pp_rank_2_mp_rank_00_optim_states.pt"))
        expected = (f"{folder / f'global_step{STEPS}'}: a DeepSpeed checkpoint file is unreadable (ValueError: "
                    f"Expected 2 of '*_optim_states.pt'")
        commands = [["export", "--checkpoint", str(folder), "--output", str(tmp_path / "out")]]
    else:
        weights = folder / "model.safetensors"
        size = weights.stat().st_size
        os.truncate(weights, size // 2)
        expected = (f"{folder} (missing model.safetensors ({size // 2} of {size} bytes)): its save did not finish"
                    if damage == "cut_in_a_checkpoint" else f"{weights}: unreadable safetensors file")
        commands = [["export", "--checkpoint", str(folder), "--output", str(tmp_path / "out"), "--source",
                     "safetensors"], ["generate", "--model", str(folder), "--prompt", "What?"]]
    for command in commands:
        assert main(command) == 1, command
        error = capsys.readouterr().err
        assert "Traceback" not in error
        line = error.strip().splitlines()[-1]
        if command[0] == "generate" and damage == "cut_in_a_model_folder":
            expected = f"{folder}: unreadable weights file (Error while deserializing header"
        assert line.startswith(f"fila-train {command[0]}: error: {expected}"), line
    assert not (tmp_path / "out").exists()


def test_the_manifest_check_leaves_pruned_checkpoints_and_other_folders_alone(runs, baseline_folder, tmp_path):
    """What the manifest check of the test above must not refuse: a checkpoint whose optimizer and ZeRO files were
    deleted to save disk (generate and a safetensors export read none of them), and a plain model folder that
    happens to be named checkpoint-N (no manifest: not a run's checkpoint)."""
    from fila_train.cli import main

    pruned = tmp_path / "run" / f"checkpoint-{STEPS}"
    shutil.copytree(runs["baseline_zero2"].run.output_dir / f"checkpoint-{STEPS}", pruned)
    shutil.rmtree(pruned / f"global_step{STEPS}")
    named = tmp_path / "checkpoint-500"
    shutil.copytree(baseline_folder, named)
    for folder in (pruned, named):
        assert main(["generate", "--model", str(folder), "--prompt", "What?", "--max_new_tokens", "2"]) == 0
        assert main(["export", "--checkpoint", str(folder), "--output", str(tmp_path / f"out-{folder.name}"),
                     "--source", "safetensors"]) == 0


def test_a_checkpoint_whose_zero_folder_was_pruned_exports_its_safetensors_save(baseline_folder, tmp_path, caplog):
    """rm -r checkpoint-N/global_stepN to save disk leaves DeepSpeed's 'latest' file naming it. The default --source
    auto reads the DeepSpeed masters only where there is a ZeRO checkpoint: before, it was an error that the tag
    named by 'latest' does not exist, which only --source safetensors got past."""
    caplog.set_level(logging.INFO, logger="fila_train.export")
    checkpoint = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(baseline_folder, checkpoint)
    (checkpoint / "latest").write_text("global_step2")
    assert find_source(checkpoint).kind == "safetensors"
    out = export(checkpoint, tmp_path / "export")
    assert f"reading weights from the safetensors save {checkpoint}" in caplog.text and (out / INDEX).is_file()
    with pytest.raises(ExportError, match=f"{checkpoint} holds no weights to export: looked for a DeepSpeed"):
        find_source(checkpoint, "deepspeed")
    (checkpoint / "global_step1").mkdir()  # another tag is there: which one is meant is unclear
    with pytest.raises(ExportError, match="names the DeepSpeed tag 'global_step2', but .* does not exist"):
        find_source(checkpoint)


def test_missing_and_unexpected_weights_are_named(baseline_folder, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in baseline_folder.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    tensors = load_file(baseline_folder / "model.safetensors")
    tensors.pop("connector.projector.2.bias")
    tensors["connector.extra.weight"] = torch.zeros(2)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ExportError, match=r"missing keys: \[connector\.projector\.2\.bias\]; "
                                          r"unexpected keys: \[connector\.extra\.weight\]"):
        export_checkpoint(broken, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_failed_write_leaves_no_folder_and_existing_output_is_kept(baseline_folder, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="max_shard_size 'lots'"):
        ExportOptions(max_shard_size="lots")
    with pytest.raises(RuntimeError, match="crash"), atomic_folder(out) as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a staging folder
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_checkpoint(baseline_folder, out)
    export_checkpoint(baseline_folder, out, ExportOptions(overwrite=True))
    assert not (out / "keep.txt").exists() and (out / INDEX).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_output_that_cannot_be_made_is_one_line_before_any_weights_are_read(baseline_folder, tmp_path, capsys):
    """An --output below a file: before, the export read and rebuilt the model first (a ZeRO consolidation takes
    minutes on a real run), then ended in a FileExistsError traceback."""
    from fila_train.cli import main

    folder = tmp_path / "model"
    shutil.copytree(baseline_folder, folder)
    (folder / "model.safetensors").write_bytes(b"")  # not read: the output is checked before any weights
    (tmp_path / "notes.txt").write_text("x")
    output = tmp_path / "notes.txt" / "export"
    assert main(["export", "--checkpoint", str(folder), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.strip().splitlines()[-1] == (f"fila-train export: error: output {output}: {tmp_path / 'notes.txt'} "
                                              f"is a file, not a folder")


def test_a_write_that_fails_midway_is_one_line_and_keeps_the_previous_export(baseline_folder, tmp_path, capsys,
                                                                             monkeypatch):
    """A disk that fills up while the export writes (an OSError from a write, injected here after the shards):
    before, a traceback. The previous export stays whole, and no half-written folder is left beside it."""
    import errno

    import fila_train.export.exporter as exporter
    from fila_train.cli import main

    out = export(baseline_folder, tmp_path / "export")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(exporter, "write_json_atomic", disk_full)
    assert main(["export", "--checkpoint", str(baseline_folder), "--output", str(out), "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    line = error.strip().splitlines()[-1]
    assert line.startswith(f"fila-train export: error: could not write {out} (") and "No space left on device" in line
    assert line.endswith(f"{out} is left as it was"), line
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_overwrite_through_a_symlink_replaces_the_folder_it_names(baseline_folder, tmp_path):
    """--output a link to the export folder (e.g. onto a scratch disk), --overwrite: before, the link itself was
    renamed away and replaced by a real folder, the removal of the renamed link failed with an OSError traceback
    (exit 1 after a complete export), and the link was left as a hidden sibling no later export removes."""
    real = tmp_path / "scratch" / "export"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("x")
    link = tmp_path / "export"
    link.symlink_to(real, target_is_directory=True)
    export(baseline_folder, link, "--overwrite")
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / INDEX).is_file() and not (real / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "scratch"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["export"]


@pytest.mark.parametrize("target", ["the_checkpoint", "its_run_folder"])
def test_overwrite_never_replaces_the_checkpoint_it_exports(baseline_folder, tmp_path, target):
    """--overwrite into the checkpoint itself, or into the run folder that holds it (--checkpoint run/checkpoint-2
    --output run): before, the export replaced the folder and deleted the checkpoint and the rest of the run."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoint-2"
    shutil.copytree(baseline_folder, checkpoint)
    (run / "trainer_state.json").write_text("{}")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    output = checkpoint if target == "the_checkpoint" else run
    with pytest.raises(ExportError, match=f"output {output} is or holds the checkpoint it exports"):
        export_checkpoint(checkpoint, output, ExportOptions(overwrite=True))
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_an_interrupted_export_s_leftovers_are_removed_by_the_next_one(baseline_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fila_train.export.folder")
    out = tmp_path / "export"
    # A killed export's half-written staging folder (a full model's size on a real run).
    stale = sibling(out, STAGING)
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    # Not this destination's: another export's staging (it may be running now), one of a destination
    # whose name starts like this one's staging folders, and an unrelated hidden folder.
    neighbours = [sibling(tmp_path / "export-b", STAGING), sibling(tmp_path / stale.name[1:], STAGING),
                  tmp_path / ".cache"]
    for folder in neighbours:
        folder.mkdir()
        (folder / "keep.txt").write_text("x")
    export(baseline_folder, out)
    assert not stale.exists()
    assert all((folder / "keep.txt").is_file() for folder in neighbours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", *(f.name for f in neighbours)])
    assert (out / INDEX).is_file() and (out / "README.md").is_file()
    removed = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(removed) == 1 and stale.name in removed[0], removed
    # Killed while replacing an export (--overwrite): its staging and the replaced copy it was removing.
    caplog.clear()
    leftovers = [sibling(out, STAGING), sibling(out, PREVIOUS)]
    for folder in leftovers:
        folder.mkdir()
    export(baseline_folder, out, "--overwrite")
    assert not any(folder.exists() for folder in leftovers) and (out / INDEX).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", *(f.name for f in neighbours)])
    removed = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(removed) == 1 and all(folder.name in removed[0] for folder in leftovers), removed


def test_exported_files_are_readable_as_the_umask_allows(baseline_folder, tmp_path):
    # save_pretrained's safetensors writer makes 0600 files; a teammate must be able to load the export.
    previous = os.umask(0o022)
    try:
        out = export(baseline_folder, tmp_path / "export")
    finally:
        os.umask(previous)
    modes = {str(path.relative_to(out)): oct(path.stat().st_mode & 0o777) for path in sorted(out.rglob("*"))}
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == {name: "0o644" for name in modes}, modes


def test_unreadable_run_arguments_are_errors_naming_the_file_and_field(baseline_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline_folder, run)
    (run / "run_args.json").write_text(json.dumps({"model": {"pretrained_connector": 5}}))
    with pytest.raises(ExportError, match=re.escape(f"{run / 'run_args.json'}: model.pretrained_connector is 5, "
                                                    "not a path")):
        export_checkpoint(run, tmp_path / "export")
    (run / "run_args.json").write_text("{")
    with pytest.raises(ExportError, match=re.escape(f"{run / 'run_args.json'}: invalid JSON")):
        export_checkpoint(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()
