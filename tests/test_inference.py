"""Generation with the KV cache, the loader, and the generate / eval commands, on tiny saved models."""
from __future__ import annotations

import json
import logging
import shutil
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from distributed_utils import build_tiny_model
from transformers import set_seed

from fila_train.data.images import load_rgb_image
from fila_train.evaluation.bench import BenchError, read_bench
from fila_train.evaluation.evaluate import SHORT_ANSWER_PROMPT, with_instruction
from fila_train.evaluation.metrics import get_metric
from fila_train.inference.generation import (
    GenerationOptions,
    build_prompt,
    generate_answers,
    generate_ids,
    prompt_ids,
)
from fila_train.inference.loading import load_model
from fila_train.processing.processor import left_padded
from fila_train.utils.errors import ConfigError
from fila_train.model.builder import load_tokenizer

ENCODERS = ("clip", "fila_hybrid")
STEPS = 4


@pytest.fixture(scope="module", params=ENCODERS)
def saved_model(request, tiny_assets, tmp_path_factory) -> Path:
    """A tiny composite saved as a training run saves it: save_pretrained + its tokenizer."""
    model = build_tiny_model(tiny_assets, hybrid=request.param == "fila_hybrid", fuser=False)
    tokenizer = load_tokenizer(str(tiny_assets.llm), model, 512)
    folder = tmp_path_factory.mktemp(f"saved_{request.param}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(saved_model):
    return load_model(saved_model, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def images(tiny_assets) -> list:
    # Documents of different aspect ratios: FILA picks different canvases, so prompt lengths differ.
    return [load_rgb_image(path) for path in sorted(tiny_assets.image_folder.iterdir())[:3]]


def batch_prompts(loaded, images):
    """Image prompts of different lengths and a text-only one, in one batch (left padding)."""
    return [build_prompt(loaded, "What is the title of this document?", images[0]),
            build_prompt(loaded, "What is 3 plus 4?", None),
            build_prompt(loaded, "<image>\nHow many rows?", images[1])]


def greedy_with_logits(loaded, prompts):
    """model.generate on one left-padded batch: new tokens [B, STEPS] and logits [STEPS, B, V]."""
    padded = left_padded([p.input_ids for p in prompts], loaded.pad_token_id)
    input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]
    processed = [p.image for p in prompts if p.image is not None]
    config = GenerationOptions(max_new_tokens=STEPS).config(loaded)
    config.return_dict_in_generate = config.output_logits = True
    out = loaded.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                images=loaded.processor.collate(processed) if processed else None,
                                generation_config=config)
    return out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits)


def until_stop(tokens: list[int], stop_ids: list[int]) -> int:
    """How many of ``tokens`` generate produces: up to and including the first stop token."""
    return next((i + 1 for i, token in enumerate(tokens) if token in stop_ids), len(tokens))


@torch.no_grad()
def argmax_without_cache(loaded, prompt, steps: int):
    """The reference: the full forward (images every time, no cache) over the growing sequence."""
    ids = torch.tensor([prompt.input_ids])
    images = loaded.processor.collate([prompt.image]) if prompt.image is not None else None
    tokens, logits = [], []
    for _ in range(steps):
        last = loaded.model(input_ids=ids, images=images, use_cache=False).logits[0, -1]
        logits.append(last)
        tokens.append(int(last.argmax()))
        ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens, torch.stack(logits)


def test_loader_restores_model_tokenizer_and_template(loaded, saved_model):
    config = json.loads((saved_model / "config.json").read_text())
    assert loaded.model.config.vision_encoder == config["vision_encoder"]
    assert not loaded.model.training
    assert loaded.prompter.template.name == config["conversation_template"] == "vicuna_v1"
    assert loaded.stop_token_ids == [loaded.tokenizer.convert_tokens_to_ids("</s>")]
    assert loaded.tokenizer.pad_token_id is not None


def test_folder_generation_config_does_not_change_greedy_decoding(loaded, saved_model, images, tmp_path):
    for file in saved_model.iterdir():
        (tmp_path / file.name).symlink_to(file)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 5.0, "num_beams": 3, "repetition_penalty": 3.0, "eos_token_id": 2}))
    prompts = batch_prompts(loaded, images)
    options = GenerationOptions(max_new_tokens=STEPS)
    assert generate_ids(load_model(tmp_path, "float32", "cpu"), prompts, options) == generate_ids(loaded, prompts, options)


def test_a_model_trained_with_the_plain_template_says_it_reads_no_prompt_text(saved_model, tmp_path, caplog):
    """LLaVA's plain template (stage 1) keeps a prompt's images and drops its text, at training and so at serving:
    generate and eval answered every question with a caption, and nothing said the question was not read."""
    folder = tmp_path / "stage1"
    shutil.copytree(saved_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "conversation_template": "plain"}))
    with caplog.at_level(logging.WARNING, logger="fila_train.inference"):
        stage1 = load_model(folder, dtype="float32", device="cpu")
    assert f"{folder} was trained with the 'plain' template" in caplog.text and "reads no prompt text" in caplog.text
    assert prompt_ids(stage1, "What is the title?", 4) == prompt_ids(stage1, "Something else entirely.", 4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fila_train.inference"):
        load_model(saved_model, dtype="float32", device="cpu")
    assert "reads no prompt text" not in caplog.text


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="not a saved fila model folder"):
        load_model(tmp_path)


def test_prompt_is_a_prefix_of_the_training_ids(loaded, images):
    prompt = build_prompt(loaded, "What is the title?", images[0])
    count = loaded.processor.num_image_tokens(prompt.image)
    trained = loaded.prompter.encode([{"from": "human", "value": "<image>\nWhat is the title?"},
                                      {"from": "gpt", "value": "travel form"}], [count])
    assert trained.input_ids[:len(prompt.input_ids)] == prompt.input_ids
    assert trained.labels[len(prompt.input_ids) - 1] == -100  # the answer starts right after
    assert trained.labels[len(prompt.input_ids)] != -100
    assert prompt.input_ids.count(loaded.model.config.image_token_id) == count
    with pytest.raises(ValueError, match="1 '<image>' placeholder.* but 0 image"):
        build_prompt(loaded, "<image>\nWhat is the title?", None)
    with pytest.raises(ValueError, match="2 '<image>' placeholder.* but 1 image"):
        build_prompt(loaded, "<image><image>\nWhat is the title?", images[0])


def test_greedy_batched_equals_single_equals_full_forward(loaded, images):
    prompts = batch_prompts(loaded, images)
    assert len({len(p.input_ids) for p in prompts}) == len(prompts)  # every row is padded differently
    batched_tokens, batched_logits = greedy_with_logits(loaded, prompts)
    answers = []
    for row, prompt in enumerate(prompts):
        single_tokens, single_logits = greedy_with_logits(loaded, [prompt])
        reference_tokens, reference_logits = argmax_without_cache(loaded, prompt, STEPS)
        n = until_stop(reference_tokens, loaded.stop_token_ids)
        assert single_tokens[0].tolist() == reference_tokens[:n]
        assert batched_tokens[row, :n].tolist() == reference_tokens[:n]
        torch.testing.assert_close(single_logits[:, 0], reference_logits[:n], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched_logits[:n, row], reference_logits[:n], rtol=1e-4, atol=1e-4)
        answers.append([token for token in reference_tokens[:n] if token not in loaded.stop_token_ids])
    # The public helper returns the same tokens, without the stop token.
    assert generate_ids(loaded, prompts, GenerationOptions(max_new_tokens=STEPS)) == answers


def test_images_are_encoded_once_per_generate(loaded, images):
    calls = []
    handle = loaded.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        greedy_with_logits(loaded, batch_prompts(loaded, images))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_generate_cli_streams_the_answer(saved_model, tiny_assets, loaded, images, capsys):
    from fila_train.cli import main

    image_path = sorted(tiny_assets.image_folder.iterdir())[0]
    expected = generate_answers(loaded, [build_prompt(loaded, "What is the title?", images[0])],
                                GenerationOptions(max_new_tokens=STEPS))[0]
    capsys.readouterr()
    assert main(["generate", "--model", str(saved_model), "--image", str(image_path), "--prompt",
                 "What is the title?", "--max_new_tokens", str(STEPS), "--dtype", "fp32"]) == 0  # export's spelling
    assert capsys.readouterr().out.strip() == expected
    assert expected  # a random tiny model still says something in 5 tokens


TEXT_PROMPTS = ("What is 3 plus 4?", "Name a colour.")


def test_sampling_options(loaded):
    prompts = [build_prompt(loaded, text, None) for text in TEXT_PROMPTS]
    greedy = generate_ids(loaded, prompts, GenerationOptions(max_new_tokens=STEPS))

    def sampled(seed: int, **options) -> list[list[int]]:
        set_seed(seed)
        return generate_ids(loaded, prompts, GenerationOptions(max_new_tokens=STEPS, **options))

    # Sampling settings mean nothing without --do_sample: refused, not ignored.
    with pytest.raises(ConfigError, match="act only with --do_sample"):
        GenerationOptions(max_new_tokens=STEPS, temperature=100.0, top_k=5, top_p=0.5)
    # --temperature 0, LLaVA's scripts' way to ask for greedy decoding, is greedy.
    assert sampled(0, temperature=0) == greedy
    # With it, keeping only the likeliest token (top_k 1, or a top_p below its probability) is greedy.
    assert sampled(0, do_sample=True, temperature=100.0, top_k=1) == greedy
    assert sampled(0, do_sample=True, temperature=100.0, top_p=1e-6) == greedy
    hot = {"do_sample": True, "temperature": 100.0}  # close to uniform over the 512-token vocabulary
    assert sampled(3, **hot) == sampled(3, **hot)
    # Fixed seeds, so this is not flaky: 8 runs x 2 prompts of near-uniform draws all equal to
    # greedy would have probability about (1/512)^16.
    assert any(sampled(seed, **hot) != greedy for seed in range(8))


def test_generate_cli_sampling_follows_the_seed(saved_model, loaded, capsys):
    from fila_train.cli import main

    flags = ["--do_sample", "--temperature", "100", "--top_k", "50", "--top_p", "0.9"]
    set_seed(11)
    expected = generate_answers(loaded, [build_prompt(loaded, TEXT_PROMPTS[0], None)], GenerationOptions(
        max_new_tokens=STEPS, do_sample=True, temperature=100.0, top_k=50, top_p=0.9))[0]
    capsys.readouterr()
    assert main(["generate", "--model", str(saved_model), "--prompt", TEXT_PROMPTS[0], *flags, "--seed", "11",
                 "--max_new_tokens", str(STEPS), "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("flags, message", [
    # LLaVA's cli samples whenever --temperature > 0: here it was greedy, silently, exit 0.
    (["--temperature", "0.2"], "--temperature, --top_p and --top_k act only with --do_sample"),
    (["--top_p", "0.9"], "--temperature, --top_p and --top_k act only with --do_sample"),
    # transformers' ValueError tracebacks, once the model had loaded.
    (["--do_sample", "--temperature", "0"], "--temperature must be positive"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be positive"),
    # Above 1 transformers leaves nucleus sampling out, silently.
    (["--do_sample", "--top_p", "1.5"], "--top_p must be in [0, 1]"),
], ids=["temperature_without_do_sample", "top_p_without_do_sample", "zero_temperature", "no_new_tokens",
        "top_p_above_1"])
def test_generation_flags_that_would_be_ignored_or_fail_are_one_line_before_the_model_loads(saved_model, capsys,
                                                                                          monkeypatch, flags, message):
    from fila_train.cli import main
    from fila_train.inference import loading

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the generation flags were checked")

    monkeypatch.setattr(loading, "load_saved_model", never)
    assert main(["generate", "--model", str(saved_model), "--prompt", "What?", *flags]) == 1
    assert message in one_line_error(capsys, "generate")


TINY_CLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 28, "patch_size": 14}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}


def one_line_error(capsys, prog: str) -> str:
    """The error line, the last of stderr (loading may print progress bars before it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fila-train {prog}: error: ")
    return last


@pytest.mark.parametrize("config, image, message", [
    (None, "missing.png", "image file not found: .*missing.png"),  # found before the model is loaded
    (None, None, "is not a saved fila model folder"),
    ('{"model_type": "fi', None, "config.json: "),
    # Before, with weights beside it, the defaults filled the sub-configs in: a full-size random Llama was built
    # (killed for memory); now it is refused before any weights, here where there are none.
    ('{"model_type": "fila"}', None, "config.json has no text_config or vision_config"),
    (json.dumps({"model_type": "fila", "vision_config": TINY_CLIP, "text_config": TINY_LLAMA}), None,
     "incomplete model folder: .*model.safetensors"),
])
def test_generate_cli_errors_are_one_line(tmp_path, capsys, config, image, message):
    from fila_train.cli import main

    if config is not None:
        (tmp_path / "config.json").write_text(config)
    image_flags = ["--image", str(tmp_path / image)] if image else []
    assert main(["generate", "--model", str(tmp_path), *image_flags, "--prompt", "What?"]) == 1
    assert re.search(message, one_line_error(capsys, "generate"))


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "--device gpu: "),  # before: torch's RuntimeError traceback
    (["--device", "cuda:99"], "--device cuda:99: torch sees "),  # before: a CUDA traceback after the model loaded
], ids=["unknown", "absent_gpu"])
def test_a_device_that_is_not_there_is_one_line_before_the_model_loads(saved_model, capsys, monkeypatch, flags,
                                                                       message):
    from fila_train.cli import main
    from fila_train.inference import loading

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --device was checked")

    monkeypatch.setattr(loading, "load_saved_model", never)

    assert main(["generate", "--model", str(saved_model), "--prompt", "What?", *flags]) == 1
    assert f"fila-train generate: error: {message}" in one_line_error(capsys, "generate")


def test_a_run_folder_without_its_final_save_names_its_checkpoints(saved_model, tmp_path, capsys):
    """A run that stopped before its final save holds only checkpoint-N folders: before, generate said to give the
    output folder of a training run, which is what was given."""
    from fila_train.cli import main

    for step in (10, 4):
        shutil.copytree(saved_model, tmp_path / f"checkpoint-{step}")
    assert main(["generate", "--model", str(tmp_path), "--prompt", "What?"]) == 1
    assert one_line_error(capsys, "generate").endswith(
        "; it holds checkpoint-4, checkpoint-10 (its run stopped before the final save): pass one of those")


def test_qlora_training_output_is_a_one_line_error_saying_to_export(saved_model, tmp_path, capsys):
    from fila_train.cli import main
    from fila_train.model.lora import LoraSettings

    # A QLoRA run's config: its LLM was quantized when loaded for training, so the folder cannot be rebuilt.
    shutil.copytree(saved_model, tmp_path / "qlora")
    config = json.loads((tmp_path / "qlora" / "config.json").read_text())
    config["lora"] = LoraSettings(r=4, bits=4).to_dict()
    (tmp_path / "qlora" / "config.json").write_text(json.dumps(config))
    assert main(["generate", "--model", str(tmp_path / "qlora"), "--prompt", "What?", "--dtype", "float32"]) == 1
    line = one_line_error(capsys, "generate")
    assert line.startswith(f"fila-train generate: error: {tmp_path / 'qlora'}: ") and "Export it first" in line


def test_a_model_folder_missing_weights_is_refused_not_filled_at_random(saved_model, tiny_assets, tmp_path,
                                                                       capsys):
    """A copy whose weights lack the connector (cut short, or from another run): before, from_pretrained
    initialised it at random, and generate answered (and eval scored) with it, exit 0. Training on from it too."""
    from fila_train.cli import main
    from fila_train.model.builder import build_model
    from safetensors.torch import load_file, save_file

    shutil.copytree(saved_model, tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    kept = {k: v for k, v in load_file(weights).items() if not k.startswith("connector.")}
    save_file(kept, weights, metadata={"format": "pt"})
    assert main(["generate", "--model", str(tmp_path / "cut"), "--prompt", "What?", "--dtype", "float32"]) == 1
    line = one_line_error(capsys, "generate")
    assert f"{tmp_path / 'cut'}: the weights do not match its config.json's model (missing 4 (connector." in line
    with pytest.raises(ValueError, match="missing 4 \\(connector"):
        build_model(str(tmp_path / "cut"))


@pytest.mark.parametrize("damage", ["a_tensor_its_index_lists_is_not_in_its_shard", "a_tensor_of_another_shape"])
def test_a_sharded_folder_missing_or_misshaping_a_tensor_is_one_line_naming_it(saved_model, tmp_path, capsys,
                                                                              damage):
    """An export's shard rewritten without one of the tensors its index lists, or with one of another shape:
    before, transformers reported neither as missing or mismatched: the first left the weight on the meta
    device (a NotImplementedError traceback when moved to the device), the second raised its own RuntimeError."""
    from fila_train.cli import main
    from fila_train.model import FilaForConditionalGeneration
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    FilaForConditionalGeneration.from_pretrained(saved_model).save_pretrained(folder, max_shard_size="100KB")
    shutil.copy(saved_model / "tokenizer.json", folder)
    shutil.copy(saved_model / "tokenizer_config.json", folder)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    # The ConvNeXt's weights (flagged as initialised when built) were the ones left on the meta device.
    name = next((key for key in sorted(weight_map) if key.startswith("vision_tower.convnext.")
                 and damage != "a_tensor_of_another_shape"), "connector.projector.2.bias")
    shard = folder / weight_map[name]
    tensors = load_file(shard)
    shape = list(tensors[name].shape)
    if damage == "a_tensor_of_another_shape":
        tensors[name] = torch.zeros(3)
    else:
        del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    assert main(["generate", "--model", str(folder), "--prompt", "What?", "--dtype", "float32"]) == 1
    problem = (f"mismatched 1 ({name} [3] in the files, {shape} in the model)"
               if damage == "a_tensor_of_another_shape" else f"missing 1 ({name})")
    assert one_line_error(capsys, "generate").startswith(
        f"fila-train generate: error: {folder}: the weights do not match its config.json's model ({problem}): "), damage


def test_a_model_folder_with_its_own_tokenizer_code_runs_none_of_it(saved_model, tmp_path, capsys, monkeypatch):
    """A model folder (a download, a teammate's export) whose tokenizer_config.json names a class in a .py file
    beside it. Before, generate, eval and export asked "run the custom code? [y/N]" and a yes (piped in too) ran
    it; without one they ended in transformers' multi-line error."""
    import io

    from fila_train.cli import main

    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    ran = tmp_path / "ran"
    (folder / "tokenization_own.py").write_text(
        f"open({str(ran)!r}, 'w').close()\nfrom transformers import PreTrainedTokenizerFast\n"
        f"class OwnTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": [None, "tokenization_own.OwnTokenizer"]}, tokenizer_class="OwnTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    expected = f"{folder} ships its own tokenizer code (tokenizer_config.json's auto_map: tokenization_own.OwnTokenizer)"
    for command in (["generate", "--model", str(folder), "--prompt", "What?", "--dtype", "float32"],
                    ["export", "--checkpoint", str(folder), "--output", str(tmp_path / "export")]):
        monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # the answer to transformers' prompt, were it asked
        assert main(command) == 1
        assert expected in one_line_error(capsys, command[0])
    assert not ran.exists()


def test_generate_cli_prompt_error_is_one_line(saved_model, capsys):
    from fila_train.cli import main

    assert main(["generate", "--model", str(saved_model), "--prompt", "<image>\nWhat?", "--dtype", "float32"]) == 1
    assert "1 '<image>' placeholder(s) but 0 image was given" in one_line_error(capsys, "generate")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_eval_cli_scores_its_predictions(saved_model, tiny_assets, loaded, tmp_path, capsys):
    from fila_train.cli import main

    bench = [json.loads(line) for line in (tiny_assets.stage2_data.parent / "eval_questions.jsonl")
             .read_text().splitlines()][:3]
    bench.append({"id": 99, "question": "What is 3 plus 4?", "answers": ["7"]})  # text-only, integer id
    # Make the score informative for a random model: half the answers are near its own answers.
    prompts = [build_prompt(loaded, with_instruction(r["question"], SHORT_ANSWER_PROMPT),
                            load_rgb_image(tiny_assets.image_folder / r["image"]) if "image" in r else None)
               for r in bench]
    own = generate_answers(loaded, prompts, GenerationOptions(max_new_tokens=STEPS))
    for record, answer in zip(bench[::2], own[::2]):
        record["answers"] = ["zzzzzzzz", answer + "x"]
    output = tmp_path / "out"
    assert main(["eval", "--model", str(saved_model), "--bench", str(write_jsonl(tmp_path / "bench.jsonl", bench)),
                 "--metric", "anls", "--image_folder", str(tiny_assets.image_folder), "--output", str(output),
                 "--batch_size", "3", "--max_new_tokens", str(STEPS), "--dtype", "float32"]) == 0
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [str(r["id"]) for r in bench]
    assert [row["prediction"] for row in rows] == own
    assert [row["answers"] for row in rows] == [r["answers"] for r in bench]
    by_hand = [get_metric("anls").score(row["prediction"], row["answers"]) for row in rows]
    assert [row["score"] for row in rows] == by_hand
    summary = json.loads((output / "score.json").read_text())
    assert summary["score"] == pytest.approx(sum(by_hand) / len(by_hand)) and summary["score"] > 0
    assert summary["metric"] == "anls" and summary["count"] == len(bench)
    assert Path(summary["model"]) == saved_model.resolve()
    printed = f"anls {100 * summary['score']:.2f}%"  # percent, two decimals; the files keep the fraction
    assert printed in capsys.readouterr().out
    # Several files in one call (one model load) give what one call per file gives, each in OUTPUT/<name>.
    reversed_bench = write_jsonl(tmp_path / "reversed.jsonl", bench[::-1])
    common = ["--metric", "anls", "--image_folder", str(tiny_assets.image_folder), "--batch_size", "3",
              "--max_new_tokens", str(STEPS), "--dtype", "float32"]
    assert main(["eval", "--model", str(saved_model), "--bench", str(tmp_path / "bench.jsonl"), str(reversed_bench),
                 "--output", str(tmp_path / "both"), *common]) == 0
    assert (tmp_path / "both" / "bench" / "predictions.jsonl").read_text() == (output / "predictions.jsonl").read_text()
    again = [json.loads(line) for line in (tmp_path / "both" / "reversed" / "predictions.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in again] == own[::-1]
    assert main(["eval", "--model", str(saved_model), "--bench", str(reversed_bench), str(reversed_bench),
                 *common]) == 1  # the same name twice would write one folder twice
    assert "two files share a name" in capsys.readouterr().err
    # The demo's summary prints the same score the same way.
    from fila_train.demo.cli import main as demo_main

    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "train_summary.json").write_text(json.dumps(
            {"loss_first": 2.0, "loss_last": 1.0, "steps": 1, "seconds": 1.0, "output_dir": str(tmp_path / stage),
             "vision_encoder": "clip", "connector_type": "mlp2x_gelu"}))
    assert demo_main(["summarize", "--output", str(tmp_path), "--stage1", str(tmp_path / "stage1"),
                      "--stage2", str(tmp_path / "stage2"), "--eval", str(output)]) == 0
    assert f"eval: {printed} on {len(bench)} held-out questions" in capsys.readouterr().out


def test_demo_summary_has_the_keys_the_readme_documents(tmp_path, capsys):
    """summary.json as scripts/demo.sh asks for it (the first held-out record as --question) holds every key the
    README's demo paragraph names: per stage, and in `answer` (...) and `eval` (...)."""
    from fila_train.demo.cli import main as demo_main
    from fila_train.demo.synthetic_docs import make_synthetic_dataset

    record = (make_synthetic_dataset(tmp_path / "data", num_images=1, num_eval=1).eval_path
              .read_text().splitlines()[0])
    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "train_summary.json").write_text(json.dumps(
            {"loss_first": 2.0, "loss_last": 1.0, "steps": 1, "seconds": 1.0, "output_dir": str(tmp_path / stage),
             "vision_encoder": "fila_hybrid", "connector_type": "mlp2x_gelu"}))
    (tmp_path / "answer.txt").write_text("march\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "score.json").write_text(json.dumps({"metric": "anls", "score": 0.5, "count": 1}))
    assert demo_main(["summarize", "--output", str(tmp_path), "--stage1", str(tmp_path / "stage1"),
                      "--stage2", str(tmp_path / "stage2"), "--export", str(tmp_path / "export"), "--question", record,
                      "--answer_file", str(tmp_path / "answer.txt"), "--eval", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "summary.json").read_text())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = " ".join(readme[readme.index("It ends with `playground/demo/summary.json`"):].split("\n\n")[0].split())
    per_stage = re.findall(r"`(\w+)`", paragraph[paragraph.index("per stage"):paragraph.index(";")])
    assert per_stage and all(set(per_stage) <= set(summary[stage]) for stage in ("stage1", "stage2")), per_stage
    blocks = dict(re.findall(r"`(\w+)` \(([^)]*)\)", paragraph[paragraph.index(";"):]))
    assert set(blocks) == {"answer", "eval"}, blocks
    for block, keys in blocks.items():
        documented = {key.strip(" `") for key in keys.split(",")}
        assert documented <= set(summary[block]), (block, documented, sorted(summary[block]))
    assert summary["answer"]["prediction"] == "march" and "export_dir" in summary


def test_eval_answers_llava_question_files_and_writes_llava_answer_files(saved_model, tiny_assets, tmp_path,
                                                                          capsys):
    """LLaVA's question file (question_id, image, text; no answers) is answered without a metric, and the answers
    equal those of the same questions in our format; both runs write LLaVA's answer file."""
    from fila_train.cli import main

    ours = [json.loads(line) for line in (tiny_assets.stage2_data.parent / "eval_questions.jsonl")
            .read_text().splitlines()][:3]
    llava = [{"question_id": index, "image": record["image"], "text": f"{record['question']}\n{SHORT_ANSWER_PROMPT}",
              "category": "default"} for index, record in enumerate(ours)]
    common = ["--model", str(saved_model), "--image_folder", str(tiny_assets.image_folder), "--batch_size", "2",
              "--max_new_tokens", str(STEPS), "--dtype", "float32"]
    assert main(["eval", "--bench", str(write_jsonl(tmp_path / "llava_questions.jsonl", llava)),
                 "--output", str(tmp_path / "llava"), *common]) == 0
    assert "answered 3 questions" in capsys.readouterr().out
    assert not (tmp_path / "llava" / "score.json").exists()
    assert main(["eval", "--bench", str(write_jsonl(tmp_path / "ours.jsonl", ours)), "--metric", "anls",
                 "--output", str(tmp_path / "ours"), *common]) == 0
    answers = [json.loads(line) for line in (tmp_path / "llava" / "answers.jsonl").read_text().splitlines()]
    assert [set(row) for row in answers] == [{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}] * 3
    assert [row["question_id"] for row in answers] == [0, 1, 2]  # the file's ids, with their type
    assert [row["prompt"] for row in answers] == [record["text"] for record in llava]
    predictions = [json.loads(line)["prediction"] for line in
                   (tmp_path / "ours" / "predictions.jsonl").read_text().splitlines()]
    assert [row["text"] for row in answers] == predictions
    again = [json.loads(line) for line in (tmp_path / "ours" / "answers.jsonl").read_text().splitlines()]
    assert [row["text"] for row in again] == predictions
    # A LLaVA question file has nothing to score.
    assert main(["eval", "--bench", str(tmp_path / "llava_questions.jsonl"), "--metric", "exact", *common]) == 1
    assert "a LLaVA question file has no answers to score" in capsys.readouterr().err


@pytest.mark.parametrize("metric, make_answers, expected", [
    # Two questions: the first has the model's own answer (as the metric normalises it) among its
    # answers, the second only a string no answer of 4 tiny-vocabulary tokens normalises to.
    ("vqa", lambda own: [own + "?"] * 2 + ["zzzzzzzz"] * 8, 0.6),  # "?" is dropped; 2 of 10 humans: 0.6
    ("relaxed", lambda own: [f" {own.upper()} ", "zzzzzzzz"], 1.0),  # case-blind, unlike exact
])
def test_eval_cli_vqa_and_relaxed(saved_model, loaded, tmp_path, capsys, metric, make_answers, expected):
    from fila_train.cli import main

    questions = [f"{text}\n{SHORT_ANSWER_PROMPT}" for text in TEXT_PROMPTS]
    own = generate_answers(loaded, [build_prompt(loaded, q, None) for q in questions],
                           GenerationOptions(max_new_tokens=STEPS))
    assert own[0].upper().lower() == own[0].lower()  # no "ß" (upper "SS"): relaxed sees the same text
    bench = [{"id": "own", "question": questions[0], "answers": make_answers(own[0])},
             {"id": "other", "question": questions[1], "answers": make_answers("zzzzzzzz")}]
    output = tmp_path / "out"
    assert main(["eval", "--model", str(saved_model), "--bench", str(write_jsonl(tmp_path / "bench.jsonl", bench)),
                 "--metric", metric, "--output", str(output), "--batch_size", "2", "--max_new_tokens", str(STEPS),
                 "--dtype", "float32"]) == 0
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in rows] == own
    assert [row["score"] for row in rows] == [pytest.approx(expected), 0.0]
    summary = json.loads((output / "score.json").read_text())
    assert summary["metric"] == metric and summary["score"] == pytest.approx(expected / 2)


@pytest.mark.parametrize("bad, message", [
    ({"question": "What does <image> show?"}, "field 'question': the prompt contains 1 '<image>' placeholder(s) but "
                                               "0 image was given"),
    ({"question": "Is it done?</s>"}, "field 'question': "),
    ({"image": "not_an_image.png", "question": "What is the title?"}, "field 'image': unreadable image"),
    ({"image": "depth.tiff", "question": "What is the title?"}, "field 'image': unreadable image"),
], ids=["placeholder_without_image", "special_token", "bad_image_header", "float_pixels"])
def test_eval_finds_a_bad_prompt_before_it_answers_any_question(saved_model, tiny_assets, tmp_path, capsys,
                                                                monkeypatch, bad, message):
    """A question the template refuses, or an image whose header is bad, last in the file: before, eval met it when
    its batch came, after hours of answers on a real benchmark, and wrote none of them."""
    from fila_train.cli import main
    from fila_train.evaluation import evaluate

    batches = []  # a spy: each batch is still answered by the real generate_answers
    answer = evaluate.generate_answers
    monkeypatch.setattr(evaluate, "generate_answers", lambda *args: batches.append(len(args[1])) or answer(*args))
    questions = [json.loads(line) for line in (tiny_assets.stage2_data.parent / "eval_questions.jsonl")
                 .read_text().splitlines()][:2]
    questions.append({"id": "last", "answers": ["yes"], **bad})
    images = tmp_path / "images"
    shutil.copytree(tiny_assets.image_folder, images)
    (images / "not_an_image.png").write_text("a text file named like an image")
    Image.fromarray(np.ones((28, 28), dtype=np.float32)).save(images / "depth.tiff")  # found from its header
    assert main(["eval", "--bench", str(write_jsonl(tmp_path / "bench.jsonl", questions)), "--metric", "anls",
                 "--model", str(saved_model), "--image_folder", str(images), "--batch_size", "1",
                 "--max_new_tokens", str(STEPS), "--dtype", "float32", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"fila-train eval: error: {tmp_path / 'bench.jsonl'}:3: ") and message in line, line
    assert batches == []  # before: [1, 1], two answers generated, then lost


def questions_with_a_cut_image(tiny_assets, tmp_path, monkeypatch, cut: int):
    """(a spy on the batches answered, 4 eval questions, their image folder, the whole bytes of question ``cut``'s
    image, which is cut in half there: its header is whole, so it is met only when its batch comes)."""
    from fila_train.evaluation import evaluate

    batches = []  # each batch is still answered by the real generate_answers
    answer = evaluate.generate_answers
    monkeypatch.setattr(evaluate, "generate_answers", lambda *args: batches.append(len(args[1])) or answer(*args))
    questions = [json.loads(line) for line in (tiny_assets.stage2_data.parent / "eval_questions.jsonl")
                 .read_text().splitlines()][:4]
    images = tmp_path / "images"
    shutil.copytree(tiny_assets.image_folder, images)
    whole = (images / questions[cut]["image"]).read_bytes()
    questions[cut]["image"] = "cut.png"
    (images / "cut.png").write_bytes(whole[:len(whole) // 2])
    return batches, questions, images, whole


def test_an_eval_stopped_by_a_cut_image_goes_on_from_its_kept_answers(saved_model, tiny_assets, tmp_path, capsys,
                                                                      monkeypatch):
    """An image whose header is fine but whose body is cut is met only when its batch comes. Before, eval stopped
    there and lost every answer before it; now they are kept, and once the image is mended the same command
    answers only the rest, and writes what an uninterrupted run writes."""
    from fila_train.cli import main

    batches, questions, images, whole = questions_with_a_cut_image(tiny_assets, tmp_path, monkeypatch, cut=2)
    bench = write_jsonl(tmp_path / "bench.jsonl", questions)

    def run(output: str) -> int:
        return main(["eval", "--bench", str(bench), "--metric", "anls", "--model", str(saved_model), "--image_folder",
                     str(images), "--batch_size", "2", "--max_new_tokens", str(STEPS), "--dtype", "float32",
                     "--output", str(tmp_path / output)])

    assert run("out") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{bench}:3: field 'image': unreadable image" in line and "the 2 answers before its batch are kept" in line
    assert batches == [2]
    (images / "cut.png").write_bytes(whole)  # mended
    assert run("out") == 0 and batches == [2, 2]  # the first batch is not answered again
    assert not (tmp_path / "out" / "answers_so_far.jsonl").exists()
    assert run("uninterrupted") == 0 and batches == [2, 2, 2, 2]
    for name in ("predictions.jsonl", "answers.jsonl"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "uninterrupted" / name).read_text()


def test_an_eval_of_several_benches_stopped_in_a_later_one_keeps_the_earlier_benches_answers(
        saved_model, tiny_assets, tmp_path, capsys, monkeypatch):
    """eval --bench a --bench b stopped in b: a rerun answered all of a again, because a's kept answers were
    removed as soon as a's results were written, though the command as a whole had not finished."""
    from fila_train.cli import main

    batches, questions, images, whole = questions_with_a_cut_image(tiny_assets, tmp_path, monkeypatch, cut=3)
    benches = [write_jsonl(tmp_path / "a.jsonl", questions[:2]), write_jsonl(tmp_path / "b.jsonl", questions[2:])]
    run = ["eval", "--bench", str(benches[0]), "--bench", str(benches[1]), "--metric", "anls", "--model",
           str(saved_model), "--image_folder", str(images), "--batch_size", "2", "--max_new_tokens", str(STEPS),
           "--dtype", "float32", "--output", str(tmp_path / "out")]
    assert main(run) == 1
    assert "b.jsonl:2: field 'image': unreadable image" in capsys.readouterr().err
    assert batches == [2]
    (images / "cut.png").write_bytes(whole)  # mended
    assert main(run) == 0 and batches == [2, 2]  # before: [2, 2, 2], a answered again
    assert (tmp_path / "out" / "a" / "predictions.jsonl").is_file()
    assert not list((tmp_path / "out").glob("*/answers_so_far.jsonl"))  # removed once every bench is done


def test_kept_answers_are_whole_batches_of_the_same_model_settings_and_questions(tmp_path):
    from fila_train.evaluation.answer_log import ANSWER_LOG_FILE, AnswerLog

    key = {"model": "m", "max_new_tokens": 4}
    questions = ["q0", "q1", "q2", "q3", "q4"]
    with AnswerLog(tmp_path, key, questions, batch_size=2) as log:
        log.append(["a0", "a1"])
        log.append(["a2", "a3"])
    assert AnswerLog(tmp_path, key, questions, 2).kept == ["a0", "a1", "a2", "a3"]
    assert AnswerLog(tmp_path, key, questions, 3).kept == ["a0", "a1", "a2"]  # another batch size: whole batches
    assert AnswerLog(tmp_path, {**key, "max_new_tokens": 8}, questions, 2).kept == []  # other settings
    assert AnswerLog(tmp_path, key, ["q0", "q1", "changed", "q3", "q4"], 2).kept == ["a0", "a1"]
    assert AnswerLog(tmp_path, key, questions[:4], 2).kept == []  # fewer questions: other last batch
    path = tmp_path / ANSWER_LOG_FILE
    path.write_text(path.read_text()[:-5])  # the last line cut by the stop
    assert AnswerLog(tmp_path, key, questions, 1).kept == ["a0", "a1", "a2"]
    with AnswerLog(tmp_path / "other", key, questions, 2) as log:
        log.append(["line\u2028separator", "a1"])  # json.dumps(ensure_ascii=False) leaves U+2028 as it is
    assert AnswerLog(tmp_path / "other", key, questions, 2).kept == ["line\u2028separator", "a1"]


def test_the_answers_of_a_hub_model_are_kept_whatever_the_working_folder(tmp_path, monkeypatch):
    """A LLaVA release by its hub id: the answer log's key named the model by the id resolved against the working
    folder (a local folder that is not there), so an eval stopped part-way and run again from another folder with
    the same --output answered every question again ("a rerun after a stop starts where it stopped")."""
    from fila_train.evaluation import answer_log

    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(answer_log, "local_file", lambda model, name: snapshot / name)
    keys = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        keys.append(answer_log.answers_key("llava-hf/tiny-llava", "float32 on cpu", {"max_new_tokens": 4}))
    assert keys[0] == keys[1] and keys[0]["model"] == "llava-hf/tiny-llava"


@pytest.mark.parametrize("lines, flags, message", [
    ([{"id": 1, "question": "q?", "answers": ["a"]}, {"id": 2, "question": "q?"}], [],
     r"bench.jsonl:2: field 'answers' must be"),
    ([{"id": 1, "question": "q?", "answers": ["a"]}, '{"id": 2, '], [], r"bench.jsonl:2: malformed JSON"),
    ([{"id": 1, "image": "gone.png", "question": "q?", "answers": ["a"]}], ["--image_folder", "."],
     r"bench.jsonl:1: field 'image': image file not found: .*gone.png"),
    (None, [], r"bench.jsonl: benchmark file not found"),
    ([{"id": 1, "question": "q?", "answers": ["a"]}], [], r"is not a saved fila model folder"),
])
def test_eval_cli_errors_are_one_line(tmp_path, capsys, lines, flags, message):
    from fila_train.cli import main

    bench = tmp_path / "bench.jsonl"
    if lines is not None:
        write_jsonl(bench, lines)
    flags = [tmp_path if flag == "." else flag for flag in flags]
    assert main(["eval", "--model", str(tmp_path), "--bench", str(bench), "--metric", "exact",
                 *map(str, flags)]) == 1
    assert re.search(message, one_line_error(capsys, "eval"))


def test_an_eval_output_that_cannot_be_a_folder_is_one_line_before_the_model_loads(saved_model, tmp_path, capsys,
                                                                                     monkeypatch):
    """--output naming a file (or a folder under one): before, NotADirectoryError's traceback once the model had
    loaded and every prompt had been checked."""
    from fila_train.cli import main
    from fila_train.inference import loading

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(loading, "load_saved_model", never)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": 1, "question": "q?", "answers": ["a"]}])
    (tmp_path / "results.txt").write_text("")
    for output in (tmp_path / "results.txt", tmp_path / "results.txt" / "run1"):
        assert main(["eval", "--model", str(saved_model), "--bench", str(bench), "--metric", "exact",
                     "--output", str(output)]) == 1
        assert one_line_error(capsys, "eval").endswith(f"--output {output}: {tmp_path / 'results.txt'} is a file, "
                                                       f"not a folder")


def test_eval_cli_refuses_bad_numbers_in_one_line(tmp_path, capsys):
    from fila_train.cli import main

    assert main(["eval", "--model", str(tmp_path), "--bench", "b.jsonl", "--metric", "exact", "--batch_size", "0"]) == 1
    assert capsys.readouterr().err == ("fila-train eval: error: --batch_size, --max_new_tokens and --limit must be "
                                       "positive\n")


def test_short_answer_instruction():
    assert with_instruction("What?", SHORT_ANSWER_PROMPT) == f"What?\n{SHORT_ANSWER_PROMPT}"
    assert with_instruction(f"What?\n{SHORT_ANSWER_PROMPT}", SHORT_ANSWER_PROMPT) == f"What?\n{SHORT_ANSWER_PROMPT}"
    assert with_instruction("What?", None) == "What?"


@pytest.mark.parametrize("line, field, metric", [
    ('{"id": "a", "image": "x.png", "question": "q?", "answers": "yes"}', "'answers'", "exact"),
    ('{"id": "a", "image": "x.png", "question": "q?", "answers": []}', "'answers'", "exact"),
    ('{"id": "a", "image": "x.png", "question": "q?", "answers": ["yes"]}', "'answers'.*needs 10", "vqa"),
    ('{"id": "a", "image": "x.png", "answers": ["yes"]}', "'question'", "exact"),
    ('{"image": "x.png", "question": "q?", "answers": ["yes"]}', "'id'", "exact"),
    ('{"id": "a", "image": ["x.png"], "question": "q?", "answers": ["yes"]}', "'image'", "exact"),
    ('{"id": "a", "image": "../x.png", "question": "q?", "answers": ["yes"]}', "'image'.*escapes", "exact"),
    ('{"id": "a", "image": "x.png", "question": "q?", "answers": ["yes"]}', "'image'.*not found: .*x.png", "exact"),
    ('{"id": "first", "question": "q?", "answers": ["yes"]}', "'id'.*already used at .*bench.jsonl:1", "exact"),
    ('{"id": "a", "question": "q?", "answers": ["yes"]', "malformed JSON", "exact"),
])
def test_bad_bench_records_name_file_line_and_field(tmp_path, line, field, metric):
    good = {"id": "first", "question": "q?", "answers": ["yes"] * 10}
    path = write_jsonl(tmp_path / "bench.jsonl", [good, line])
    with pytest.raises(ValueError, match=f"bench.jsonl:2.*{field}"):
        read_bench(path, get_metric(metric), tmp_path)


def test_image_without_image_folder(tmp_path):
    path = write_jsonl(tmp_path / "bench.jsonl", [{"id": 1, "image": "x.png", "question": "q?", "answers": ["a"]}])
    with pytest.raises(BenchError, match="bench.jsonl:1: field 'image'.*no --image_folder"):
        read_bench(path, get_metric("exact"), None)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    assert read_bench(path, get_metric("exact"), tmp_path, limit=1)[0].id == "1"
