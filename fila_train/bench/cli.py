"""``fila-train bench CONFIG [options]``: training-step throughput, MFU and memory; ``--data`` for
the data pipeline; ``--dry_run`` for parameters and FLOPs without running; ``--list`` for names."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ..model.arguments import parse_canvases
from ..model.configuration import DEFAULT_ATTENTION
from ..utils.argument_parser import StrictParser
from ..utils.files import write_json_atomic
from .configs import BENCH_CONFIGS
from ..training.throughput.device import torch_threads


def parse_size(text: str) -> tuple[int, int]:
    """"1000x800" -> (1000, 800) (W x H)."""
    try:
        ((width, height),) = parse_canvases(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH (e.g. 1000x800)") from None
    return width, height


def build_parser() -> StrictParser:
    cuda = torch.cuda.is_available()
    parser = StrictParser(prog="fila-train bench", description=__doc__)
    parser.add_argument("config", nargs="?", help="a named configuration (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named configurations")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2,
                        help="1: connector side (projector, + CVFM, + fuser); 2: + LLM")
    parser.add_argument("--batch_size", type=int, default=1, help="samples per step")
    parser.add_argument("--seq_len", type=int, default=None,
                        help="tokens per sample to reach (image tokens included); default: the records as they are")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--image_size", type=parse_size, default=(1000, 800), help="WxH of the document JPEGs")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: the table for known GPUs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads on a CPU (default: torch's choice)")
    parser.add_argument("--attn_implementation", default=DEFAULT_ATTENTION, help="sdpa, eager or flash_attention_2")
    parser.add_argument("--packing", action="store_true",
                        help="padding-free packing of each batch into one row (as --packing in training)")
    parser.add_argument("--torch_compile_backend", default=None,
                        help="torch.compile the model with this backend (inductor, aot_eager, ...), as "
                             "--torch_compile_backend in training; compilation happens in the warm-up steps")
    parser.add_argument("--use_liger", action="store_true", help="Liger kernels on the LLM (needs liger-kernel, a GPU)")
    parser.add_argument("--channels_last", action="store_true",
                        help="--vision_only: the ConvNeXt in channels_last memory format")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the synthetic data and tiny models go (default: a temporary folder)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true",
                      help="build on the meta device, print parameters and FLOPs per sample, run nothing")
    mode.add_argument("--data", action="store_true", help="measure the data pipeline (ours vs the reference)")
    mode.add_argument("--vision_only", action="store_true",
                      help="the vision encoder alone, forward per image at --image_size (ms, TFLOP/s)")
    mode.add_argument("--suite", choices=("gpu_check",), default=None,
                      help="gpu_check: every measurement of scripts/gpu_check.sh (tiny configs with --device cpu); "
                           "writes gpu_check.json and gpu_check.md to --output (a folder)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="--suite: no measurement starts after this many seconds; the ones left are recorded as "
                             "not run (default: the suite's budget for the device, bench/suite.py)")
    parser.add_argument("--num_images", type=int, default=16, help="--data: documents to process")
    parser.add_argument("--repeats", type=int, default=2, help="--data: passes over the documents")
    return parser


# The options each measurement reads (besides --output). Any other option given is refused: a flag that measured
# nothing it names (--packing on a dry run, --channels_last on a training step) read as if it had. The suite's rows
# work in temporary folders of their own, so it takes no --workdir.
MODE_OPTIONS = {
    "training": {"config", "stage", "batch_size", "seq_len", "dtype", "gradient_checkpointing", "device", "steps",
                 "warmup", "image_size", "peak_tflops", "threads", "attn_implementation", "packing",
                 "torch_compile_backend", "use_liger", "workdir"},
    "dry_run": {"config", "stage", "seq_len", "workdir"},
    "vision_only": {"config", "device", "dtype", "image_size", "steps", "warmup", "threads", "channels_last",
                    "torch_compile_backend", "workdir"},
    "data": {"config", "stage", "image_size", "num_images", "repeats", "workdir"},
    "suite": {"device", "budget_s"},
}
ALWAYS = {"help", "list", "output", "dry_run", "data", "vision_only", "suite"}


def check_mode_options(parser: StrictParser, args: argparse.Namespace) -> None:
    """A one-line error naming the options given that the chosen measurement does not use."""
    mode = next((name for name in ("dry_run", "vision_only", "data", "suite") if getattr(args, name)), "training")
    unused = [action for action in parser._actions if action.dest not in ALWAYS | MODE_OPTIONS[mode]
              and getattr(args, action.dest) != action.default]
    if unused:
        names = ", ".join(action.option_strings[0] if action.option_strings else action.dest.upper()
                          for action in unused)
        which = "the training bench" if mode == "training" else f"--{mode}"
        parser.error(f"{which} does not use {names}; leave {'it' if len(unused) == 1 else 'them'} out")


def _run(args: argparse.Namespace, workdir: Path) -> tuple[dict, str]:
    from . import report

    if args.dry_run:
        from .dry_run import dry_run

        result = dry_run(args.config, args.stage, args.seq_len, workdir)
        return result, report.format_dry_run(result)
    if args.vision_only:
        from .vision import run_vision_bench

        with torch_threads(args.threads):
            result = run_vision_bench(args.config, args.device, args.dtype, args.image_size, args.steps,
                                      args.warmup, workdir, channels_last=args.channels_last,
                                      compile_backend=args.torch_compile_backend)
        return result, report.format_vision(result)
    if args.data:
        from .data_bench import run_data_bench

        result = run_data_bench(args.config, workdir, args.num_images, args.image_size, args.stage, args.repeats)
        return result, report.format_data(result)
    from .runner import BenchOptions, run_training_bench

    options = BenchOptions(
        config=args.config, stage=args.stage, batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device, steps=args.steps,
        warmup=args.warmup, image_size=args.image_size, peak_tflops=args.peak_tflops,
        attn_implementation=args.attn_implementation, packing=args.packing,
        torch_compile_backend=args.torch_compile_backend, use_liger=args.use_liger)
    with torch_threads(args.threads):
        result = run_training_bench(options, workdir)
    return result, report.format_training(result)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCH_CONFIGS.names():
            print(f"{name:<14} {BENCH_CONFIGS.get(name).description}")
        return 0
    check_mode_options(parser, args)
    if args.suite is not None:
        from .suite import run_suite, suite_outcome

        output = args.output or Path("playground/gpu_check")
        result = run_suite(args.device, output, " ".join(["fila-train bench", *argv]), args.budget_s)
        line, status = suite_outcome(result["rows"])
        print(f"wrote {output / 'gpu_check.json'} and {output / 'gpu_check.md'} ({line})")
        return status
    if args.config is None:
        parser.error(f"name a configuration: {', '.join(BENCH_CONFIGS.names())} (--list describes them)")
    BENCH_CONFIGS.get(args.config)  # an unknown name fails here, listing the known ones
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result, table = _run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="fila-bench-") as workdir:
            result, table = _run(args, Path(workdir))
    print(table)
    if args.output is not None:
        write_json_atomic(args.output, result)
        print(f"wrote {args.output}")
    return 0
