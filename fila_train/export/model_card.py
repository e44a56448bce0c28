"""README.md of an exported folder: architecture, parameters per part, training, data mix, dtype, usage."""
from __future__ import annotations

from dataclasses import dataclass

from ..model import FilaForConditionalGeneration, known_parts
from ..model.contracts import CONNECTORS, VISION_ENCODERS
from .run_records import DATA_PLAN, RUN_ARGS, TRAIN_SUMMARY, TRAINER_STATE, RunRecords, StageRun, artifact_folder


@dataclass(frozen=True)
class CardFacts:
    """What the card reports beyond the model itself."""

    dtype: str
    source: str  # where the weights came from (CheckpointSource.describe())
    chain: list[StageRun]  # the runs that led to the weights, the exported one last (run_records.read_stage_chain)
    merged_lora: dict | None = None  # the LoRA settings merged into the LLM, if any
    llava_folder: str | None = None  # subfolder holding the transformers-native Llava copy, if written
    prompt_example: str | None = None  # the chat template's generation prompt for one image and a question


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def parameter_rows(model: FilaForConditionalGeneration) -> list[list[object]]:
    parts = model.named_parts()
    counts = {part: sum(p.numel() for _, p in parts[part]) for part in known_parts() if part in parts}
    rows: list[list[object]] = [[part, f"{count:,}"] for part, count in counts.items()]
    return rows + [["**total**", f"**{sum(counts.values()):,}**"]]


def _origin(config) -> str:
    return getattr(config, "_name_or_path", "") or "n/a"


def architecture_rows(model: FilaForConditionalGeneration) -> list[list[object]]:
    config = model.config
    text, vision = config.text_config, config.vision_config
    llm = (f"{text.model_type} ({_origin(text)}): {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
           f"vocabulary {text.vocab_size}")
    tower = (f"`{config.vision_encoder}`: CLIP-ViT ({_origin(vision)}) {vision.image_size}px / patch "
             f"{vision.patch_size}, {vision.num_hidden_layers} layers, hidden {vision.hidden_size}; features of "
             f"layer {config.vision_feature_layer}")
    encoder, connector_contract = VISION_ENCODERS.get(config.vision_encoder), CONNECTORS.get(config.connector_type)
    rows: list[list[object]] = [["LLM", llm], ["vision encoder", tower]]
    rows += [list(row) for row in encoder.card_rows(config.vision_options or {})]
    connector = f"`{config.connector_type}`"
    if config.connector_options:
        connector += f" ({', '.join(f'{k}={v}' for k, v in sorted(config.connector_options.items()))})"
    rows.append(["connector", connector])
    rows += [list(row) for row in connector_contract.card_rows(config.connector_options or {})]
    processor = model.image_processor()
    views = "" if encoder.views_per_image == "1" else f" ({encoder.views_per_image} per image)"
    rows.append(["image tokens", f"{processor.tokens_per_view} per view{views}"])
    rows.append(["conversation template", f"`{config.conversation_template}`"])
    return rows


STAGE_NAMES = {1: "1 (alignment)", 2: "2 (instruction tuning)"}


def _stage_name(run: StageRun) -> str:
    stage = run.stage()
    if stage is not None:
        return STAGE_NAMES[stage]
    # Its tuned parts are unrecorded (or its folder is gone), but the next run started from its connector.
    return "1 (its connector started the next run)" if run.artifact is not None else "unknown (no tune_parts recorded)"


def _run_folder_cell(run: StageRun) -> str:
    if run.records is None:
        return f"`{artifact_folder(run.artifact)}` (no longer there: steps, loss and data mix unknown)"
    return f"`{run.records.folder}`"


def stage_rows(chain: list[StageRun]) -> list[list[object]]:
    rows = []
    for position, run in enumerate(chain):
        exported = position == len(chain) - 1
        previous = chain[position - 1] if position else None
        started = "n/a" if previous is None else f"`{previous.artifact}`"
        parts = run.records.tune_parts() if run.records is not None else None
        progress = run.records.progress() if run.records is not None else None
        progress = progress or {"record": "n/a", "steps": "n/a", "loss_first": None, "loss_last": None}
        rows.append([_stage_name(run) + (" **exported**" if exported else ""), _run_folder_cell(run),
                     started, ", ".join(parts) if parts else "n/a", progress["steps"],
                     _loss(progress["loss_first"]), _loss(progress["loss_last"]), progress["record"]])
    return rows


def stages_section(chain: list[StageRun]) -> list[str]:
    """One row per run, earliest first: each later run started from the connector artifact of the one before."""
    lines = ["## Stages", ""]
    if len(chain) == 1 and chain[0].records.progress() is None and chain[0].records.tune_parts() is None:
        return lines + [f"No {TRAIN_SUMMARY}, {TRAINER_STATE} or {RUN_ARGS} was found for the exported weights.",
                        ""]
    headers = ["stage", "run", "started from", "tune_parts", "steps", "loss (first 10%)", "loss (last 10%)",
               "record"]
    return lines + [markdown_table(headers, stage_rows(chain)), ""]


def data_table(records: RunRecords) -> list[str]:
    plan = records.data_plan
    rows = [[source.get("name", "?"), ", ".join(map(str, source.get("annotations") or [])),
             source.get("image_root") or "", source.get("records", "n/a"), source.get("sampled", "n/a"),
             source.get("rule") or ""]
            for source in plan.get("sources", [])]
    table = markdown_table(["source", "annotations", "image root", "records", "sampled", "rule"], rows)
    mixture = f" (mixture `{plan['mixture']}`)" if plan.get("mixture") else ""
    intro = (f"From `{records.data_plan_path}`{mixture}: seed {plan.get('seed', 'n/a')}, "
             f"{plan.get('total', 'n/a')} samples in total.")
    return [intro, "", table, ""]


def data_section(chain: list[StageRun]) -> list[str]:
    lines = ["## Data mix", ""]
    for run in chain:
        if len(chain) > 1:
            lines += [f"### Stage {_stage_name(run)}: {_run_folder_cell(run)}", ""]
        if run.records is not None and run.records.data_plan is not None:
            lines += data_table(run.records)
        elif run.records is not None:
            lines += [f"No {DATA_PLAN} was found in the run's output folder.", ""]
        else:
            lines += ["Unknown: the run's output folder is no longer there.", ""]
    return lines


def usage_section(facts: CardFacts) -> list[str]:
    lines = ["## Usage", "", "```python",
             "import fila_train  # registers the fila model, config and processor with transformers",
             "from transformers import AutoModelForImageTextToText, AutoProcessor",
             "", "model = AutoModelForImageTextToText.from_pretrained(PATH)",
             "processor = AutoProcessor.from_pretrained(PATH)  # FilaProcessor: tokenizer, chat template, images",
             'messages = [{"role": "user", "content": [{"type": "image", "image": image},',
             '                                         {"type": "text", "text": "What is written here?"}]}]',
             "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,",
             '                                       return_dict=True, return_tensors="pt")',
             "```", ""]
    if facts.prompt_example is not None:
        lines += ["### Prompt format", "",
                  "The chat template (chat_template.jinja) renders exactly the string training tokenized; for one "
                  "image and a question the generation prompt is (`<image>` stands for the image's tokens):", "",
                  "```text", facts.prompt_example, "```", ""]
    if facts.llava_folder:
        folder = facts.llava_folder
        lines += [(f"`{folder}/` holds the same weights as a transformers-native `LlavaForConditionalGeneration` "
                   "(no fila_train needed):"), "", "```python",
                  "from transformers import AutoProcessor, LlavaForConditionalGeneration", "",
                  f'model = LlavaForConditionalGeneration.from_pretrained(f"{{PATH}}/{folder}")',
                  '# backend="pil" resizes with PIL as training did (the torchvision backend differs slightly)',
                  f'processor = AutoProcessor.from_pretrained(f"{{PATH}}/{folder}", backend="pil")',
                  "# apply_chat_template(..., tokenize=True) as above; a prompt rendered with tokenize=False already",
                  "# starts with BOS, so tokenize it with processor(text=..., images=..., add_special_tokens=False)",
                  "```", ""]
    return lines


def render_model_card(model: FilaForConditionalGeneration, facts: CardFacts) -> str:
    config = model.config
    lines = [f"# {config.vision_encoder} + {config.connector_type} + {config.text_config.model_type}", "",
             f"Exported by `fila-train export` from the {facts.source}. Weights are stored in **{facts.dtype}**.", ""]
    if facts.merged_lora:
        lora = facts.merged_lora
        lines += [f"LoRA adapters (r={lora.get('r')}, alpha={lora.get('alpha')}) are merged into the LLM weights.", ""]
    lines += ["## Architecture", "", markdown_table(["part", "description"], architecture_rows(model)), "",
              "## Parameters", "", markdown_table(["part", "parameters"], parameter_rows(model)), ""]
    lines += stages_section(facts.chain) + data_section(facts.chain) + usage_section(facts)
    return "\n".join(lines)
