"""Shared fixtures: the tiny demo data and models, built once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from distributed_utils import fila_assets

    return fila_assets(tmp_path_factory)


@pytest.fixture(scope="session")
def uninterrupted(tiny_assets, tmp_path_factory):
    """The resume reference: a 2-process ZeRO-3 stage-2 run over several epochs that saves every 2 steps and
    logs each rank's record ids (test_resume.py, test_crash_safety.py). Returns (its arguments, the run)."""
    from distributed_utils import RESUME_SAVE_STEPS, RESUME_STEPS, resume_reference_args, run_distributed, write_resume_mixture

    mixture = write_resume_mixture(tiny_assets, tmp_path_factory.mktemp("resume_data"))
    args = resume_reference_args(tiny_assets, mixture, steps=RESUME_STEPS, save_steps=RESUME_SAVE_STEPS)
    return args, run_distributed(args, tmp_path_factory.mktemp("uninterrupted") / "run")
