"""Run reporting: wandb set-up (offline without a key) and the end-of-run summary."""
from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .checkpoints import read_manifest
from .parts import format_table

logger = logging.getLogger(__name__)

WANDB_PROJECT = "fila-train"
WANDB_RUN_ID_FIELD = "wandb_run_id"  # in each checkpoint's manifest: the wandb run a resume continues


def _netrc_file() -> Path:
    """The netrc file wandb reads: $NETRC, else ~/.netrc or ~/_netrc, whichever exists."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    candidates = [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    return next((path for path in candidates if path.exists()), candidates[0])


def _wandb_key_configured() -> bool:
    """A key in the environment, or in wandb's netrc file for its server (WANDB_BASE_URL: a self-hosted one,
    port included, has its own entry). The file is named explicitly, as wandb does: Python's default
    ~/.netrc lookup refuses a file others can read, which wandb accepts."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    server = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        return netrc.netrc(str(_netrc_file())).authenticators(server) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def configure_wandb(report_to: list[str], output_dir: str, resume_from: str | None = None) -> None:
    """Without an API key wandb online fails (or hangs ~100 s without network): go offline, say so. A resumed run
    continues the wandb run its checkpoint was written by, so its curves are one run, not two halves."""
    if "wandb" not in report_to:
        return
    saved_id = read_manifest(Path(resume_from)).get(WANDB_RUN_ID_FIELD) if resume_from else None
    if saved_id and "WANDB_RUN_ID" not in os.environ:  # the user's own id wins
        os.environ["WANDB_RUN_ID"] = saved_id
        os.environ.setdefault("WANDB_RESUME", "allow")
        logger.info("wandb: continuing run %s, which wrote %s", saved_id, resume_from)
    os.environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)  # transformers' default is "huggingface"
    os.environ.setdefault("WANDB_DIR", output_dir)
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if "WANDB_MODE" not in os.environ and not _wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
        logger.warning("wandb: no API key configured, logging OFFLINE to %s (sync later with "
                       "`wandb sync`)", os.environ["WANDB_DIR"])


def wandb_run_fields() -> dict:
    """The open wandb run's id for a checkpoint's manifest (the main process's, under --report_to wandb)."""
    wandb = sys.modules.get("wandb")  # imported only where the run reports to wandb
    run = getattr(wandb, "run", None)
    return {} if run is None else {WANDB_RUN_ID_FIELD: run.id}


def format_summary(summary: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"
    rows = [["steps", str(summary["steps"])], ["seconds", f"{summary['seconds']:.1f}"],
            ["loss (first 10%)", fmt(summary["loss_first"])], ["loss (last 10%)", fmt(summary["loss_last"])],
            ["tokens/s (all ranks)", f"{summary['tokens_per_second']:.1f}"]]
    rows += [[f"skipped: {kind}", str(count)] for kind, count in (summary.get("skipped") or {}).items()]
    return format_table(["run summary", "value"], rows)
