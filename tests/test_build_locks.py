"""A stale build lock of a torch extension is named in the log instead of hanging the run without a word."""
from __future__ import annotations

import os
import threading
import time

from torch.utils.file_baton import FileBaton

from fila_train.training.build_locks import reporting_build_locks


def test_a_rank_waiting_on_a_stale_build_lock_names_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()  # what a build killed while holding it leaves, a while ago
    os.utime(lock, (time.time() - 600, time.time() - 600))
    waiting = threading.Thread(target=FileBaton(str(lock), wait_seconds=0.05).wait, daemon=True)  # torch's own wait
    with caplog.at_level("WARNING", logger="fila_train.training.build_locks"):
        with reporting_build_locks(after_seconds=0.2):
            waiting.start()
            for _ in range(600):  # the report comes from a timer thread: up to 30 s on a busy machine
                if "build lock" in caplog.text:
                    break
                waiting.join(0.05)
            assert waiting.is_alive()
    assert f"torch's extension build lock {lock} exists" in caplog.text and "delete it" in caplog.text
    lock.unlink()
    waiting.join(5.0)
    assert not waiting.is_alive()


def test_a_step_that_ends_in_time_or_holds_the_lock_itself_reports_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    os.utime(tmp_path / "deepspeed_shm_comm" / "lock", (time.time() - 600, time.time() - 600))
    with caplog.at_level("WARNING"):
        with reporting_build_locks(after_seconds=0.2):  # done before the report is due
            pass
        threading.Event().wait(0.4)
        (tmp_path / "deepspeed_shm_comm" / "lock").unlink()
        with reporting_build_locks(after_seconds=0.2):
            FileBaton(str(tmp_path / "deepspeed_shm_comm" / "lock")).try_acquire()  # this run's own (long) build
            threading.Event().wait(0.6)
    assert "build lock" not in caplog.text
