"""scripts/gpu_check.sh, run as the GPU machine will run it, on the CPU with the tiny configurations: every
section runs (Liger and torch.compile, GPU-only here, are recorded as not run, with why), and one JSON + one markdown table
come out. The numbers themselves are the GPU's to give (docs/performance.md)."""
from __future__ import annotations

import json
import os
import subprocess

from distributed_utils import REPO


def test_gpu_check_runs_every_section_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=os.environ.get("PYTHON", "python"))
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    finished = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--output", str(tmp_path)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(row["section"], row["name"]): row for row in result["rows"]}
    sections = {section for section, _ in rows}
    assert sections == {"batch search", "llava vs fila", "packing", "compile", "liger", "vision", "correctness"}
    failed = [name for (section, name), row in rows.items() if not row["ok"]]
    assert failed == ["tiny-fila torch.compile", "tiny-fila liger"]  # GPU-only rows say why they did not run
    assert rows[("liger", "tiny-fila liger")]["error"].startswith("liger-kernel")
    fila, llava = rows[("batch search", "tiny-fila batch 2")], rows[("llava vs fila", "tiny-clip batch 2")]
    assert fila["batch_size"] == llava["batch_size"] and fila["median_step_seconds"] > 0
    padded, packed = rows[("packing", "tiny-fila sdpa padded")], rows[("packing", "tiny-fila sdpa packed")]
    assert packed["packing"] and packed["padding_fraction"] == 0 < padded["padding_fraction"]
    hybrid, vit = rows[("vision", "tiny-fila")], rows[("vision", "tiny-anyres")]
    assert hybrid["tflops_per_image"] > vit["tflops_per_image"] > 0  # the ConvNeXt and CVFM cost on top of the ViT
    check = rows[("correctness", "tiny FILA stage 2")]
    assert check["loss_falls"] and check["packing_matches_padding"] and isinstance(check["generated"], str)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "## llava vs fila" in table and "| tiny-fila liger | liger-kernel not installed" in table
