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
