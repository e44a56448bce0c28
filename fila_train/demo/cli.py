"""``fila-train demo``: prepare the embedded default (data + tiny models) and summarise a demo run."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..utils.argument_parser import StrictParser
from ..utils.files import write_json_atomic
from ..utils.scores import format_score

DEFAULT_NUM_IMAGES = 240  # synthetic documents: enough text to pre-train the tiny LLM in seconds


def prepare(output: Path, num_images: int, seed: int, extra_text: Sequence[str] = ()) -> dict:
    """The demo's data and tiny models; ``extra_text`` (lines) joins the tokenizer's corpus and the LLM's
    pre-training text, for a job whose words the demo text lacks (the ablation's probe)."""
    from .pretrain_llm import pretrain_tiny_llm
    from .synthetic_docs import make_synthetic_dataset
    from .tiny_models import TinyFila, save_tiny_llm
    from .tokenizer import build_demo_tokenizer

    dataset = make_synthetic_dataset(output / "data", num_images=num_images, seed=seed)
    corpus = [dataset.corpus_path]
    if extra_text:
        extra_path = output / "data" / "extra_text.txt"
        extra_path.write_text("\n".join(extra_text) + "\n")
        corpus.append(extra_path)
    tokenizer = build_demo_tokenizer(corpus, output / "tokenizer")
    llm = save_tiny_llm(output / "models" / "tiny-llama", tokenizer, seed=seed)
    captions = {json.loads(line)["conversations"][1]["value"] for line in dataset.stage1_path.open()}
    texts = [line for line in dataset.corpus_path.read_text().splitlines() if line and line not in captions]
    texts += extra_text
    losses = pretrain_tiny_llm(llm, texts, seed=seed)
    print(f"pre-trained the tiny LLM on {len(texts)} text lines: loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    tiny = TinyFila()
    convnext = tiny.save_convnext(output / "models" / "tiny-convnext", seed=seed)
    paths = {
        "llm": str(llm),
        "vision_tower": str(tiny.save_clip(output / "models" / "tiny-clip", seed=seed)),
        "image_folder": str(dataset.image_dir),
        "stage1_data": str(dataset.stage1_path),
        "stage2_data": str(dataset.stage2_path),
        "eval_data": str(dataset.eval_path),
        # Training flags of the tiny FILA hybrid encoder and MMFuser, read by scripts/demo.sh.
        **tiny.hybrid_flags(convnext),
        **tiny.fuser_flags(),
    }
    write_json_atomic(output / "paths.json", paths)
    return paths


def summarize(output: Path, stages: dict[str, Path], export: Path | None = None, question: dict | None = None,
              answer_file: Path | None = None, eval_dir: Path | None = None) -> dict:
    summary: dict = {}
    for stage, folder in stages.items():
        run = json.loads((folder / "train_summary.json").read_text())
        summary[stage] = {key: run[key] for key in ("loss_first", "loss_last", "steps", "seconds",
                                                     "output_dir", "vision_encoder", "connector_type")}
        if (folder / "curves.png").is_file():
            summary[stage]["curves"] = str((folder / "curves.png").resolve())
    if export is not None:
        summary["export_dir"] = str(export.resolve())
    if answer_file is not None:
        summary["answer"] = {**(question or {}), "prediction": answer_file.read_text().strip()}
    if eval_dir is not None:
        score = json.loads((eval_dir / "score.json").read_text())
        summary["eval"] = {"metric": score["metric"], "score": score["score"], "count": score["count"],
                           "predictions": str((eval_dir / "predictions.jsonl").resolve())}
    write_json_atomic(output / "summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    parser = StrictParser(prog="fila-train demo")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="synthetic document/OCR data, tokenizer, tiny CLIP + ConvNeXt + LLM")
    make.add_argument("--output", type=Path, default=Path("playground/demo"))
    make.add_argument("--num_images", type=int, default=DEFAULT_NUM_IMAGES)
    make.add_argument("--seed", type=int, default=0)
    report = commands.add_parser("summarize", help="write summary.json from the stage outputs")
    report.add_argument("--output", type=Path, default=Path("playground/demo"))
    report.add_argument("--stage1", type=Path, required=True)
    report.add_argument("--stage2", type=Path, required=True)
    report.add_argument("--export", type=Path, help="the exported model folder")
    report.add_argument("--question", type=json.loads, help="the eval record asked with generate (JSON)")
    report.add_argument("--answer_file", type=Path, help="generate's output")
    report.add_argument("--eval", type=Path, help="fila-train eval's output folder")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for name, path in prepare(args.output, args.num_images, args.seed).items():
            print(f"{name:>19}: {path}")
        return 0
    summary = summarize(args.output, {"stage1": args.stage1, "stage2": args.stage2}, args.export, args.question,
                        args.answer_file, args.eval)
    for stage in ("stage1", "stage2"):
        values = summary[stage]
        print(f"{stage}: loss {values['loss_first']:.3f} -> {values['loss_last']:.3f} over {values['steps']} "
              f"steps in {values['seconds']:.0f} s; written to {values['output_dir']}"
              + (f" (curves: {values['curves']})" if "curves" in values else ""))
    if "answer" in summary:
        answer = summary["answer"]
        print(f"answer: {answer.get('question')!r} -> {answer['prediction']!r} (reference {answer.get('answers')})")
    if "eval" in summary:
        print(f"eval: {format_score(summary['eval']['metric'], summary['eval']['score'])} on {summary['eval']['count']} "
              f"held-out questions")
    print(f"summary: {args.output / 'summary.json'}")
    return 0
