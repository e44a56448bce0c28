"""What a stage-1 connector artifact was trained for, as stored in its safetensors header.

Kept free of torch so the launcher's preflight can compare it with the model's config files
before any weights (or heavy imports) are loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

ARTIFACT_NAME = "connector.safetensors"
SIGNATURE_KEY = "fila_signature"
ADDED_KEYS = ("vision_feature_layer",)  # keys later versions write: an older file without them is not checked on them


def connector_signature(vision_encoder: str, connector_type: str, vision_hidden: int, llm_hidden: int,
                        vision_feature_layer: int) -> dict[str, str]:
    return {"vision_encoder": vision_encoder, "connector_type": connector_type,
            "vision_hidden": str(vision_hidden), "llm_hidden": str(llm_hidden),
            "vision_feature_layer": str(vision_feature_layer)}  # the ViT layer whose features it learnt


def signature_mismatches(signature: dict[str, str], expected: dict[str, str]) -> list[str]:
    """What keeps the artifact of ``signature`` from starting the model of ``expected`` (a connector_signature),
    as "key <artifact's> (this run: <model's>)". Its "starts" lists the encoders it can start (written since
    the crop-only anyres encoder; older files start their own encoder only)."""
    starts = (signature.get("starts") or signature.get("vision_encoder", "")).split(",")
    return [f"{key} {signature.get(key, '?')} (this run: {value})" for key, value in expected.items()
            if (value not in starts if key == "vision_encoder"
                else (key in signature or key not in ADDED_KEYS) and signature.get(key) != value)]


def read_signature(path: str | Path) -> dict[str, str]:
    """The signature in the file's header (empty when it has none); tensors are not read."""
    with safe_open(str(path), framework="numpy") as handle:
        return json.loads((handle.metadata() or {}).get(SIGNATURE_KEY, "{}"))
