"""Run reporting: wandb set-up (offline without a key) and the end-of-run summary."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from .parts import format_table

logger = logging.getLogger(__name__)

WANDB_PROJECT = "fila-train"


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


def configure_wandb(report_to: list[str], output_dir: str) -> None:
    """Without an API key wandb online fails (or hangs ~100 s without network): go offline, say so."""
    if "wandb" not in report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)  # transformers' default is "huggingface"
    os.environ.setdefault("WANDB_DIR", output_dir)
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if "WANDB_MODE" not in os.environ and not _wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
        logger.warning("wandb: no API key configured, logging OFFLINE to %s (sync later with "
                       "`wandb sync`)", os.environ["WANDB_DIR"])


def format_summary(summary: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"
    rows = [["steps", str(summary["steps"])], ["seconds", f"{summary['seconds']:.1f}"],
            ["loss (first 10%)", fmt(summary["loss_first"])], ["loss (last 10%)", fmt(summary["loss_last"])],
            ["tokens/s (all ranks)", f"{summary['tokens_per_second']:.1f}"]]
    rows += [[f"skipped: {kind}", str(count)] for kind, count in (summary.get("skipped") or {}).items()]
    return format_table(["run summary", "value"], rows)
