"""The printed tables of ``fila-train bench`` (the JSON written by --output holds the same values)."""
from __future__ import annotations

from typing import Any

from ..utils.tables import format_table


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "n/a (no peak known for this device; give --peak_tflops)" if value is None else f"{100 * value:.1f}%"


def _parameters(result: dict[str, Any]) -> list[list[str]]:
    return [[f"params {part}", f"{row['parameters']:,} ({row['trainable']:,} trained)"]
            for part, row in result["parameters"].items()]


def format_training(result: dict[str, Any]) -> str:
    by_part = result["model_tflops_per_step_by_part"]
    rows = [
        ["configuration", f"{result['config']}: {result['description']}"],
        ["stage / tuned parts", f"{result['stage']} / {','.join(result['tune_parts'])}"],
        ["device", result["device"]],
        ["parallelism", result["parallelism"]],
        ["dtype (matmul peak column)", f"{result['dtype']} ({result['matmul_precision']})"],
        ["optimizer", result["optimizer"]],
        ["batch size", str(result["batch_size"])],
        ["tokens / sample (image tokens)", f"{result['tokens_per_sample']:.0f} ({result['image_tokens_per_sample']:.0f})"],
        ["padding", f"{100 * result['padding_fraction']:.1f}%" + (" (packed)" if result.get("packing") else "")],
        ["attention", result["attn_implementation"]],
        ["gradient checkpointing", str(result["gradient_checkpointing"])],
        ["torch.compile", result.get("torch_compile_backend") or "off"],
        ["steps (warm-up)", f"{result['steps']} ({result['warmup_steps']})"],
        ["median step time", f"{result['median_step_seconds']:.4g} s"],
        ["samples/s", _number(result["samples_per_second"])],
        ["tokens/s per device", _number(result["tokens_per_second_per_device"])],
        ["model TFLOPs / step", f"{result['model_tflops_per_step']:.4g} (LLM {by_part['llm']:.4g}, "
                                f"vision {by_part['vision']:.4g}, connector {by_part['connector']:.4g})"],
        ["model TFLOP/s", _number(result["model_tflops_per_second"])],
        ["peak TFLOP/s", _number(result["peak_tflops"])],
        ["MFU", _percent(result["mfu"])],
        ["peak memory", f"{result['peak_memory_gib']:.2f} GiB ({result['peak_memory_source']})"],
        ["loss first / last", f"{result['loss_first']:.4f} / {result['loss_last']:.4f}"],
    ]
    return format_table(["fila-train bench", "value"], rows + _parameters(result))


def format_dry_run(result: dict[str, Any]) -> str:
    llm, sample = result["llm"], result["model_tflops_per_sample"]
    vision = ", ".join(f"{k} {v:.4g}" for k, v in result["vision_forward_tflops_per_image"].items() if v)
    present = {k for k, v in result["vision_forward_tflops_per_image"].items() if v} | {"llm"}
    multipliers = ", ".join(f"{k} x{v}" for k, v in result["stage_multipliers"].items() if k in present)
    rows = [
        ["configuration", f"{result['config']}: {result['description']}"],
        ["stage / tuned parts", f"{result['stage']} / {','.join(result['tune_parts'])}"],
        ["LLM N (no input embedding) / L / d", f"{llm['params']:,} / {llm['layers']} / {llm['attention_width']}"],
        ["image canvas (views, tokens)", f"{result['canvas'][0]}x{result['canvas'][1]} "
                                         f"({result['views_per_image']}, {result['image_tokens']})"],
        ["vision forward TFLOPs / image", vision],
        ["cost in forwards", multipliers],
        ["tokens / sample", str(result["tokens_per_sample"])],
        ["model TFLOPs / sample", f"{sample['total']:.4g} (LLM {sample['llm']:.4g}, vision {sample['vision']:.4g}, "
                                  f"connector {sample['connector']:.4g})"],
    ]
    return format_table(["fila-train bench --dry_run", "value"], rows + _parameters(result))


def format_data(result: dict[str, Any]) -> str:
    ours, baseline = result["ours"], result["baseline"]
    rows = [
        [f"ours ({result['processor']})", f"{ours['images_per_second']:.3g}", f"{ours['decode_ms']:.1f}",
         f"{ours['preprocess_ms']:.1f}"],
        ["reference (LLaVA-NeXT style)", f"{baseline['images_per_second']:.3g}", f"{baseline['decode_ms']:.1f}",
         f"{baseline['preprocess_ms']:.1f}"],
    ]
    width, height = result["image_size"]
    head = (f"{result['config']} ({result['vision_encoder']}): {result['images']} document JPEGs {width}x{height} "
            f"x {result['repeats']} -> canvas {result['canvas'][0]}x{result['canvas'][1]}, "
            f"{result['views_per_image']} views, {result['image_tokens']} image tokens; 1 worker, 1 torch thread; "
            f"medians per image")
    tail = [f"ours / reference: {result['speedup_over_baseline']:.2f}x; difference between their tensors: "
            f"mean {result['mean_abs_difference']:.2e}, largest {result['max_abs_difference']:.2e}",
            f"whole samples (decode + process + tokenize): {result['samples_per_second']:.3g} samples/s per worker",
            f"tokenization alone: {result['tokenization']['samples_per_second']:.4g} samples/s, "
            f"{result['tokenization']['text_tokens_per_second']:.4g} text tokens/s per worker"]
    return "\n".join([head, format_table(["pipeline", "images/s", "decode ms", "preprocess ms"], rows), *tail])


def format_vision(result: dict[str, Any]) -> str:
    width, height = result["image_size"]
    rows = [["configuration", f"{result['config']} ({result['vision_encoder']})"], ["device", result["device"]],
            ["dtype", result["dtype"]], ["image", f"{width}x{height}, {result['image_tokens']} image tokens"],
            ["ConvNeXt channels_last", str(result["channels_last"])],
            ["torch.compile", result["torch_compile_backend"] or "off"],
            ["ms per image (median)", f"{result['ms_per_image']:.2f}"],
            ["TFLOP per image (counted)", _number(result["tflops_per_image"])],
            ["TFLOP/s", _number(result["tflops_per_second"])],
            ["peak memory GiB", _number(result["peak_memory_gib"])]]
    return format_table(["vision forward (frozen encoder)", "value"], rows)
