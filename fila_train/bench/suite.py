"""The GPU check (``scripts/gpu_check.sh``): every measurement of FILA-7B against LLaVA-7B in one process, then
one JSON and one markdown table. On a CPU (``--device cpu``) the same sequence runs on the tiny configurations,
which is how it is tested before any GPU time is spent.

A measurement that cannot run (out of memory, a kernel package missing) is recorded with its reason and the
suite goes on: one failed row must not cost the whole device slot.
"""
from __future__ import annotations

import importlib.util
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..utils.files import write_json_atomic, write_text_atomic
from .correctness import TRAIN_STEPS, run_correctness
from .runner import BenchOptions, run_training_bench
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


GPU = SuiteSizes("llava-7b", "fila-7b", "anyres-7b", (16, 8, 4, 2, 1), 2048, steps=4, warmup=2, dtype="bf16",
                 canvas=(672, 672), compile_backend="inductor")
CPU = SuiteSizes("tiny-clip", "tiny-fila", "tiny-anyres", (2, 1), None, steps=1, warmup=0, dtype="fp32",
                 canvas=(112, 112), compile_backend=None)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Suite:
    def __init__(self, sizes: SuiteSizes, device: str, workdir: Path):
        self.sizes, self.device, self.workdir = sizes, device, workdir
        self.rows: list[dict[str, Any]] = []

    def record(self, section: str, name: str, run: Callable[[], dict]) -> dict | None:
        """One measurement; its error (out of memory, a missing package) becomes the row instead."""
        start = time.perf_counter()
        try:
            result = run()
            row = {"section": section, "name": name, "ok": True, **result}
        except (torch.OutOfMemoryError, ImportError, RuntimeError, ValueError, NotImplementedError) as error:
            oom = isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)
            row = {"section": section, "name": name, "ok": False,
                   "error": "out of memory" if oom else f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            result = None
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        self.rows.append(row)
        print(f"[gpu_check] {section} / {name}: " + ("ok" if row["ok"] else row["error"]), flush=True)
        return result

    def skip(self, section: str, name: str, why: str) -> None:
        self.rows.append({"section": section, "name": name, "ok": False, "error": why, "wall_seconds": 0.0})

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
        # 1. LLaVA-7B vs FILA-7B at the same batch and length: FILA's largest batch, with and without checkpointing.
        for checkpointing in (False, True):
            batch = self.largest_batch(sizes.fila, checkpointing) or sizes.batch_sizes[-1]
            if self.rows[-1]["ok"]:
                self.record("llava vs fila", f"{sizes.llava} batch {batch}{' +ckpt' if checkpointing else ''}",
                            self.train(sizes.llava, batch_size=batch, gradient_checkpointing=checkpointing))
        # 2.-3. From here on FILA at its largest batch with checkpointing (what a real run uses).
        # 2. Packing on the synthetic records' own mix of lengths, with SDPA and flash-attention varlen.
        attentions = ["sdpa"] + ["flash_attention_2"] * (installed("flash_attn") and self.device != "cpu")
        for attention in attentions:
            for packing in (False, True):
                self.record("packing", f"{sizes.fila} {attention} {'packed' if packing else 'padded'}",
                            self.train(sizes.fila, batch_size=batch, seq_len=None, attn_implementation=attention,
                                       packing=packing, gradient_checkpointing=True))
        # 3. torch.compile and Liger, on and off (FILA, checkpointing on: the configuration that fits).
        if sizes.compile_backend is None:
            self.skip("compile", f"{sizes.fila} torch.compile", "not run on a CPU (test_bench.py compiles a step)")
        else:
            self.record("compile", f"{sizes.fila} torch.compile {sizes.compile_backend}",
                        self.train(sizes.fila, batch_size=batch, gradient_checkpointing=True,
                                   torch_compile_backend=sizes.compile_backend, warmup=max(sizes.warmup, 1)))
        if installed("liger_kernel") and self.device != "cpu":
            self.record("liger", f"{sizes.fila} liger", self.train(sizes.fila, batch_size=batch,
                                                                    gradient_checkpointing=True, use_liger=True))
        else:
            self.skip("liger", f"{sizes.fila} liger", "liger-kernel not installed or no GPU")
        # 4. The vision side alone at FILA's canvas: the hybrid encoder vs the ViT alone, and the ConvNeXt's options.
        variants = [(sizes.anyres, False, None), (sizes.fila, False, None), (sizes.fila, True, None)]
        variants += [(sizes.fila, True, sizes.compile_backend)] * (sizes.compile_backend is not None)
        for config, channels_last, compile_backend in variants:
            name = f"{config}{' channels_last' if channels_last else ''}{' compiled' if compile_backend else ''}"
            self.record("vision", name, lambda c=config, cl=channels_last, cb=compile_backend: run_vision_bench(
                c, self.device, sizes.dtype, sizes.canvas, max(sizes.steps, 3), max(sizes.warmup, 1),
                Path(tempfile.mkdtemp(dir=self.workdir)), channels_last=cl, compile_backend=cb))
        # 5. Correctness on the device: a falling loss, packing == padding, generate answers.
        self.record("correctness", "tiny FILA stage 2", lambda: run_correctness(
            self.device, "bf16" if self.device != "cpu" else "fp32", Path(tempfile.mkdtemp(dir=self.workdir))))


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
    lines = [f"# GPU check: {result['device']}", "", f"`{result['command']}`, {result['seconds']:.0f} s in all.", ""]
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


def run_suite(device: str, output: Path, command: str) -> dict:
    sizes = CPU if device == "cpu" else GPU
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fila-gpu-check-") as workdir:
        suite = Suite(sizes, device, Path(workdir))
        suite.run()
    name = torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else "CPU"
    result = {"device": name, "sizes": asdict(sizes), "command": command, "torch": torch.__version__,
              "seconds": time.perf_counter() - start, "rows": suite.rows}
    write_json_atomic(output / "gpu_check.json", result)
    write_text_atomic(output / "gpu_check.md", format_markdown(result))
    return result
