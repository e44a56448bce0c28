"""Mixture specs, the seeded sampling plan, real token lengths and the modality-length sampler."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fila_train.data.dataset import DatasetOptions
from fila_train.data.lengths import source_lengths
from fila_train.data.mixed_dataset import MixtureDataset
from fila_train.data.mixture import MixtureError, load_mixture, resolve_plan, select
from fila_train.data.sampler import ModalityLengthGroupedSampler
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.model.vision.anyres import AnyresConfig
from fila_train.model.vision.hybrid_encoder import HybridImageProcessor
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.processing.chat_templates import get_template
from fila_train.utils.errors import ConfigError
from test_dataset import PROCESSOR, record, tokenizer  # noqa: F401  (tokenizer is a fixture)


def write_source(folder: Path, name: str, count: int, with_images: bool = True) -> None:
    """``folder/name/train.jsonl`` with ``count`` records (images of varied shapes) and its images."""
    (folder / name / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        image = None
        if with_images:
            image = f"{index}.png"
            Image.new("RGB", (28 * (1 + index % 3), 28), (index % 255, 40, 90)).save(folder / name / "images" / image)
        lines.append(json.dumps(record(f"{name}-{index}", answer="word " * (1 + index % 7), images=image)))
    (folder / name / "train.jsonl").write_text("\n".join(lines) + "\n")


def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


MIX = """
seed: 3
root: data
sources:
  - name: docs
    annotations: docs/train.jsonl
    image_root: docs/images
    repeat: 2.5
  - name: charts
    annotations: [charts/train.jsonl]
    image_root: charts/images
    samples: 7
  - name: text
    annotations: text/train.jsonl
    repeat: 0.5
"""


@pytest.fixture
def mixture_dir(tmp_path: Path) -> Path:
    write_source(tmp_path / "data", "docs", 10)
    write_source(tmp_path / "data", "charts", 4)
    write_source(tmp_path / "data", "text", 9, with_images=False)
    write_spec(tmp_path / "mix.yaml", MIX)
    return tmp_path


def test_plan_counts_follow_each_rule(mixture_dir: Path) -> None:
    spec = load_mixture(mixture_dir / "mix.yaml")
    plan = resolve_plan(spec, [10, 4, 9])
    assert [(s.name, s.records, s.sampled) for s in plan.sources] == [
        ("docs", 10, 25), ("charts", 4, 7), ("text", 9, 4)]  # 2.5 x 10; 7; round(0.5 x 9) = 4
    docs = plan.record_of[plan.source_of == 0]
    assert np.bincount(docs, minlength=10).tolist().count(3) == 5  # every record twice, a random half thrice
    assert set(np.bincount(docs, minlength=10).tolist()) == {2, 3}
    charts = plan.record_of[plan.source_of == 1]
    assert set(np.bincount(charts, minlength=4).tolist()) <= {1, 2} and len(charts) == 7
    text = plan.record_of[plan.source_of == 2]
    assert len(set(text.tolist())) == 4  # subsampled without replacement


def test_plan_is_seeded_and_keyed_by_source_name(mixture_dir: Path) -> None:
    spec = load_mixture(mixture_dir / "mix.yaml")
    first, again = resolve_plan(spec, [10, 4, 9]), resolve_plan(spec, [10, 4, 9])
    assert (first.record_of == again.record_of).all() and (first.source_of == again.source_of).all()
    # Dropping a source does not change what the others select.
    reordered = write_spec(mixture_dir / "two.yaml", MIX.replace("""  - name: docs
    annotations: docs/train.jsonl
    image_root: docs/images
    repeat: 2.5
""", ""))
    other = resolve_plan(load_mixture(reordered), [4, 9])
    assert (other.record_of[other.source_of == 1] == first.record_of[first.source_of == 2]).all()
    reseeded = resolve_plan(load_mixture(write_spec(mixture_dir / "s.yaml", MIX.replace("seed: 3", "seed: 4"))),
                            [10, 4, 9])
    assert not (reseeded.record_of == first.record_of).all()


def test_weights_share_the_total(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "w.yaml", """
total: 100
sources:
  - {name: a, annotations: a.jsonl, weight: 3}
  - {name: b, annotations: b.jsonl, weight: 1}
  - {name: c, annotations: c.jsonl, repeat: 1}
""")
    plan = resolve_plan(load_mixture(spec_path), [10, 1000, 5])
    assert [s.sampled for s in plan.sources] == [75, 25, 5]
    assert plan.to_dict()["sources"][0]["rule"] == "weight: 3"


def test_equal_weights_fill_the_total_exactly(tmp_path: Path) -> None:
    """Before, each share was rounded on its own: three equal weights of a total of 100 gave 99 samples."""
    spec_path = write_spec(tmp_path / "w.yaml", "total: 100\nsources:\n" + "".join(
        f"  - {{name: {name}, annotations: {name}.jsonl, weight: 1}}\n" for name in "abc"))
    plan = resolve_plan(load_mixture(spec_path), [1000, 1000, 1000])
    assert [s.sampled for s in plan.sources] == [34, 33, 33] and len(plan) == 100


PLAIN_A = "sources:\n  - {name: a, annotations: a.jsonl}\n"


@pytest.mark.parametrize(("body", "records", "message"), [
    (PLAIN_A + "  - {name: empty, annotations: e.jsonl}\n", [100, 0], "source 'empty' has no records in"),
    (PLAIN_A + "  - {name: empty, annotations: e.jsonl, repeat: 2}\n", [100, 0], "source 'empty' has no records in"),
    (PLAIN_A + "  - {name: rare, annotations: r.jsonl, repeat: 0.01}\n", [100, 40],
     "source 'rare' (repeat: 0.01 of its 40 records) rounds to 0 samples"),
    ("total: 1000\nsources:\n  - {name: a, annotations: a.jsonl, weight: 1}\n"
     "  - {name: rare, annotations: r.jsonl, weight: 0.0004}\n", [5000, 5000],
     "source 'rare' (weight: 0.0004 of total 1000) rounds to 0 samples"),
], ids=["empty_file", "empty_file_repeated", "tiny_repeat", "tiny_weight"])
def test_a_source_that_would_add_nothing_is_an_error(tmp_path: Path, body: str, records: list[int],
                                                     message: str) -> None:
    """Before, an empty annotation file (under repeat, the default rule) or a share that rounds to nothing was
    sampled 0 times without a word, and the run trained without that source."""
    spec_path = write_spec(tmp_path / "m.yaml", body)
    with pytest.raises(MixtureError) as error:
        resolve_plan(load_mixture(spec_path), records)
    assert str(spec_path) in str(error.value) and message in str(error.value), str(error.value)


def test_select_repeats_and_subsamples() -> None:
    rng = np.random.default_rng(0)
    assert select(4, 8, rng).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    half = select(10, 5, rng)
    assert len(set(half.tolist())) == 5 and half.max() < 10


@pytest.mark.parametrize(("body", "message"), [
    ("sources: []", "non-empty list"),
    ("sources:\n  - {annotations: a.jsonl}", "sources[0]: field 'name' is required"),
    ("sources:\n  - {name: a}", "source 'a': field 'annotations' is required"),
    ("sources:\n  - {name: a, annotations: a.jsonl, repeat: 1, samples: 3}", "one sampling rule"),
    ("sources:\n  - {name: a, annotations: a.jsonl, weight: 1}", "needs a top-level 'total'"),
    ("sources:\n  - {name: a, annotations: a.jsonl, repeat: -1}", "field 'repeat': must be > 0"),
    ("sources:\n  - {name: a, annotations: a.jsonl, samples: 2.5}", "field 'samples': must be an integer"),
    ("sources:\n  - {name: a, annotations: a.jsonl, repeats: 2}", "unknown field(s) ['repeats']"),
    ("sources:\n  - {name: a, annotations: a.jsonl, template: vicuna}", "unknown template 'vicuna'"),
    ("sources:\n  - {name: a, annotations: a.jsonl}\n  - {name: a, annotations: b.jsonl}", "more than once"),
    ("sources: [", "not valid YAML"),
    # Before, these passed the checks and stopped the plan with a numpy/int() traceback (after the weights loaded).
    ("sources:\n  - {name: a, annotations: a.jsonl, repeat: .nan}", "field 'repeat': must be a finite number"),
    ("sources:\n  - {name: a, annotations: a.jsonl, repeat: .inf}", "field 'repeat': must be a finite number"),
    ("total: 10\nsources:\n  - {name: a, annotations: a.jsonl, weight: .inf}", "field 'weight': must be a finite"),
    ("seed: -1\nsources:\n  - {name: a, annotations: a.jsonl}", "field 'seed' must be an integer >= 0, got -1"),
    ("root: [data]\nsources:\n  - {name: a, annotations: a.jsonl}", "field 'root' must be a path, got ['data']"),
])
def test_bad_spec_names_file_source_and_field(tmp_path: Path, body: str, message: str) -> None:
    path = write_spec(tmp_path / "bad.yaml", body)
    with pytest.raises(MixtureError) as error:
        load_mixture(path)
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)


@pytest.mark.parametrize(("body", "message"), [
    ("sources:\n  - {name: a, annotations: a.jsonl}\nsources:\n  - {name: b, annotations: b.jsonl}\n",
     "line 3: field 'sources' appears twice"),
    ("sources:\n  - name: a\n    annotations: a.jsonl\n    repeat: 2\n    repeat: 0.5\n",
     "line 5: field 'repeat' appears twice"),
], ids=["sources", "rule"])
def test_a_field_given_twice_is_an_error(tmp_path: Path, body: str, message: str) -> None:
    """YAML keeps the last of two equal keys: before, a second 'sources:' block silently dropped every source of
    the first, and a source's second rule silently replaced its first."""
    path = write_spec(tmp_path / "twice.yaml", body)
    with pytest.raises(MixtureError) as error:
        load_mixture(path)
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)


def test_shipped_mixtures_parse() -> None:
    repo = Path(__file__).resolve().parents[1]
    for name in ("stage1_captions.yaml", "stage2_doc_ocr.yaml"):
        spec = load_mixture(repo / "data" / name)
        assert spec.sources and all("playground/data" in str(s.annotations[0]) for s in spec.sources)


# ------------------------------------------------------------------------------------------------
# the dataset over a mixture: per-source roots, templates and canvas overrides; lengths
# ------------------------------------------------------------------------------------------------
def hybrid_processor() -> HybridImageProcessor:
    return HybridImageProcessor(AnyresConfig(tile_size=28, canvases=((28, 56), (56, 28), (56, 56), (84, 28))))


def mixture_dataset(mixture_dir: Path, tokenizer, processor=PROCESSOR, spec_name: str = "mix.yaml"):
    conversations = ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID)
    return MixtureDataset(load_mixture(mixture_dir / spec_name), conversations, processor, DatasetOptions(max_length=2048))


def test_mixture_dataset_reads_every_source_from_its_root(mixture_dir: Path, tokenizer) -> None:
    dataset = mixture_dataset(mixture_dir, tokenizer)
    assert len(dataset) == 36
    sources = {dataset[i]["source"] for i in range(len(dataset))}
    assert sources == {"docs", "charts", "text"}
    text = next(i for i in range(len(dataset)) if dataset.plan.source_of[i] == 2)
    assert dataset[text]["images"] == [] and dataset[text]["id"].startswith("text-")


@pytest.mark.parametrize("processor", [PROCESSOR, hybrid_processor()], ids=["clip", "anyres"])
def test_lengths_are_real_token_counts_with_modality_sign(mixture_dir: Path, tokenizer, processor,
                                                          tmp_path: Path) -> None:
    dataset = mixture_dataset(mixture_dir, tokenizer, processor)
    lengths = dataset.lengths(tmp_path / "cache")
    for position in range(len(dataset)):
        sample = dataset[position]
        expected = len(sample["input_ids"]) * (1 if sample["images"] else -1)
        assert lengths[position] == expected, (position, sample["id"])
    # Cached: a second call reads the files instead of tokenizing.
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 3
    docs = dataset.sources[0]
    np.save(cached[[p.name.startswith("docs") for p in cached].index(True)], np.full(len(docs), 123))
    assert (source_lengths(docs, tmp_path / "cache") == 123).all()


def test_the_length_cache_is_as_readable_as_the_umask_allows(mixture_dir: Path, tokenizer, tmp_path: Path) -> None:
    """Teammates on a shared cluster reuse the cache: 0644 under umask 022, not tempfile's 0600."""
    docs = mixture_dataset(mixture_dir, tokenizer).sources[0]
    previous = os.umask(0o022)
    try:
        lengths = source_lengths(docs, tmp_path / "cache")
    finally:
        os.umask(previous)
    (cached,) = (tmp_path / "cache").iterdir()  # no temp file left beside it
    assert cached.suffix == ".npy" and stat.S_IMODE(cached.stat().st_mode) == 0o644, oct(cached.stat().st_mode)
    assert (np.load(cached) == lengths).all()


def test_a_skipping_runs_length_cache_does_not_let_a_bad_record_through_under_error(tmp_path: Path,
                                                                                     tokenizer) -> None:
    """The cache is shared by runs of either policy. A skipping run writes a bad record's length as 0; before, a
    later run with --on_bad_sample error (the default) read that cache, let the record through its up-front check
    and met it mid-epoch."""
    from fila_train.data.dataset import ConversationDataset, SampleError

    write_source(tmp_path, "docs", 6)
    (tmp_path / "docs" / "images" / "4.png").unlink()

    def source(policy: str) -> ConversationDataset:
        return ConversationDataset(tmp_path / "docs" / "train.jsonl", tmp_path / "docs" / "images",
                                   ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID),
                                   PROCESSOR, DatasetOptions(max_length=2048, on_bad_sample=policy))

    skipping = source_lengths(source("skip"), tmp_path / "cache")
    assert skipping[4] == 0 and (np.delete(skipping, 4) > 0).all()
    with pytest.raises(SampleError, match=r"train.jsonl:5 .*field 'image'"):
        source_lengths(source("error"), tmp_path / "cache")
    assert (source_lengths(source("skip"), tmp_path / "cache") == skipping).all()  # still its cache


def test_the_length_cache_is_not_read_by_a_run_that_refuses_absolute_paths(tmp_path: Path, tokenizer) -> None:
    """A source's allow_absolute_paths turned off, nothing else changed: the run (--on_bad_sample error) read the
    lengths cached by the run that allowed them, its up-front check passed the record with an absolute image path,
    and the run met it mid-epoch."""
    from fila_train.data.dataset import ConversationDataset, SampleError

    write_source(tmp_path, "docs", 3)
    lines = (tmp_path / "docs" / "train.jsonl").read_text().splitlines()
    absolute = record("abs", images=str(tmp_path / "docs" / "images" / "0.png"))
    (tmp_path / "docs" / "train.jsonl").write_text("\n".join([*lines, json.dumps(absolute)]) + "\n")

    def source(allow: bool) -> ConversationDataset:
        return ConversationDataset(tmp_path / "docs" / "train.jsonl", tmp_path / "docs" / "images",
                                   ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID),
                                   PROCESSOR, DatasetOptions(max_length=2048), allow_absolute_paths=allow)

    assert (source_lengths(source(True), tmp_path / "cache") > 0).all()
    with pytest.raises(SampleError, match=r"train.jsonl:4 .*absolute image path"):
        source_lengths(source(False), tmp_path / "cache")


def test_source_overrides_canvases_and_template(mixture_dir: Path, tokenizer) -> None:
    spec = MIX.replace("    repeat: 2.5\n", "    repeat: 2.5\n    max_tiles: 2\n    template: plain\n")
    write_spec(mixture_dir / "over.yaml", spec)
    dataset = mixture_dataset(mixture_dir, tokenizer, hybrid_processor(), "over.yaml")
    docs = dataset.sources[0]
    assert docs.image_processor.anyres.canvases == ((28, 56), (56, 28))  # <= 2 tiles of the model's four
    assert docs.tokenizer.template.name == "plain" and dataset.sources[1].tokenizer.template.name == "vicuna_v1"
    sample = docs.build(2)  # 84x28 image: the capped set has no 3-tile canvas
    assert sample["images"][0]["pixel_values"].shape[0] <= 3
    write_spec(mixture_dir / "bad.yaml", MIX.replace("    repeat: 2.5\n", "    canvases: [112x112]\n"))
    with pytest.raises(MixtureError, match="not among the model's canvases"):
        mixture_dataset(mixture_dir, tokenizer, hybrid_processor(), "bad.yaml")
    with pytest.raises(MixtureError, match="no anyres canvases"):
        mixture_dataset(mixture_dir, tokenizer, PROCESSOR, "over.yaml")


# ------------------------------------------------------------------------------------------------
# modality-length grouped sampler
# ------------------------------------------------------------------------------------------------
def sampler_lengths() -> np.ndarray:
    rng = np.random.default_rng(5)
    image = rng.integers(50, 500, size=64)
    text = -rng.integers(5, 300, size=40)
    return rng.permutation(np.concatenate([image, text]))


def test_a_bad_record_found_before_training_is_its_own_line_when_workers_measure(tmp_path: Path, tokenizer,
                                                                                 monkeypatch) -> None:
    """The run's up-front measuring (training/datasets.py) of a source large enough for worker processes: the error
    is the record's line, as measured here, not the last line of the worker's traceback."""
    from fila_train.data import lengths
    from fila_train.data.mixture import single_source
    from fila_train.training.datasets import measured_on_each_node
    from fila_train.utils.errors import DataError, one_line

    write_source(tmp_path, "docs", 12)
    (tmp_path / "docs" / "images" / "5.png").unlink()
    dataset = MixtureDataset(single_source(tmp_path / "docs" / "train.jsonl", tmp_path / "docs" / "images"),
                             ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID),
                             hybrid_processor(), DatasetOptions(max_length=2048))
    with pytest.raises(Exception) as here:
        lengths.record_length(dataset.sources[0], 5)
    monkeypatch.setattr(lengths, "PARALLEL_FROM_RECORDS", 1)  # measured as a 5000-record source would be
    with pytest.raises(DataError) as found:
        measured_on_each_node(dataset, str(tmp_path / "cache"), local_main=True)
    assert one_line(found.value) == one_line(here.value) and "train.jsonl:6" in str(found.value), str(found.value)


def test_sampler_separates_modalities_and_groups_lengths() -> None:
    lengths = sampler_lengths()
    batch, world = 4, 2
    order = ModalityLengthGroupedSampler(lengths, batch, world, seed=1).order()
    assert sorted(order) == list(range(len(lengths)))
    steps = [order[i:i + batch * world] for i in range(0, len(order), batch * world)]
    full = steps[:-2]  # the last steps hold the pooled leftovers of both modalities
    for step in full:
        assert len({lengths[i] > 0 for i in step}) == 1  # one modality per step
    # Each rank's batch spans a narrow length band compared with random batching.
    spread = np.mean([np.ptp(np.abs(lengths[m[r * batch:(r + 1) * batch]])) for m in full for r in range(world)])
    rng = np.random.default_rng(0)
    random_spread = np.mean([np.ptp(np.abs(lengths[rng.choice(len(lengths), batch)])) for _ in range(200)])
    assert spread < random_spread / 4, (spread, random_spread)


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    lengths = sampler_lengths()
    sampler = ModalityLengthGroupedSampler(lengths, 4, 2, seed=1)
    first = list(sampler)
    assert list(ModalityLengthGroupedSampler(lengths, 4, 2, seed=1)) == first  # every rank agrees
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_worker_processes_measure_what_this_process_measures(tmp_path: Path, tokenizer, policy: str) -> None:
    """A large source is measured by DataLoader worker processes, in ordered batches: the same lengths as record
    by record in this process, the same zeros for skipped records, and under --on_bad_sample error the
    error of the first bad record, as one line naming it."""
    from fila_train.data.dataset import ConversationDataset
    from fila_train.data.lengths import LENGTHS_PER_BATCH, compute_lengths, record_length
    from fila_train.utils.errors import one_line

    write_source(tmp_path, "docs", LENGTHS_PER_BATCH + 40)
    for index in (3, LENGTHS_PER_BATCH + 7):  # one bad record in each of the first two batches
        (tmp_path / "docs" / "images" / f"{index}.png").unlink()
    annotations = tmp_path / "docs" / "train.jsonl"
    lines = annotations.read_text().splitlines()
    first_bad = json.loads(lines[3])
    first_bad["image"] = "sub\n3.png"  # an error message over several lines
    annotations.write_text("\n".join(lines[:3] + [json.dumps(first_bad)] + lines[4:]) + "\n")
    source = ConversationDataset(tmp_path / "docs" / "train.jsonl", tmp_path / "docs" / "images",
                                 ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID),
                                 hybrid_processor(), DatasetOptions(max_length=2048, on_bad_sample=policy))
    if policy == "skip":
        serial = [record_length(source, i) if i not in (3, LENGTHS_PER_BATCH + 7) else 0 for i in range(len(source))]
        assert compute_lengths(source, workers=2).tolist() == serial
        assert compute_lengths(source, workers=0).tolist() == serial
        return
    with pytest.raises(Exception) as serial_error:
        record_length(source, 3)
    with pytest.raises(Exception) as worker_error:
        compute_lengths(source, workers=2)
    assert "in DataLoader worker process" in str(worker_error.value)  # measured in a worker, not here
    assert one_line(worker_error.value) == one_line(serial_error.value)
    assert "train.jsonl:4" in one_line(worker_error.value) and "field 'image'" in one_line(worker_error.value)
    assert "sub 3.png" in one_line(worker_error.value)


def over_long_run(tmp_path: Path, tokenizer, on_overlong: str, long_answers: int):
    """A two-source mixture through the run's dataset build (training/datasets.py), --model_max_length 200:
    'short' fits; ``long_answers`` of the 4 records of 'pages' do not."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "ok.png")
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(record(f"s{k}", images="ok.png")) + "\n" for k in range(4)))
    (tmp_path / "pages.jsonl").write_text("".join(
        json.dumps(record(f"p{k}", images="ok.png", answer="word " * (80 if k < long_answers else 1))) + "\n"
        for k in range(4)))
    write_spec(tmp_path / "mix.yaml", "sources:\n  - {name: short, annotations: short.jsonl, image_root: images}\n"
                                      "  - {name: pages, annotations: pages.jsonl, image_root: images}\n")
    return build_run_dataset(tmp_path, tokenizer, {"on_overlong": on_overlong}, ["--model_max_length", "200"])


def build_run_dataset(tmp_path: Path, tokenizer, data_options: dict, flags: list[str]):
    """The run's dataset build (training/datasets.py) of ``tmp_path``/mix.yaml, its lengths cached in ``cache``."""
    from fila_train.processing.image_processing import FilaImageProcessor
    from fila_train.processing.processor import FilaProcessor
    from fila_train.training.arguments import DataArguments
    from fila_train.training.datasets import build_train_dataset
    from fila_train.training.train import parse_args

    data_args = DataArguments(data_path=str(tmp_path / "mix.yaml"), length_cache_dir=str(tmp_path / "cache"),
                              **data_options)
    args = parse_args(["--model_name_or_path", "llm", "--vision_tower", "clip", "--data_path", "mix.yaml",
                       "--output_dir", str(tmp_path / "out"), *flags])[2]
    processor = FilaProcessor(FilaImageProcessor(image_size=28, patch_size=14), tokenizer)
    return build_train_dataset(data_args, args, processor)


@pytest.mark.parametrize("on_overlong, long_answers, message", [
    # Before: the up-front pass measured the record and let it through; the run stopped when it was drawn.
    ("error", 1, r"pages.jsonl:1 \(id 'p0'\): \d+ tokens after image expansion exceed model_max_length 200 "
                 r"\(1 of the run's 8 samples do\)"),
    # Before: the plan said pages 50%, the run trained 0% of it (each draw replaced by a 'short' one), exit 0.
    ("drop", 4, r"source 'pages': all 4 of its samples exceed model_max_length 200 after image expansion \(the "
                r"shortest \d+ tokens\), so --on_overlong drop would replace every one"),
])
def test_over_long_samples_found_before_the_first_step_stop_the_run_there(tmp_path: Path, tokenizer, on_overlong: str,
                                                                          long_answers: int, message: str) -> None:
    from fila_train.utils.errors import DataError

    with pytest.raises(DataError, match=message):
        over_long_run(tmp_path, tokenizer, on_overlong, long_answers)


def test_over_long_samples_dropped_are_counted_by_source_before_the_first_step(tmp_path: Path, tokenizer,
                                                                              caplog) -> None:
    with caplog.at_level("WARNING", logger="fila_train.training.data_checks"):
        dataset = over_long_run(tmp_path, tokenizer, "drop", 3)
    assert len(dataset) == 8
    warned = [r.getMessage() for r in caplog.records if "model_max_length" in r.getMessage()]
    assert len(warned) == 1 and "pages: 3 of 4 (75%)" in warned[0] and "short" not in warned[0], warned


def test_a_source_whose_every_record_is_unusable_stops_a_skipping_run_before_the_first_step(tmp_path: Path,
                                                                                           tokenizer) -> None:
    """--on_bad_sample skip --group_by_modality_length, one source's image_root wrong: the up-front pass found all
    its records unusable and warned; the run then trained none of its plan share (each draw replaced by the other
    source), exit 0. A few bad records are skipped as asked; a whole source is a mistake in the spec."""
    from fila_train.utils.errors import DataError

    write_source(tmp_path / "data", "docs", 4)
    write_source(tmp_path / "data", "charts", 3)
    write_spec(tmp_path / "mix.yaml", "root: data\nsources:\n"
                                      "  - {name: docs, annotations: docs/train.jsonl, image_root: docs/images}\n"
                                      "  - {name: charts, annotations: charts/train.jsonl, image_root: charts/imgs}\n")
    def build():
        return build_run_dataset(tmp_path, tokenizer, {"on_bad_sample": "skip"}, ["--group_by_modality_length", "True"])

    with pytest.raises(DataError, match=r"source 'charts': all 3 of its samples are unusable records, so "
                                        r"--on_bad_sample skip would replace every one .*; the first: .*"
                                        r"charts/train.jsonl:1 .*image file not found: .*charts/imgs/0.png"):
        build()
    (tmp_path / "data" / "charts" / "images").rename(tmp_path / "data" / "charts" / "imgs")
    (tmp_path / "data" / "charts" / "imgs" / "1.png").unlink()
    # The refused run cached the source's records as unusable (0; the cache's key holds no image file). They are
    # measured again: before, the mended source's zeros stayed, grouped with text-only samples in every later run.
    charts = build().modality_lengths[4:]
    assert charts[1] == 0 and (charts[[0, 2]] > 0).all()  # its one bad record is skipped, as asked
    assert (build().modality_lengths[4:] == charts).all()  # and the cache holds what was measured


def test_a_sources_own_template_and_canvases_are_checked_before_any_weights(tiny_assets, tmp_path: Path) -> None:
    """A source's template the tokenizer cannot write, or canvases the model's encoder does not have, stopped the
    run only when the dataset was built: after the model's weights had loaded (minutes for a 7B under ZeRO-3)."""
    from transformers import LlamaTokenizer

    from distributed_utils import LLAMA2_DIR
    from fila_train.demo.tiny_models import save_tiny_llm
    from fila_train.training.before_weights import check_before_weights
    from fila_train.training.train import parse_args

    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"no Llama-2 SentencePiece tokenizer at {LLAMA2_DIR}")
    llm = save_tiny_llm(tmp_path / "llm", LlamaTokenizer.from_pretrained(str(LLAMA2_DIR)), hidden_size=16,
                        num_layers=1)
    source = (f"sources:\n  - name: docs\n    annotations: {tiny_assets.stage2_data}\n"
              f"    image_root: {tiny_assets.image_folder}\n")
    for override, message in (("    template: llama3\n", "template 'llama3' needs the special token"),
                              ("    canvases: [672x672]\n", "source 'docs' sets canvases/max_tiles, but the vision")):
        spec = write_spec(tmp_path / "mix.yaml", source + override)
        model_args, data_args, args = parse_args([
            "--model_name_or_path", str(llm), "--vision_tower", str(tiny_assets.clip), "--data_path", str(spec),
            "--conversation_template", "vicuna_v1", "--output_dir", str(tmp_path / "run"), "--tune_parts", "connector",
            "--model_max_length", "512"])
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_before_weights(model_args, args, data_args=data_args)
