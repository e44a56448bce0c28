"""Ctrl-C or SIGTERM stops a 2-process run with one line, as a terminal or a scheduler (SLURM's scancel and
preemption send SIGTERM) would stop it: the line names the checkpoint to resume from. After Ctrl-C the launcher
ends by SIGINT, so that a script that called it (``pretrain.sh; finetune.sh``) stops too.

Before, Ctrl-C printed every rank's KeyboardInterrupt traceback and the launcher's SignalException traceback
(164 lines of stderr for 2 ranks), and SIGTERM the launcher's traceback. Then it was one line, but the launcher
exited with code 130, and a calling script went on to its next command."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed_utils import REPO, free_port, rank_environment, train_args
from fila_train.training.checkpoints import MANIFEST, newest_complete

SAVE_STEPS = 2


@dataclass
class StoppedRun:
    returncode: int
    stderr: str
    about_the_stop: list[str]  # stderr's lines from the signal on, less progress bars and the run's own logs
    left_running: list[str]  # the command lines of the run's processes still alive once the launcher ended


TORCHRUN = "fila_train.training.launch"
DEEPSPEED = "fila_train.training.deepspeed_launch"  # DeepSpeed's runner
# A script that runs its next command whatever the first one's exit code, as `pretrain.sh; finetune.sh` does.
NEXT_COMMAND_RAN = "the script's next command ran"
IN_A_SCRIPT = ["bash", "-c", f'"$@"; echo "{NEXT_COMMAND_RAN}" >&2', "script"]


def as_a_terminals_job() -> None:
    """In the child before it starts: a session of its own, with Ctrl-C as a terminal delivers it. A test run
    started in the background of a script inherits SIGINT ignored, and a shell that starts with it ignored goes
    on after a command that Ctrl-C stopped."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launched(command: list[str], ready, signum: int, launcher: str = TORCHRUN, script: bool = False,
             whole_job: bool = True) -> StoppedRun:
    """``command`` through one of our launchers (called by a script with ``script``), in a session of its own like a
    terminal's foreground job (torchrun starts each worker in a session of its own too; DeepSpeed does not), sent
    ``signum`` once ``ready()``: the whole job, as Ctrl-C or scancel signal it, or the launcher alone (`kill PID`)."""
    process = subprocess.Popen([*(IN_A_SCRIPT if script else []), sys.executable, "-m", launcher, *command], cwd=REPO,
                               env=rank_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_a_terminals_job)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    while not ready():  # a run that never gets there ends on its own (1000 steps; the worker's sleep)
        assert process.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.2)
    before = len(lines)  # a line still on its way from before the signal is a log line or a bar's: left out below
    if whole_job:
        os.killpg(process.pid, signum)  # as Ctrl-C or scancel signal the foreground job
    else:
        process.send_signal(signum)
    process.wait(timeout=600)  # a guard against a hang only
    left_running = processes_running_with(command[command.index("--output_dir") + 1])
    reader.join()  # (left running, they would hold its pipe open)
    # What a line shows once a terminal has drawn it: the text after its last \r, less a progress bar.
    shown = [re.sub(r"^[^|]*\d+%\|[^|]*\|\s*\d+/\d+ \[[^\]]*\]", "", line.rstrip("\n").rsplit("\r", 1)[-1])
             for line in lines[before:]]
    return StoppedRun(process.returncode, "".join(lines), [
        line for line in shown if line.strip()
        and not re.match(r"\d{4}-\d\d-\d\d |\[transformers\] |\[INFO\] ", line)],  # the run's logs
        left_running)


def processes_running_with(output_dir: str) -> list[str]:
    """Command lines of live processes started for this output folder (every launcher's and worker's names it),
    each killed once found."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            arguments = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if output_dir in arguments:
                os.kill(int(proc.name), signal.SIGKILL)
                found.append(" ".join(arguments).strip())
        except OSError:  # gone meanwhile
            continue
    return found


def stopped_run(assets, output, signum: int, launcher: str = TORCHRUN, script: bool = False) -> StoppedRun:
    """A long 2-process training run, stopped once it has saved a checkpoint."""
    layout = (["--nproc_per_node", "2", "--master_port", str(free_port()), "-m"] if launcher == TORCHRUN else
              ["--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", "--module"])
    command = [*layout, "fila_train.cli", "train", "--output_dir", str(output),
               *train_args(assets, hybrid=False, fuser=False, stage=2, zero=2, steps=1000),
               "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS)]
    return launched(command, lambda: (output / f"checkpoint-{SAVE_STEPS}" / MANIFEST).exists(), signum, launcher,
                    script)


def assert_the_script_stopped(run: StoppedRun) -> None:
    """The script ended by SIGINT, as bash does only when its command did; its next command did not run."""
    assert run.returncode == -signal.SIGINT and NEXT_COMMAND_RAN not in run.stderr, run.stderr[-3000:]


def resume_from(output) -> str:
    checkpoint, _ = newest_complete(output)
    assert checkpoint is not None
    return f"the newest complete checkpoint is {checkpoint}: --resume_from_checkpoint latest continues from it"


def test_ctrl_c_is_one_line_naming_the_step_and_the_checkpoint_to_resume_from(tiny_assets, tmp_path):
    output = tmp_path / "run"
    run = stopped_run(tiny_assets, output, signal.SIGINT, script=True)
    assert_the_script_stopped(run)
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
    assert run.left_running == []
    assert len(run.about_the_stop) == 1, run.stderr[-3000:]
    (line,) = run.about_the_stop
    found = re.fullmatch(r"fila-train train \[rank [01]\]: interrupted at step (\d+) of 1000; (.*)", line)
    assert found and found.group(2) == resume_from(output), line
    assert int(found.group(1)) >= SAVE_STEPS


def test_ctrl_c_under_deepspeeds_launcher_is_one_line_too(tiny_assets, tmp_path):
    """DeepSpeed's per-node launcher kills the workers at once, so the line is most often its runner's (ours)."""
    output = tmp_path / "run"
    run = stopped_run(tiny_assets, output, signal.SIGINT, DEEPSPEED, script=True)
    assert_the_script_stopped(run)
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
    assert run.left_running == []
    assert len(run.about_the_stop) == 1, run.stderr[-3000:]
    (line,) = run.about_the_stop
    assert re.fullmatch(r"(fila-train train \[rank [01]\]: interrupted at step \d+ of 1000|\[fila-train\] "
                        r"interrupted: every worker was stopped); " + re.escape(resume_from(output)), line), line


def test_a_scheduler_stop_is_one_line_from_the_launcher_naming_the_checkpoint(tiny_assets, tmp_path):
    output = tmp_path / "run"
    run = stopped_run(tiny_assets, output, signal.SIGTERM)
    assert run.returncode == 128 + signal.SIGTERM and run.left_running == [], run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.about_the_stop == [f"[fila-train] stopped by SIGTERM: every worker was stopped; {resume_from(output)}"]


def test_ctrl_c_that_no_worker_could_report_is_the_launchers_line(tmp_path):
    """A worker that cannot report (on a GPU: blocked in a collective until torchrun kills it); here one that is
    not fila-train's."""
    run = launched(sleeping_worker(TORCHRUN, tmp_path), worker_started(tmp_path), signal.SIGINT, script=True)
    assert_the_script_stopped(run)
    assert run.left_running == []
    assert run.about_the_stop == [f"[fila-train] interrupted: every worker was stopped; {tmp_path / 'run'} holds no "
                                  f"complete checkpoint yet"], run.stderr


@pytest.mark.parametrize("launcher", [TORCHRUN, DEEPSPEED], ids=["torchrun", "deepspeed"])
def test_ctrl_c_whose_reporting_worker_died_before_its_line_is_the_launchers_line(launcher, tmp_path):
    """The worker that claims the report (the node's first to take Ctrl-C) killed before its line is out, as
    DeepSpeed's launcher kills the workers at once: before, the launcher saw the claim and stayed silent, and the
    run ended without a line (seen once in a full CI run)."""
    worker = sleeping_worker(launcher, tmp_path)
    worker[worker.index(SLEEPER)] = CLAIMANT
    run = launched(worker, worker_started(tmp_path), signal.SIGINT, launcher, script=True)
    assert_the_script_stopped(run)
    assert run.left_running == []
    assert run.about_the_stop == [f"[fila-train] interrupted: every worker was stopped; {tmp_path / 'run'} holds no "
                                  f"complete checkpoint yet"], run.stderr


SLEEPER = ("import os, signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "  # stopped without a word
           "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(100)")


# On Ctrl-C it claims the report as a fila-train worker does, and dies before it prints.
CLAIMANT = ("import os, signal, sys, time; from fila_train.utils.errors import first_to_report_interrupt; "
            "signal.signal(signal.SIGINT, lambda *_: (first_to_report_interrupt(), os._exit(1))); "
            "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(100)")


def sleeping_worker(launcher: str, tmp_path: Path) -> list[str]:
    """A launch of one worker that is not fila-train's (it cannot report a stop) and sleeps once it has written
    its process id to ``tmp_path/worker.pid``."""
    worker = [sys.executable, "-c", SLEEPER, str(tmp_path / "worker.pid"), "--output_dir", str(tmp_path / "run")]
    if launcher == TORCHRUN:
        return ["--nproc_per_node", "1", "--master_port", str(free_port()), "--no-python", *worker]
    return ["--num_gpus", "1", "--master_port", str(free_port()), "--no_local_rank", "--no_python", *worker]


def worker_started(tmp_path: Path):
    return lambda: (tmp_path / "worker.pid").exists() and (tmp_path / "worker.pid").read_text() != ""


@pytest.mark.parametrize("whole_job", [True, False], ids=["scancel", "kill_the_launcher"])
@pytest.mark.parametrize("launcher", [TORCHRUN, DEEPSPEED], ids=["torchrun", "deepspeed"])
def test_sigterm_stops_every_worker_and_is_the_launchers_line(launcher, whole_job, tmp_path):
    """A scheduler's SIGTERM to the job, or one to the launcher alone: the workers stop, and the launcher says so.
    Before, DeepSpeed's runner died by it without a word, and signalled alone, it left its workers running."""
    run = launched(sleeping_worker(launcher, tmp_path), worker_started(tmp_path), signal.SIGTERM, launcher,
                   whole_job=whole_job)
    assert run.left_running == [], "left running after the launcher ended"
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert run.about_the_stop == [f"[fila-train] stopped by SIGTERM: every worker was stopped; {tmp_path / 'run'} "
                                  f"holds no complete checkpoint yet"], run.stderr


ONE_PROCESS = """
import atexit, os, signal, time
from fila_train.utils.errors import reported_interrupt

def second_ctrl_c():  # as the process exits, after its line
    os.killpg(0, signal.SIGINT)
    time.sleep(1)  # where a handler still in place would raise


atexit.register(second_ctrl_c)
with reported_interrupt("fila-train eval"):
    os.killpg(0, signal.SIGINT)  # Ctrl-C: to the script and to this process
    time.sleep(30)
"""


def test_ctrl_c_in_one_process_is_one_line_and_a_second_one_is_ignored():
    """A second Ctrl-C must not interrupt the report, or the exit after it, with a traceback."""
    environment = {name: value for name, value in os.environ.items() if name not in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_ERROR_FILE", "FILA_TRAIN_INTERRUPT_REPORTED")}
    run = subprocess.run([*IN_A_SCRIPT, sys.executable, "-c", ONE_PROCESS], cwd=REPO, env=environment,
                         capture_output=True, text=True, timeout=120, preexec_fn=as_a_terminals_job)
    assert run.stderr == "fila-train eval: interrupted\n"
    assert run.returncode == -signal.SIGINT


def torch_is_loading(pid: int) -> bool:
    """The command's imports have begun (its CLI imports torch only inside the command's own module)."""
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # gone already: the wait below reports how it ended
        return False


def test_ctrl_c_during_a_commands_imports_is_one_line_too():
    """Every command, from its first import on: before, `fila-train eval` printed the KeyboardInterrupt traceback
    of whatever import it interrupted."""
    process = subprocess.Popen([sys.executable, "-m", "fila_train.cli", "eval", "--model", "nowhere", "--bench",
                                "nowhere.jsonl"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_a_terminals_job)
    while not torch_is_loading(process.pid):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert stderr == "fila-train eval: interrupted\n" and process.returncode == -signal.SIGINT, stderr[-3000:]


def ignoring_ctrl_c() -> None:
    """In the child before it starts: a session of its own (a Ctrl-C it is sent reaches nothing else), started
    with SIGINT ignored, as a script's background job (`bash finetune.sh > log &`) is."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it():
    """As Python does: a Ctrl-C meant for the script must not stop its background job."""
    run = subprocess.run([sys.executable, "-c", ONE_PROCESS.replace("time.sleep(30)", "pass")], cwd=REPO,
                         capture_output=True, text=True, timeout=120, preexec_fn=ignoring_ctrl_c)
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_a_launch_started_with_ctrl_c_ignored_runs_on_through_it(tmp_path):
    """torchrun's agent stops its workers on SIGINT whatever it started with; ours leaves SIGINT to the ignore."""
    started, go, finished = (tmp_path / name for name in ("started", "go", "finished"))
    worker = f"touch {started}; while [ ! -e {go} ]; do sleep 0.1; done; touch {finished}"
    process = subprocess.Popen([sys.executable, "-m", TORCHRUN, "--nproc_per_node", "1", "--master_port",
                                str(free_port()), "--no-python", "bash", "-c", worker], cwd=REPO,
                               env=rank_environment(), stderr=subprocess.PIPE, text=True, preexec_fn=ignoring_ctrl_c)
    while not started.exists():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(1)  # not a measurement: the agent's time to act on the signal, were it to
    go.touch()
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 0 and finished.exists(), stderr[-3000:]


@pytest.mark.parametrize("signum, line", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_a_conversion_stopped_midway_is_one_line_ends_by_its_signal_and_leaves_no_file(tmp_path, signum, line):
    """Before, Ctrl-C during a conversion (once its imports were done) exited with code 1, so a calling script went
    on: importing torch._dynamo (transformers' tokenizers do) turns Python's end by SIGINT into exit code 1. SIGTERM
    ended it at once, and its hidden temporary output stayed beside the output."""
    import json

    entries = [{"questionId": i, "question": f"What is written in box {i}?", "image": f"documents/p{i % 97}.png",
                "answers": ["a value"], "data_split": "train"} for i in range(200_000)]
    source = tmp_path / "train_v1.0_withQT.json"
    source.write_text(json.dumps({"dataset_name": "SP-DocVQA", "dataset_split": "train", "data": entries}))
    output = tmp_path / "out" / "docvqa.jsonl"
    # Ctrl-C reaches a script and its command (the terminal's process group); a SIGTERM, the command itself.
    in_a_script = IN_A_SCRIPT if signum == signal.SIGINT else []
    process = subprocess.Popen([*in_a_script, sys.executable, "-m", "fila_train.cli", "data", "convert", "docvqa",
                                "--input", str(source), "--output", str(output)],
                               cwd=REPO, stderr=subprocess.PIPE, text=True, preexec_fn=as_a_terminals_job)
    # Stopped while records are written into the temporary output.
    while not (output.parent.is_dir() and any(path.stat().st_size for path in output.parent.iterdir())):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    os.killpg(process.pid, signum)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == -signum and NEXT_COMMAND_RAN not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == f"fila-train data: {line}", stderr[-3000:]
    assert list(output.parent.iterdir()) == []


def test_ctrl_c_still_runs_the_exit_clean_ups_registered_before_the_command_ran(tmp_path):
    """The end by SIGINT after Ctrl-C (an atexit callback) must run after every other clean-up. It was registered
    once fila_train.cli had imported multiprocessing (utils/processes.py), so multiprocessing's own exit clean-up
    came after it and never ran: a training rank's worker temp folder (share_temp_folder_with_workers: "this
    process removes it at exit") stayed in /tmp after every Ctrl-C."""
    (tmp_path / "probe_command.py").write_text(
        "import multiprocessing.util\n\n\ndef main(argv):\n"
        "    print(multiprocessing.util.get_temp_dir(), flush=True)\n    raise KeyboardInterrupt\n")
    script = ("import sys\nfrom fila_train import cli\n"
              "cli.COMMANDS['probe'] = ('probe_command:main', 'a command stopped by Ctrl-C')\n"
              "sys.exit(cli.main(['probe']))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, preexec_fn=as_a_terminals_job)
    assert run.returncode == -signal.SIGINT and run.stderr.splitlines()[-1] == "fila-train probe: interrupted", \
        run.stderr[-3000:]
    temp_folder = Path(run.stdout.strip())
    assert temp_folder.name.startswith("pymp-") and not temp_folder.exists()
