"""Kill -9 at any moment: checkpoints are complete or absent, no worker outlives its launcher, and
``--resume_from_checkpoint latest`` reproduces the uninterrupted run (test_resume.py's reference)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distributed_utils import RESUME_STEPS as STEPS
from distributed_utils import run_distributed, start_torchrun
from fila_train.training.checkpoints import (MANIFEST, STAGING_DIR, CheckpointError, clear_staging, missing_parts,
                                             newest_complete, publish, resolve_resume, write_manifest)
from fila_train.data.mixture import MixtureSpec, SourceSpec, resolve_plan
from fila_train.training.resume_checks import BatchLayout, DataOrder, check_resume_data, check_resume_layout
from fila_train.training.deepspeed_config import partitions_optimizer_state
from test_dataset import tokenizer  # noqa: F401  (a fixture)
from test_resume import trained_ids

POLL = 0.005  # seconds between looks at the output folder: a tiny checkpoint takes far longer to write


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the run's unique output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if text in command and "zombie" not in state:
            found.append(int(entry.name))
    return found


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def kill_launcher_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """SIGKILL to the launcher's whole process group as soon as ``ready()`` (a run that never gets there
    ends first, or meets pytest's timeout)."""
    while not ready():
        assert process.poll() is None, f"the run ended before the kill:\n{process.stdout.read()[-3000:]}"
        time.sleep(POLL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def assert_no_orphans(output_dir: Path) -> None:
    """No worker outlives the launcher. Checked by what the folder holds, not by a clock: a surviving worker
    would go on training and append to its record log or write a checkpoint before it ends."""
    at_kill = tree(output_dir)
    while processes_mentioning(str(output_dir)):  # every process of the run ends, one way or another
        time.sleep(0.05)
    assert tree(output_dir) == at_kill, "a worker outlived its launcher and wrote after the kill"


def kill_at(args: list[str], output: Path, attempt: str, ready: Callable[[Path], bool]) -> None:
    """One attempt of the run, killed with its launcher at the moment ``ready`` says."""
    kill_launcher_when(start_torchrun(args, output, attempt=attempt), lambda: ready(output))
    assert_no_orphans(output)


def test_killed_between_saves_and_during_a_save_then_resumed_latest_reproduces_the_run(uninterrupted, tmp_path):
    """One run, killed twice with its launcher's process group (kill -9), resumed with `latest` each time,
    keeping at most one checkpoint (which must never go before the next is complete):
    1. right after checkpoint-2 is complete (epoch 0);
    2. resumed from it, while checkpoint-6 is being written: no checkpoint-6 appears, checkpoint-4 (mid
       epoch 1, where the grouped order must be epoch 1's) is kept;
    3. resumed from checkpoint-4 to the end: the losses and records equal the uninterrupted run's."""
    args, full = uninterrupted[0] + ["--save_total_limit", "1", "--resume_from_checkpoint", "auto"], uninterrupted[1]
    output = tmp_path / "run"
    kill_at(args, output, "_attempt1", lambda out: (out / "checkpoint-2").exists())
    kill_at(args, output, "_attempt2", lambda out: (out / STAGING_DIR / "checkpoint-6").exists())
    assert not (output / "checkpoint-6").exists() and not (output / "checkpoint-2").exists()
    assert missing_parts(output / "checkpoint-4") == []
    assert missing_parts(output / STAGING_DIR / "checkpoint-6") == [f"{MANIFEST} (its save did not finish)"]
    with pytest.raises(CheckpointError, match=f"checkpoint-6 is incomplete: missing {MANIFEST}.*"
                                              f"the newest complete checkpoint there is {output / 'checkpoint-4'}"):
        resolve_resume(str(output / STAGING_DIR / "checkpoint-6"), output)

    resumed = run_distributed(args, output, attempt="_attempt3")
    log = resumed.rank_log(0)
    assert f"resuming from {output / 'checkpoint-4'}, the newest complete checkpoint" in log, log[-3000:]
    assert f"skipped incomplete checkpoint(s): {output / STAGING_DIR / 'checkpoint-6'} (missing {MANIFEST}" in log
    step = 4
    expected, got = full.summary()["losses"][step:], resumed.summary()["losses"][step:]
    assert len(got) == STEPS - step and got == pytest.approx(expected, rel=1e-5, abs=1e-6), (got, expected)
    for rank in (0, 1):  # the killed attempts logged their records first: the last attempt's end the file
        tail = trained_ids(resumed, rank)[-(STEPS - step) * 2:]
        assert tail == trained_ids(full, rank)[step * 2:], rank
    second = (output.parent / "run_attempt2_logs").rglob("attempt_0/0/std*.log")
    assert any(f"resuming from {output / 'checkpoint-2'}" in p.read_text() for p in second)


# ------------------------------------------------------------------------------------------------
# the rules behind it, on folders made here
# ------------------------------------------------------------------------------------------------
def docs_and_charts(names=("docs", "charts"), seed: int = 0):
    """A real mixture plan: 30 docs, 20 of 50 charts drawn at random (by the seed and the source's name)."""
    return resolve_plan(MixtureSpec((SourceSpec(names[0], (Path("docs.jsonl"),)),
                                     SourceSpec(names[1], (Path("charts.jsonl"),), samples=20)), seed=seed), [30, 50])


ORDER = DataOrder.of(docs_and_charts(), sampler_seed=42, grouping_lengths=np.arange(50))


def checkpoint(folder: Path, files: dict[str, bytes], manifest: bool = True) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if manifest:
        write_manifest(folder, step=int(folder.name.split("-")[1]),
                       run_facts=BatchLayout(2, 4, 1).manifest_fields() | ORDER.manifest_fields())
    return folder


def test_a_checkpoint_missing_a_shard_or_cut_short_is_incomplete(tmp_path):
    folder = checkpoint(tmp_path / "checkpoint-4", {"global_step4/a.pt": b"x" * 10, "trainer_state.json": b"{}"})
    assert missing_parts(folder) == []
    (folder / "global_step4" / "a.pt").write_bytes(b"x" * 4)
    assert missing_parts(folder) == ["global_step4/a.pt (4 of 10 bytes)"]
    (folder / "trainer_state.json").unlink()
    assert "trainer_state.json" in missing_parts(folder)
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is incomplete: missing global_step4/a\.pt.*trainer_state"):
        resolve_resume(str(folder), tmp_path)


def test_latest_takes_the_newest_complete_checkpoint_and_names_the_rest(tmp_path, caplog):
    checkpoint(tmp_path / "checkpoint-2", {"a": b"1"})
    checkpoint(tmp_path / "checkpoint-10", {"a": b"1"})  # newer by step, not by name
    checkpoint(tmp_path / "checkpoint-12", {"a": b"1"}, manifest=False)  # written by an older version, or cut
    (tmp_path / STAGING_DIR).mkdir()
    checkpoint(tmp_path / STAGING_DIR / "checkpoint-14", {"a": b"1"}, manifest=False)
    with caplog.at_level("INFO"):
        assert resolve_resume("latest", tmp_path) == str(tmp_path / "checkpoint-10")
    assert f"{tmp_path / STAGING_DIR / 'checkpoint-14'} (missing {MANIFEST}" in caplog.text
    assert f"{tmp_path / 'checkpoint-12'} (missing {MANIFEST}" in caplog.text
    with pytest.raises(CheckpointError, match=f"the newest complete checkpoint there is {tmp_path / 'checkpoint-10'}"):
        resolve_resume(str(tmp_path / STAGING_DIR / "checkpoint-14"), tmp_path)
    with pytest.raises(CheckpointError, match="is a run folder, not a checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)
    empty = tmp_path / "empty"
    (empty / STAGING_DIR / "checkpoint-2").mkdir(parents=True)  # the first save was killed
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        resolve_resume("latest", empty)
    assert resolve_resume("auto", empty) is None  # a requeued job that never saved starts from scratch
    (empty / "checkpoint-4").mkdir()  # but one whose checkpoints are all broken does not start over
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*incomplete: .*checkpoint-4"):
        resolve_resume("auto", empty)


def test_transformers_true_means_latest_and_a_finished_runs_folder_is_named_as_such(tmp_path):
    """transformers' --resume_from_checkpoint True (LLaVA's train.py resumes with True) means the newest checkpoint
    of --output_dir; before, it was read as a folder named "True", "incomplete: missing the folder itself". A
    finished run's folder (its final save, no checkpoint-N) was "missing checkpoint_manifest.json (its save did not
    finish)"."""
    checkpoint(tmp_path / "checkpoint-2", {"a": b"1"})
    assert resolve_resume("True", tmp_path) == resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-2")
    finished = tmp_path / "finished"
    finished.mkdir()
    for name in ("config.json", "model.safetensors", "train_summary.json"):
        (finished / name).write_text("{}")
    with pytest.raises(CheckpointError, match=f"{finished} is a finished run's final save, not a checkpoint: it "
                                              f"holds no optimizer or schedule to resume; start a new run from its "
                                              f"weights \\(--model_name_or_path {finished}\\)"):
        resolve_resume(str(finished), tmp_path)
    # A rerun into a folder with checkpoints: "resume it" for a stopped run, "another folder" for a finished one.
    from fila_train.training.checkpoints import refuse_start_over

    with pytest.raises(CheckpointError, match="holds checkpoint-2 of an earlier run, .*--resume_from_checkpoint latest"):
        refuse_start_over(tmp_path)
    (tmp_path / "train_summary.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds a finished run \(train_summary.json\) and its checkpoint-2, "
                                              r"which this run would rotate out as it saves: give another --output_dir"):
        refuse_start_over(tmp_path)
    refuse_start_over(finished)  # a final save without checkpoint-N folders: the rerun overwrites it, as LLaVA's


def test_checkpoints_written_before_manifests_still_resume(tmp_path):
    """A checkpoint-N under its final name with its trainer state (written last) but no manifest comes
    from an older fila_train or plain transformers; one without the state was cut short."""
    legacy = checkpoint(tmp_path / "checkpoint-6", {"trainer_state.json": b"{}", "global_step6/a.pt": b"1"},
                        manifest=False)
    checkpoint(tmp_path / "checkpoint-8", {"global_step8/a.pt": b"1"}, manifest=False)
    assert resolve_resume(str(legacy), tmp_path) == str(legacy)
    assert resolve_resume("latest", tmp_path) == str(legacy)
    (tmp_path / STAGING_DIR).mkdir()
    staged = checkpoint(tmp_path / STAGING_DIR / "checkpoint-10", {"trainer_state.json": b"{}"}, manifest=False)
    assert missing_parts(staged) == [f"{MANIFEST} (its save did not finish)"]  # staged: never complete


def test_the_resume_layout_rules(tmp_path):
    """The 2-process runs in test_distributed.py show the refusals end to end; here, where they do not apply."""
    folder = checkpoint(tmp_path / "checkpoint-4", {"a": b"1"})  # 2 processes x 4 per device x 1 step: 8
    check_resume_layout(folder, BatchLayout(1, 4, 2), partitioned_optimizer=False)  # DDP, or ZeRO-0: any count
    check_resume_layout(folder, BatchLayout(8, 1, 1), partitioned_optimizer=False)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) and this run has 1"):
        check_resume_layout(folder, BatchLayout(1, 4, 2), partitioned_optimizer=True)
    with pytest.raises(CheckpointError, match=r"global batch of 8 .*this run's is 16 .*wrong place in the data$"):
        check_resume_layout(folder, BatchLayout(2, 8, 1), partitioned_optimizer=True)  # 8 is not a multiple of 16
    check_resume_layout(folder, BatchLayout(2, 8, 1), partitioned_optimizer=True, check_batch=False)  # no skip
    # --auto_find_batch_size: the trainer restores the checkpoint's batch per process, the rest must fit it.
    check_resume_layout(folder, BatchLayout(2, 32, 1), partitioned_optimizer=True, batch_from_checkpoint=True)
    with pytest.raises(CheckpointError, match=r"this run's is 16 \(2 process\(es\) x 4 per process x 2 accumulation"):
        check_resume_layout(folder, BatchLayout(2, 32, 2), partitioned_optimizer=True, batch_from_checkpoint=True)
    legacy = checkpoint(tmp_path / "checkpoint-6", {"trainer_state.json": b"{}"}, manifest=False)
    check_resume_layout(legacy, BatchLayout(3, 5, 7), partitioned_optimizer=True)  # nothing recorded to check
    # The previous version's manifests record the process count alone: that much is checked.
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["train_batch_size"], manifest["gradient_accumulation_steps"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    check_resume_layout(folder, BatchLayout(2, 9, 9), partitioned_optimizer=True)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) and this run has 4"):
        check_resume_layout(folder, BatchLayout(4, 4, 1), partitioned_optimizer=True)
    assert [partitions_optimizer_state(config) for config in (
        {}, {"zero_optimization": {"stage": 0}}, {"zero_optimization": {"stage": 2}},
        {"zero_optimization": {"stage": 3}, "checkpoint": {"load_universal": True}})] == [False, False, True, False]


def test_the_resume_data_rules(tmp_path):
    """test_distributed.py shows the refusal end to end (other data, another seed); here, what counts."""
    folder = checkpoint(tmp_path / "checkpoint-4", {"a": b"1"})
    check_resume_data(folder, [DataOrder.of(docs_and_charts(), 42, np.arange(50))] * 2)  # the same, computed again
    moved = resolve_plan(MixtureSpec((SourceSpec("docs", (Path("/elsewhere/docs.jsonl"),), Path("/elsewhere")),
                                      SourceSpec("charts", (Path("/elsewhere/charts.jsonl"),), samples=20))),
                         [30, 50])
    check_resume_data(folder, [DataOrder.of(moved, 42, np.arange(50))])  # moved data: the same records, same order
    for changed in (DataOrder.of(docs_and_charts(("docs", "plots")), 42, np.arange(50)),  # another random subset
                    DataOrder.of(docs_and_charts(seed=1), 42, np.arange(50)),
                    DataOrder.of(docs_and_charts(), 7, np.arange(50)),  # the sampler's seed
                    DataOrder.of(docs_and_charts(), 42, None),  # ungrouped
                    DataOrder.of(docs_and_charts(), 42, np.arange(1, 51))):  # other lengths (template, tokenizer, images)
        with pytest.raises(CheckpointError, match=r"was trained on 50 samples \(docs: 30 of 30 records, charts: 20 of "
                                                  r"50 records; plan seed 0, selection [0-9a-f]{8}\), sampler seed 42, "
                                                  r"grouped by modality length \(lengths [0-9a-f]{8}\); this run's "
                                                  r"data is .* --ignore_data_skip to start the checkpoint's epoch of "
                                                  r"this data from its beginning$"):
            check_resume_data(folder, [changed])
    # One node measured other lengths (its own cache): every rank refuses, naming the rank.
    with pytest.raises(CheckpointError, match=r"this run's data \(rank 1's\) is 50 samples .*lengths [0-9a-f]{8}\): "):
        check_resume_data(folder, [ORDER, DataOrder.of(docs_and_charts(), 42, np.arange(1, 51))])
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["data_order"]  # a checkpoint of the previous version
    (folder / MANIFEST).write_text(json.dumps(manifest))
    check_resume_data(folder, [DataOrder.of(docs_and_charts(), 7, None)])


def test_a_resume_onto_its_file_reordered_or_replaced_is_refused(tmp_path, tokenizer):
    """The plan says which record index each position holds; the file says which record sits at that index.
    Before, a regenerated (reshuffled) annotation file of the same size resumed, exit 0, and trained some
    records twice in the epoch and others never."""
    from fila_train.data.dataset import DatasetOptions
    from fila_train.data.mixed_dataset import MixtureDataset
    from fila_train.data.mixture import single_source
    from fila_train.model.configuration import IMAGE_TOKEN_ID
    from fila_train.processing.chat_templates import get_template
    from fila_train.processing.tokenization import ConversationTokenizer
    from fila_train.training.datasets import data_order
    from fila_train.training.train import parse_args
    from test_dataset import PROCESSOR, record

    conversations = ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID)

    def order_of(lines: list[str], folder: Path) -> DataOrder:
        folder.mkdir()
        (folder / "data.jsonl").write_text("".join(lines))
        dataset = MixtureDataset(single_source(folder / "data.jsonl", None), conversations, PROCESSOR,
                                 DatasetOptions(256))
        return data_order(dataset, parse_args(["--model_name_or_path", "llm", "--data_path", "d.jsonl", "--seed",
                                               "42", "--output_dir", str(folder / "out")])[2])

    # More records than the 64 indices looked at: a shuffle moves records onto them.
    lines = [json.dumps(record(f"doc-{i}", answer=f"Answer {i}.")) + "\n" for i in range(200)]
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    write_manifest(folder, 4, order_of(lines, tmp_path / "first").manifest_fields())
    check_resume_data(folder, [order_of(lines, tmp_path / "moved")])  # the same file elsewhere
    for name, changed in (("shuffled", lines[100:] + lines[:100]), ("replaced", lines[:199] + [lines[0]])):
        with pytest.raises(CheckpointError, match=r"was trained on 200 samples .*records [0-9a-f]{8}\), sampler seed 42, ungrouped, random order; this run's .*"
                                                   r"the same records in the same order in each file"):
            check_resume_data(folder, [order_of(changed, tmp_path / name)])


def test_a_resume_in_another_sampling_order_or_epoch_length_is_refused(tmp_path, tokenizer):
    """--train_sampling_strategy sequential (in place of random) draws the checkpoint's epoch in another order, and
    --dataloader_drop_last another number of steps an epoch, so the checkpoint's step lands elsewhere in the data.
    Neither was recorded: such a resume went on, exit 0, training some records twice in the epoch and others never."""
    from fila_train.data.dataset import DatasetOptions
    from fila_train.data.mixed_dataset import MixtureDataset
    from fila_train.data.mixture import single_source
    from fila_train.model.configuration import IMAGE_TOKEN_ID
    from fila_train.processing.chat_templates import get_template
    from fila_train.processing.tokenization import ConversationTokenizer
    from fila_train.training.datasets import data_order
    from fila_train.training.train import parse_args
    from test_dataset import PROCESSOR, record

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(record(f"doc-{i}")) + "\n" for i in range(10)))
    dataset = MixtureDataset(single_source(tmp_path / "data.jsonl", None),
                             ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID), PROCESSOR,
                             DatasetOptions(256))

    def order(*flags: str) -> DataOrder:
        return data_order(dataset, parse_args(["--model_name_or_path", "llm", "--data_path", "d.jsonl",
                                               "--output_dir", str(tmp_path / "out"), *flags])[2])

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    write_manifest(folder, 4, order().manifest_fields())
    check_resume_data(folder, [order()])
    for flags, here in ((["--train_sampling_strategy", "sequential"], "sequential order"),
                        (["--dataloader_drop_last", "True"], "random order, last partial batch dropped")):
        with pytest.raises(CheckpointError, match=rf"was trained on .*, ungrouped, random order; this run's data is "
                                                  rf".*, ungrouped, {here}: "):
            check_resume_data(folder, [order(*flags)])


def test_the_resume_settings_rules(tmp_path):
    """test_distributed.py shows the refusal end to end; here, what counts: only what the checkpoint recorded."""
    from fila_train.training.resume_checks import check_resume_settings

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    write_manifest(folder, 4, {"settings": {"max_steps": 6, "tune_parts": ["connector"]}})
    check_resume_settings(folder, {"settings": {"max_steps": 6, "tune_parts": ["connector"], "added_later": 1}})
    with pytest.raises(CheckpointError, match=r"--max_steps: 6 there, 8 here\): a resume continues"):
        check_resume_settings(folder, {"settings": {"max_steps": 8, "tune_parts": ["connector"]}})
    write_manifest(folder, 4, {})  # written before settings were recorded
    check_resume_settings(folder, {"settings": {"max_steps": 8}})


def test_latest_prefers_the_most_recently_published_over_a_higher_abandoned_step(tmp_path):
    """Resumed from checkpoint-2 while checkpoint-6 of the abandoned attempt exists, the run publishes a
    new checkpoint-4: a requeue with `latest` continues this attempt, not the abandoned one."""
    checkpoint(tmp_path / "checkpoint-6", {"a": b"1"})
    time.sleep(0.01)
    newer = checkpoint(tmp_path / "checkpoint-4", {"a": b"1"})
    assert resolve_resume("latest", tmp_path) == str(newer)


def test_publishing_replaces_an_earlier_checkpoint_of_the_same_step_whole(tmp_path):
    old = checkpoint(tmp_path / "checkpoint-4", {"old_only": b"1", "shared": b"old"})
    (tmp_path / STAGING_DIR).mkdir()
    new = checkpoint(tmp_path / STAGING_DIR / "checkpoint-4", {"shared": b"new"})
    publish(new, old)
    assert sorted(p.name for p in old.iterdir()) == [MANIFEST, "shared"]
    assert (old / "shared").read_bytes() == b"new" and not new.exists()
    assert newest_complete(tmp_path) == (old, [])
    assert json.loads((old / MANIFEST).read_text())["files"] == {"shared": 3}


def test_the_next_save_of_a_step_removes_what_a_killed_save_or_publish_of_it_left(tmp_path):
    staging = tmp_path / STAGING_DIR
    for name in ("checkpoint-4", "checkpoint-4.publishing-123", "checkpoint-4.replaced-123", "checkpoint-40"):
        checkpoint(staging / name, {"a": b"1"}, manifest=False)
    clear_staging(staging / "checkpoint-4")
    assert [p.name for p in staging.iterdir()] == ["checkpoint-40"]  # another step's save is left alone


def test_resuming_from_the_last_checkpoint_trains_nothing_more(tiny_assets, tmp_path, capsys):
    """A requeued job that had finished (`auto` finds its last checkpoint) must not train past max_steps:
    the Trainer did one more step whenever that checkpoint fell inside an epoch. In-process, one rank."""
    from distributed_utils import first_records
    from fila_train.demo.tiny_models import as_cli
    from fila_train.training.train import parse_args, train

    flags = tiny_assets.model_flags(hybrid=False, fuser=False) | {
        "data_path": str(first_records(tiny_assets.stage1_data, tmp_path)), "image_folder": str(tiny_assets.image_folder),
        "conversation_template": "plain", "tune_parts": "connector", "per_device_train_batch_size": "2",
        "max_steps": "3", "logging_steps": "1", "model_max_length": "512", "save_strategy": "steps",
        "save_steps": "3", "report_to": "none", "output_dir": str(tmp_path / "run"), "seed": "5",
        "resume_from_checkpoint": "auto"}  # 8 records, 4 steps an epoch: step 3 is inside it
    first = train(*parse_args(as_cli(flags)))
    again = train(*parse_args(as_cli(flags)))
    assert "resuming from" in capsys.readouterr().err
    assert first["steps"] == again["steps"] == 3 and again["losses"] == first["losses"]
