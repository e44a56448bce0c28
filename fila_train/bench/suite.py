"""The GPU check (``scripts/gpu_check.sh``): every measurement of FILA-7B against LLaVA-7B in one process, then
one JSON and one markdown table. On a CPU (``--device cpu``) the same sequence runs on the tiny configurations,
which is how it is tested before any GPU time is spent.

A measurement that cannot run (out of memory, a kernel package missing, an API the device's packages lack) is
recorded with its reason and the suite goes on: one failed row must not cost the whole device slot. The device
lease is short (two runs and a machine start must fit in 15 minutes), so the rows run most telling first, a row
that would start past the time budget is recorded as not run, and both files are rewritten after every row: a run
killed at its time limit still leaves every finished row behind.
"""
from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..utils.files import write_json_atomic, write_text_atomic
from .correctness import TRAIN_STEPS, run_correctness
from .runner import DISTINCT_BATCHES, BenchOptions, run_training_bench
from .vision import run_vision_bench


@dataclass(frozen=True)
class SuiteSizes:
    llava: str
    fila: str
    anyres: str
    batch_sizes: tuple[int, ...]  # tried largest first: the first that fits is "the largest batch that fits"
    seq_len: int | None
    steps: int
    warmup: int
    dtype: str
    canvas: tuple[int, int]  # the vision bench's image size: FILA's 2x2 canvas
    compile_backend: str | None  # None (CPU): not run; inductor's CPU compile takes minutes per shape
    budget_seconds: float  # no row starts after this; on the GPU two runs plus a machine start fit one lease


# 4096 tokens a sample (Vicuna-7B v1.5's context) for both models: FILA's image alone is 2880 tokens at its 672
# canvas. A run's rows start within 270 s, so that with a 390 s limit on the command a rerun and the machine's
# start still fit the device's 15-minute lease; a row started late (compile) is cut by that limit.
GPU = SuiteSizes("llava-7b", "fila-7b", "anyres-7b", (16, 8, 4, 2, 1), 4096, steps=3, warmup=1, dtype="bf16",
                 canvas=(672, 672), compile_backend="inductor", budget_seconds=270)
CPU = SuiteSizes("tiny-clip", "tiny-fila", "tiny-anyres", (2, 1), None, steps=1, warmup=0, dtype="fp32",
                 canvas=(112, 112), compile_backend=None, budget_seconds=600)
# Where scripts/gpu_check.sh installed the wheels carried to the device (WHEELS=folder): reported in the JSON.
CARRIED_SITE_VARIABLE = "FILA_GPU_CHECK_SITE"
REPORTED_PACKAGES = ("torch", "transformers", "open_clip_torch", "timm", "huggingface_hub", "tokenizers", "triton",
                     "liger_kernel", "flash_attn", "deepspeed")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def environment() -> dict[str, Any]:
    """What the numbers were measured with: the device's own packages and the wheels carried to it."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    site = os.environ.get(CARRIED_SITE_VARIABLE)
    carried = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions(path=[site])) \
        if site else []
    return {"python": platform.python_version(), "cuda": torch.version.cuda, "packages": versions, "carried": carried}


def _error_line(error: BaseException) -> str:
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error):
        return "out of memory"
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


class Suite:
    def __init__(self, sizes: SuiteSizes, device: str, workdir: Path, write: Callable[[list[dict]], None]):
        self.sizes, self.device, self.workdir, self.write = sizes, device, workdir, write
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write(self.rows)
        print(f"[gpu_check] {row['section']} / {row['name']}: " + ("ok" if row["ok"] else row["error"]), flush=True)

    def record(self, section: str, name: str, run: Callable[[], dict]) -> dict | None:
        """One measurement; any error (out of memory, a missing package, an API the device's packages lack)
        becomes the row instead, and past the time budget the row is not started."""
        if time.perf_counter() - self.start > self.sizes.budget_seconds:
            self.skip(section, name, f"not run: past the suite's {self.sizes.budget_seconds:.0f} s budget")
            return None
        start = time.perf_counter()
        try:
            result = run()
            # A measurement that ran but whose checks failed (correctness) is not ok: the error says which.
            failed = result.get("failed_checks") or []
            row = {"section": section, "name": name, "ok": not failed, **result}
            if failed:
                row["error"] = "failed: " + "; ".join(failed)
        except Exception as error:  # noqa: BLE001 - the row says what failed; the next row may still run
            row, result = {"section": section, "name": name, "ok": False, "error": _error_line(error)}, None
        finally:
            # A model in a reference cycle (Liger binds methods to it) would hold its 13.5 GB into the next row.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        self._add(row)
        return result

    def skip(self, section: str, name: str, why: str) -> None:
        self._add({"section": section, "name": name, "ok": False, "error": why, "wall_seconds": 0.0})

    def train(self, config: str, **changes) -> Callable[[], dict]:
        options = BenchOptions(config=config, stage=2, batch_size=self.sizes.batch_sizes[-1], seq_len=self.sizes.seq_len,
                               dtype=self.sizes.dtype, device=self.device, steps=self.sizes.steps,
                               warmup=self.sizes.warmup)
        options = replace(options, **changes)
        return lambda: run_training_bench(options, Path(tempfile.mkdtemp(dir=self.workdir)))

    def largest_batch(self, config: str, checkpointing: bool) -> int | None:
        for batch in self.sizes.batch_sizes:
            if self.record("batch search", f"{config} batch {batch}{' +ckpt' if checkpointing else ''}",
                           self.train(config, batch_size=batch, gradient_checkpointing=checkpointing)) is not None:
                return batch
        return None

    def run(self) -> None:
        sizes = self.sizes
        # Most telling first. 1. Correctness on the device: if bf16 training, packing or generate is wrong there,
        # no speed number below means anything, and this row costs seconds.
        self.record("correctness", "tiny FILA stage 2", lambda: run_correctness(
            self.device, "bf16" if self.device != "cpu" else "fp32", Path(tempfile.mkdtemp(dir=self.workdir))))
        # 2. LLaVA-7B vs FILA-7B at the same batch and length: FILA's largest batch with checkpointing (what a
        # real 7B stage 2 uses; without it, step 5 searches again past several out-of-memory builds).
        batch = self.compare_at_largest_batch(checkpointing=True)
        # From here on FILA at that batch with checkpointing.
        # 3. Packing on the synthetic records' own mix of lengths, with SDPA and flash-attention varlen.
        attentions = ["sdpa"]
        if self.gpu_package("flash_attn"):
            attentions.append("flash_attention_2")
        else:
            self.skip("packing", f"{sizes.fila} flash_attention_2", "flash-attn not installed or no GPU")
        for attention in attentions:
            for packing in (False, True):
                self.record("packing", f"{sizes.fila} {attention} {'packed' if packing else 'padded'}",
                            self.train(sizes.fila, batch_size=batch, seq_len=None, attn_implementation=attention,
                                       packing=packing, gradient_checkpointing=True))
        # 4. The vision side alone at FILA's canvas: the hybrid encoder vs the ViT alone, the ConvNeXt channels_last.
        for config, channels_last in ((sizes.anyres, False), (sizes.fila, False), (sizes.fila, True)):
            self.vision(config, channels_last, None)
        # 5. The same comparison without checkpointing: its search passes several out-of-memory builds first.
        self.compare_at_largest_batch(checkpointing=False)
        # 6. Liger, then torch.compile last: inductor compiles for minutes, so it goes where the budget allows
        # (a row that starts within the budget may run past it; the files keep the rows before it).
        if self.gpu_package("liger_kernel"):
            self.record("liger", f"{sizes.fila} liger", self.train(sizes.fila, batch_size=batch,
                                                                    gradient_checkpointing=True, use_liger=True))
        else:
            self.skip("liger", f"{sizes.fila} liger", "liger-kernel not installed or no GPU")
        if sizes.compile_backend is None:
            self.skip("compile", f"{sizes.fila} torch.compile", "not run on a CPU (test_bench.py compiles a step)")
        else:
            self.vision(sizes.fila, True, sizes.compile_backend)
            # Each distinct batch shape compiles once in the warm-up, not inside a timed step.
            self.record("compile", f"{sizes.fila} torch.compile {sizes.compile_backend}",
                        self.train(sizes.fila, batch_size=batch, gradient_checkpointing=True,
                                   torch_compile_backend=sizes.compile_backend,
                                   warmup=max(sizes.warmup, DISTINCT_BATCHES)))

    def gpu_package(self, module: str) -> bool:
        """A GPU-only package (Triton / CUDA kernels) this run can use."""
        return installed(module) and self.device != "cpu"

    def compare_at_largest_batch(self, checkpointing: bool) -> int:
        """FILA's largest batch that fits, then LLaVA at that batch; returns the batch."""
        sizes = self.sizes
        batch = self.largest_batch(sizes.fila, checkpointing) or sizes.batch_sizes[-1]
        name = f"{sizes.llava} batch {batch}{' +ckpt' if checkpointing else ''}"
        if self.rows[-1]["ok"]:
            self.record("llava vs fila", name,
                        self.train(sizes.llava, batch_size=batch, gradient_checkpointing=checkpointing))
        else:
            self.skip("llava vs fila", name, f"not run: no {sizes.fila} batch ran ({self.rows[-1]['error']})")
        return batch

    def vision(self, config: str, channels_last: bool, compile_backend: str | None) -> None:
        sizes = self.sizes
        name = f"{config}{' channels_last' if channels_last else ''}{' compiled' if compile_backend else ''}"
        self.record("vision", name, lambda: run_vision_bench(
            config, self.device, sizes.dtype, sizes.canvas, max(sizes.steps, 3), max(sizes.warmup, 1),
            Path(tempfile.mkdtemp(dir=self.workdir)), channels_last=channels_last, compile_backend=compile_backend))


TRAINING_COLUMNS = (("batch_size", "batch", "{}"), ("gradient_checkpointing", "ckpt", "{}"),
                    ("attn_implementation", "attention", "{}"), ("packing", "packed", "{}"),
                    ("median_step_seconds", "step s", "{:.3f}"), ("tokens_per_second_per_device", "tokens/s", "{:,.0f}"),
                    ("mfu", "MFU", "{:.1%}"), ("peak_memory_gib", "peak GiB", "{:.1f}"))
VISION_COLUMNS = (("ms_per_image", "ms/image", "{:.1f}"), ("tflops_per_image", "TFLOP/image", "{:.3g}"),
                  ("tflops_per_second", "TFLOP/s", "{:.3g}"), ("peak_memory_gib", "peak GiB", "{:.1f}"))
CORRECTNESS_COLUMNS = (("dtype", "dtype", "{}"), ("train_loss_first", "loss first", "{:.3f}"),
                       ("train_loss_last", f"loss after {TRAIN_STEPS} steps", "{:.3f}"), ("loss_falls", "falls", "{}"),
                       ("packing_difference", "packed - padded loss", "{:.2e}"),
                       ("packing_matches_padding", "within tolerance", "{}"), ("generated", "generate", "{!r}"))
COLUMNS = {"vision": VISION_COLUMNS, "correctness": CORRECTNESS_COLUMNS}


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "n/a" if value is None else fmt.format(value)


def format_markdown(result: dict) -> str:
    env = result["environment"]
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items() if version)
    lines = [f"# GPU check: {result['device']}", "", f"`{result['command']}`, {result['seconds']:.0f} s in all.", "",
             f"Python {env['python']}, CUDA {env['cuda']}; {packages}; carried: {', '.join(env['carried']) or 'none'}.",
             ""]
    for section in dict.fromkeys(row["section"] for row in result["rows"]):
        rows = [row for row in result["rows"] if row["section"] == section]
        columns = COLUMNS.get(section, TRAINING_COLUMNS)
        lines += [f"## {section}", "", "| run | " + " | ".join(label for _, label, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for row in rows:
            cells = [_cell(row, key, fmt) for key, _, fmt in columns] if row["ok"] else \
                [row["error"]] + [""] * (len(columns) - 1)
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_suite(device: str, output: Path, command: str, budget_seconds: float | None = None) -> dict:
    sizes = CPU if device == "cpu" else GPU
    if budget_seconds is not None:
        sizes = replace(sizes, budget_seconds=budget_seconds)
    output.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else "CPU"
    header = {"device": name, "sizes": asdict(sizes), "command": command, "environment": environment()}
    start = time.perf_counter()

    def write(rows: list[dict]) -> dict:
        result = {**header, "seconds": time.perf_counter() - start, "rows": rows}
        # The table first: whoever waits for the JSON then finds both.
        write_text_atomic(output / "gpu_check.md", format_markdown(result))
        write_json_atomic(output / "gpu_check.json", result)
        return result

    with tempfile.TemporaryDirectory(prefix="fila-gpu-check-") as workdir:
        suite = Suite(sizes, device, Path(workdir), write)
        suite.run()
    return write(suite.rows)


def suite_outcome(rows: list[dict]) -> tuple[str, int]:
    """The line that ends a suite run, and its exit status: 1 where a check failed on the device (its speed numbers
    then mean nothing); a row that could not run (a package or the GPU missing, out of memory) is reported only."""
    failed = [f"{row['name']}: {row['error']}" for row in rows if row.get("failed_checks")]
    not_run = [row["name"] for row in rows if not row["ok"] and not row.get("failed_checks")]
    line = f"{len(rows)} runs, {len(not_run)} could not run{': ' + ', '.join(not_run) if not_run else ''}"
    if failed:
        line += f"; CHECKS FAILED on the device, so no speed number counts: {'; '.join(failed)}"
    return line, 1 if failed else 0
