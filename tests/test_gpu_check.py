"""scripts/gpu_check.sh, run as the GPU machine will run it, on the CPU with the tiny configurations: every
section runs (Liger and torch.compile, GPU-only here, are recorded as not run, with why), and one JSON + one markdown
table come out. The device lease is short, so wheels carried to the machine install offline into a folder of their
own, the files are rewritten after every row (a run killed at its limit keeps what it finished), and no row starts
past the time budget. The numbers themselves are the GPU's to give (docs/performance.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zipfile

from distributed_utils import REPO


def gpu_check(output, *options: str, **env: str) -> subprocess.Popen:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=os.environ.get("PYTHON", "python"), **env)
    environment["PATH"] = f"{REPO / '.venv' / 'bin'}:{environment['PATH']}"
    return subprocess.Popen(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--output", str(output), *options],
                            cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def probe_wheel(folder, name: str = "fila_carried_probe", version: str = "1.0"):
    """A pure-Python wheel built by hand (the format is a zip with its metadata): CI has no index to fetch one."""
    folder.mkdir()
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_gpu_check_runs_every_section_on_cpu_with_carried_wheels(tmp_path):
    probe_wheel(tmp_path / "wheels")
    finished(gpu_check(tmp_path / "out", WHEELS=str(tmp_path / "wheels"), TMPDIR=str(tmp_path)))
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["environment"]["carried"] == ["fila_carried_probe==1.0"]  # installed offline, without deps
    assert result["environment"]["packages"]["torch"] is not None
    rows = {(row["section"], row["name"]): row for row in result["rows"]}
    sections = {section for section, _ in rows}
    assert sections == {"batch search", "llava vs fila", "packing", "compile", "liger", "vision", "correctness"}
    assert result["rows"][0]["section"] == "correctness"  # the cheap row that makes the others meaningful runs first
    failed = {name for (section, name), row in rows.items() if not row["ok"]}
    # GPU-only rows say why they did not run
    assert failed == {"tiny-fila torch.compile", "tiny-fila liger", "tiny-fila flash_attention_2"}
    assert rows[("liger", "tiny-fila liger")]["error"].startswith("liger-kernel")
    fila, llava = rows[("batch search", "tiny-fila batch 2")], rows[("llava vs fila", "tiny-clip batch 2")]
    assert fila["batch_size"] == llava["batch_size"] and fila["median_step_seconds"] > 0
    padded, packed = rows[("packing", "tiny-fila sdpa padded")], rows[("packing", "tiny-fila sdpa packed")]
    assert packed["packing"] and packed["padding_fraction"] == 0 < padded["padding_fraction"]
    hybrid, vit = rows[("vision", "tiny-fila")], rows[("vision", "tiny-anyres")]
    assert hybrid["tflops_per_image"] > vit["tflops_per_image"] > 0  # the ConvNeXt and CVFM cost on top of the ViT
    check = rows[("correctness", "tiny FILA stage 2")]
    assert check["loss_falls"] and check["packing_matches_padding"] and isinstance(check["generated"], str)
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## llava vs fila" in table and "| tiny-fila liger | liger-kernel not installed" in table
    assert "carried: fila_carried_probe==1.0" in table


def test_no_measurement_starts_past_the_budget(tmp_path):
    finished(gpu_check(tmp_path, "--budget_s", "0"))
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert rows and all(not row["ok"] and row["wall_seconds"] == 0 for row in rows)
    gpu_only = {"liger-kernel not installed or no GPU", "flash-attn not installed or no GPU",
                "not run on a CPU (test_bench.py compiles a step)"}
    measurements = [row for row in rows if row["error"] not in gpu_only]
    # LLaVA's rows, which need FILA's batch, say so and quote why FILA's did not run.
    assert measurements and all("past the suite's 0 s budget" in row["error"] for row in measurements)


def test_a_run_killed_at_its_limit_keeps_the_rows_it_finished(tmp_path):
    process = gpu_check(tmp_path)
    results = tmp_path / "gpu_check.json"
    deadline = time.monotonic() + 300
    while not results.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before its first row was written"
    os.killpg(process.pid, signal.SIGKILL)  # what the device tool's time limit does to the command
    process.communicate()
    rows = json.loads(results.read_text())["rows"]  # whole JSON: each write replaces the file atomically
    assert [row["section"] for row in rows][:1] == ["correctness"] and rows[0]["ok"]
    assert "compile" not in {row["section"] for row in rows}  # killed before the last section, as intended
    assert "## correctness" in (tmp_path / "gpu_check.md").read_text()


def test_the_gpu_sizes_leave_room_for_text_in_every_configuration(tmp_path):
    """The GPU rows cannot be rehearsed at full size here, so their sizes are checked against each 7B configuration
    on the meta device (a FILA image alone is 2880 tokens: a 2048-token target fails every FILA row)."""
    from fila_train.bench.dry_run import dry_run
    from fila_train.bench.suite import GPU

    for config in (GPU.llava, GPU.fila, GPU.anyres):
        # The dry run refuses what training refuses: no room for text, or a target past the LLM's context.
        assert dry_run(config, 2, GPU.seq_len, tmp_path)["tokens_per_sample"] == GPU.seq_len


def test_a_correctness_check_that_fails_on_the_device_fails_the_row_and_the_run(tmp_path, monkeypatch):
    """Before, a correctness row whose checks failed (the loss not falling, packed and padded losses apart) was
    still 'ok', and the run ended '0 could not run', exit 0: only a False cell in the table said otherwise."""
    from fila_train.bench import correctness
    from fila_train.bench.suite import CPU, Suite, suite_outcome

    monkeypatch.setitem(correctness.PACKING_TOLERANCE, "fp32", -1.0)  # no difference, even 0, is within it
    suite = Suite(CPU, "cpu", tmp_path, write=lambda rows: None)
    suite.record("correctness", "tiny FILA stage 2", lambda: correctness.run_correctness("cpu", "fp32", tmp_path))
    (row,) = suite.rows
    assert not row["ok"] and row["error"].startswith("failed: packed and padded losses differ by ")
    assert row["loss_falls"] and row["train_loss_last"] < row["train_loss_first"]  # the numbers stay in the row
    line, status = suite_outcome(suite.rows)
    assert status == 1 and "0 could not run; CHECKS FAILED on the device" in line
    assert suite_outcome([{**row, "ok": True, "failed_checks": []}]) == ("1 runs, 0 could not run", 0)
