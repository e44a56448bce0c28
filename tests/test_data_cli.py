"""`fila-train data inspect` and a 2-process run on a mixture with bad records skipped and counted."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from distributed_utils import run_distributed
from fila_train.cli import main as cli_main
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.processing.chat_templates import get_template


def broken_source(folder: Path, image_folder: Path) -> Path:
    """Three good records and three bad ones (missing image, corrupt image, malformed JSON), with
    images in ``folder/images`` (the shared assets' image folder must stay clean for other tests)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    good_image = sorted(p.name for p in image_folder.iterdir())[0]
    shutil.copy(image_folder / good_image, images / good_image)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    def rec(record_id: str, image: str) -> str:
        return json.dumps({"id": record_id, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is the title?"}, {"from": "gpt", "value": "A form."}]})

    lines = [rec("ok-1", good_image), rec("lost-1", "no_such.png"), rec("ok-2", good_image),
             rec("corrupt-1", "corrupt.png"), '{"id": "cut-1", "conversations": [', rec("ok-3", good_image)]
    path = folder / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mixture(tmp_path: Path, assets, with_broken: bool) -> Path:
    sources = [{"name": "instructions", "annotations": str(assets.stage2_data), "image_root": str(assets.image_folder),
                "repeat": 1.0}]
    if with_broken:
        sources.append({"name": "broken", "annotations": str(broken_source(tmp_path / "broken", assets.image_folder)),
                        "image_root": str(tmp_path / "broken" / "images"), "repeat": 3.0})
    path = tmp_path / "mix.yaml"
    path.write_text(json.dumps({"seed": 11, "sources": sources}))  # JSON is YAML
    return path


def inspect(assets, spec: Path, tmp_path: Path, *extra: str, encoder: str = "fila_hybrid") -> tuple[int, dict]:
    report = tmp_path / "report.json"
    hybrid = encoder == "fila_hybrid"
    flags = assets.model_flags(hybrid=hybrid, fuser=False)
    argv = ["data", "inspect", str(spec), "--model_name_or_path", flags["model_name_or_path"],
            "--vision_tower", flags["vision_tower"], "--vision_encoder", encoder,
            *(["--anyres_canvases", flags["anyres_canvases"]] if hybrid else []),
            "--model_max_length", "300", "--output", str(report), *extra]
    code = cli_main(argv)
    return code, json.loads(report.read_text())


def table_row(output: str, source: str) -> dict[str, str]:
    """The printed report table's row of ``source``, keyed by column header."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("source "))
    row = next(line for line in lines[header:] if line.split()[0] == source)
    return dict(zip(re.split(r"\s{2,}", lines[header].strip()), re.split(r"\s{2,}", row.strip())))


def test_inspect_reports_each_source_and_fails_on_bad_records(tiny_assets, tmp_path: Path, capsys) -> None:
    code, report = inspect(tiny_assets, write_mixture(tmp_path, tiny_assets, with_broken=True), tmp_path)
    out = capsys.readouterr()
    assert code == 1
    broken = next(s for s in report["sources"] if s["name"] == "broken")
    assert broken["records"] == 6 and broken["sampled"] == 18
    assert broken["error_kinds"] == {"missing_image": 1, "unreadable_image": 1, "malformed_json": 1}
    path = tmp_path / "broken" / "broken.jsonl"
    for fragment in (f"{path}:2 (id 'lost-1')", f"{path}:4 (id 'corrupt-1')", f"{path}:5: malformed JSON"):
        assert fragment in out.err, out.err
    good = next(s for s in report["sources"] if s["name"] == "instructions")
    assert good["errors"] == [] and good["with_images"] + good["text_only"] == good["records"]
    assert 0 < good["token_percentiles"]["p50"] <= good["token_percentiles"]["max"]
    assert good["image_width_percentiles"]["max"] > 0
    row = table_row(out.out, "broken")
    assert (row["errors"], row["missing img"], row["unreadable img"]) == ("3", "1", "1"), out.out


def test_inspect_without_decoding_still_finds_bad_images_for_clip(tiny_assets, tmp_path: Path, capsys) -> None:
    # CLIP's token count does not depend on the image size, so nothing else would open the files.
    spec = write_mixture(tmp_path, tiny_assets, with_broken=True)
    code, report = inspect(tiny_assets, spec, tmp_path, "--decode", "false", encoder="clip")
    out = capsys.readouterr()
    assert code == 1
    broken = next(s for s in report["sources"] if s["name"] == "broken")
    # The corrupt file has no valid header; a truncated one would need --decode true.
    assert broken["error_kinds"] == {"missing_image": 1, "unreadable_image": 1, "malformed_json": 1}
    assert f"{tmp_path / 'broken' / 'broken.jsonl'}:2 (id 'lost-1')" in out.err
    assert table_row(out.out, "broken")["missing img"] == "1"
    good = next(s for s in report["sources"] if s["name"] == "instructions")
    assert good["errors"] == [] and good["image_width_percentiles"]["max"] > 0  # sizes from the headers

    # --max_image_pixels means what it means in training: here every image is over it.
    clean = write_mixture(tmp_path, tiny_assets, with_broken=False)
    code, report = inspect(tiny_assets, clean, tmp_path, "--decode", "false", "--max_image_pixels", "100",
                           encoder="clip")
    assert code == 1
    assert report["sources"][0]["error_kinds"] == {"image_too_large": good["with_images"]}
    assert "over the limit of 100" in capsys.readouterr().err


def test_inspect_reports_files_that_are_no_image_and_does_not_crash(tiny_assets, tmp_path: Path, capsys) -> None:
    # A zero-byte file, a directory and a symlink loop where images should be: each is a bad record.
    images = tmp_path / "odd" / "images"
    images.mkdir(parents=True)
    good_image = sorted(p.name for p in tiny_assets.image_folder.iterdir())[0]
    shutil.copy(tiny_assets.image_folder / good_image, images / good_image)
    (images / "empty.png").touch()
    (images / "folder.png").mkdir()
    (images / "loop_a.png").symlink_to("loop_b.png")
    (images / "loop_b.png").symlink_to("loop_a.png")
    lines = [json.dumps({"id": record_id, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A form."}]})
        for record_id, image in [("ok-1", good_image), ("zero-1", "empty.png"), ("dir-1", "folder.png"),
                                 ("loop-1", "loop_a.png")]]
    annotations = tmp_path / "odd" / "odd.jsonl"
    annotations.write_text("\n".join(lines) + "\n")
    spec = tmp_path / "odd.yaml"
    spec.write_text(json.dumps({"seed": 1, "sources": [{"name": "odd", "annotations": str(annotations),
                                                        "image_root": str(images)}]}))
    code, report = inspect(tiny_assets, spec, tmp_path)
    out = capsys.readouterr()
    assert code == 1
    source = report["sources"][0]
    assert source["error_kinds"] == {"unreadable_image": 2, "missing_image": 1}
    assert source["with_images"] == 1
    for fragment in (f"{annotations}:2 (id 'zero-1'): field 'image': unreadable image {images / 'empty.png'}: "
                     "empty file (0 bytes)",
                     f"{annotations}:3 (id 'dir-1'): field 'image': image path {images / 'folder.png'} is a directory",
                     f"{annotations}:4 (id 'loop-1'): field 'image': unreadable image {images / 'loop_a.png'}: "
                     "symlink loop"):
        assert fragment in out.err, out.err
    row = table_row(out.out, "odd")
    assert (row["errors"], row["missing img"], row["unreadable img"]) == ("3", "1", "2"), out.out


def test_inspect_lengths_match_the_dataset_and_clean_mix_passes(tiny_assets, tmp_path: Path) -> None:
    from fila_train.data.dataset import DatasetOptions
    from fila_train.data.mixed_dataset import MixtureDataset
    from fila_train.data.mixture import load_mixture
    from fila_train.model.builder import build_model, load_tokenizer

    spec = write_mixture(tmp_path, tiny_assets, with_broken=False)
    code, report = inspect(tiny_assets, spec, tmp_path)
    assert code == 0 and report["errors"] == 0
    # The same numbers as the samples the real model-side processor builds.
    flags = tiny_assets.model_flags(hybrid=True, fuser=False)
    from fila_train.training.arguments import ModelArguments
    model_args = ModelArguments(**{k: v for k, v in flags.items()})
    model = build_model(model_args.model_name_or_path, model_args.vision_tower, vision_encoder="fila_hybrid",
                        vision_options=model_args.vision_options())
    tokenizer = load_tokenizer(model_args.model_name_or_path, model, 2048)
    conversations = ConversationTokenizer(tokenizer, get_template("vicuna_v1"), model.config.image_token_id)
    dataset = MixtureDataset(load_mixture(spec), conversations, model.image_processor(), DatasetOptions(2048))
    source = dataset.sources[0]
    lengths = sorted(len(source.build(i)["input_ids"]) for i in range(len(source)))
    assert report["sources"][0]["token_percentiles"]["max"] == lengths[-1]
    assert report["sources"][0]["over_max_length"] == sum(length > 300 for length in lengths)


STEPS, CHECKPOINT = 6, 3


def mixture_train_args(assets, spec: Path) -> list[str]:
    flags = assets.model_flags(hybrid=True, fuser=False)
    args = [f"--{k}={v}" for k, v in flags.items()]
    return args + ["--data_path", str(spec), "--conversation_template", "vicuna_v1",
                   "--tune_parts", "connector,cvfm,llm", "--learning_rate", "3e-3",
                   "--deepspeed", "zero_configs/zero2.json", "--per_device_train_batch_size", "2",
                   "--max_steps", str(STEPS), "--logging_steps", "1", "--model_max_length", "512",
                   "--save_strategy", "steps", "--save_steps", str(CHECKPOINT), "--seed", "7", "--report_to", "none",
                   "--on_bad_sample", "skip", "--group_by_modality_length", "--log_sample_ids",
                   "--dataloader_num_workers", "1"]


@pytest.fixture(scope="module")
def mixture_run(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture_run")
    spec = write_mixture(root, tiny_assets, with_broken=True)
    args = mixture_train_args(tiny_assets, spec) + ["--length_cache_dir", str(root / "lengths")]
    return args, run_distributed(args, root / "run")


# Resuming such a run (mixture, skipped records, grouping, workers) is test_crash_safety.py's kill chain.
def test_mixture_run_skips_and_counts_bad_records_across_workers_and_ranks(mixture_run) -> None:
    _, run = mixture_run
    summary = run.summary()
    assert summary["steps"] == STEPS
    skipped = summary["skipped"]
    assert set(skipped) <= {"missing_image", "unreadable_image", "malformed_json"} and sum(skipped.values()) > 0
    plan = json.loads((run.output_dir / "data_plan.json").read_text())
    assert [s["name"] for s in plan["sources"]] == ["instructions", "broken"] and plan["sources"][1]["sampled"] == 18
    assert "skipped sample" in run.rank_log(0) + run.rank_log(1)
    # Every trained id is a real, usable record: none of the bad ones.
    ids = "".join((run.output_dir / "sample_ids" / f"rank{r}.txt").read_text() for r in range(2)).split()
    assert ids and not {"lost-1", "corrupt-1", "cut-1"} & set(ids)


def test_inspect_at_a_length_that_leaves_no_room_after_one_image_says_so_as_training_does(tiny_assets, tmp_path: Path,
                                                                                          capsys) -> None:
    """Training refuses such a --model_max_length before any weights load. Inspect, at its default 2048 with
    FILA's 2880-token images (the README's example once), reported every image record as over length, exit 0,
    as if the data were at fault."""
    flags = tiny_assets.model_flags(hybrid=True, fuser=False)
    argv = ["data", "inspect", str(write_mixture(tmp_path, tiny_assets, with_broken=False)), "--model_name_or_path",
            flags["model_name_or_path"], "--vision_tower", flags["vision_tower"], "--vision_encoder", "fila_hybrid",
            "--anyres_canvases", flags["anyres_canvases"], "--model_max_length", "12"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model_max_length 12 leaves no room for text after one "
                                               "image on "), err
