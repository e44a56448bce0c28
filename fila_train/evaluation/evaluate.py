"""Batched greedy answers to benchmark questions, scored per question and written atomically."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..data.images import image_size, load_rgb_image
from ..inference.generation import GenerationOptions, Prompt, build_prompt, generate_answers, prompt_ids
from ..inference.loading import InferenceModel
from ..utils.files import write_json_atomic, write_jsonl_atomic
from .answer_log import AnswerLog, answers_key, question_fingerprint
from .bench import BenchError, BenchQuestion
from .metrics import Metric, mean_score

LLAVA_ANSWERS_FILE = "answers.jsonl"  # LLaVA's answer-file format, beside our predictions.jsonl

# LLaVA-1.5's instruction for short-answer benchmarks (TextVQA, VQAv2, DocVQA, ChartQA, ...).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


def with_instruction(question: str, instruction: str | None) -> str:
    if not instruction or question.rstrip().endswith(instruction):
        return question  # converted LLaVA files may carry it already
    return f"{question}\n{instruction}"


def prompt_text(item: BenchQuestion, instruction: str | None) -> str:
    return item.question if item.verbatim else with_instruction(item.question, instruction)


def _prompt(loaded: InferenceModel, item: BenchQuestion, image_folder: Path | None,
            instruction: str | None) -> Prompt:
    image: Image.Image | None = None
    if item.image is not None:
        try:
            image = load_rgb_image(Path(image_folder) / item.image)
        except ValueError as error:
            raise BenchError(f"{item.where}: field 'image': {error}") from None
    try:
        return build_prompt(loaded, prompt_text(item, instruction), image)
    except ValueError as error:
        raise BenchError(f"{item.where}: field 'question': {error}") from None


def check_prompts(loaded: InferenceModel, questions: list[BenchQuestion], image_folder: Path | None,
                  instruction: str | None) -> None:
    """Every question's prompt, from its text and its image's header, before any answer is generated: a question
    the template refuses (a special token, an <image> without an image) or an image whose header is bad fails
    in seconds; before, it failed when its batch came, and the answers before it were lost."""
    for item in tqdm(questions, desc="checking prompts", unit="question", mininterval=2, disable=len(questions) < 1000):
        image_tokens = None
        if item.image is not None:
            try:
                image_tokens = loaded.processor.num_image_tokens_for_size(*image_size(Path(image_folder) / item.image))
            except ValueError as error:
                raise BenchError(f"{item.where}: field 'image': {error}") from None
        try:
            prompt_ids(loaded, prompt_text(item, instruction), image_tokens)
        except ValueError as error:
            raise BenchError(f"{item.where}: field 'question': {error}") from None


def predict(loaded: InferenceModel, questions: list[BenchQuestion], image_folder: Path | None,
            max_new_tokens: int, batch_size: int, instruction: str | None, output: Path) -> list[str]:
    """Greedy answers in question order, ``batch_size`` prompts per left-padded batch. Answers are kept in
    ``output`` as they come (answer_log), and a rerun after a stop starts where it stopped."""
    check_prompts(loaded, questions, image_folder, instruction)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    key = answers_key(Path(loaded.path), f"{loaded.model.dtype} on {loaded.device}",
                      {"instruction": instruction, "max_new_tokens": max_new_tokens, "batch_size": batch_size})
    log = AnswerLog(output, key, [question_fingerprint(item, image_folder) for item in questions], batch_size)
    predictions = list(log.kept)
    with log, tqdm(total=len(questions), initial=len(predictions), desc="eval", unit="question") as progress:
        for start in range(len(predictions), len(questions), batch_size):
            batch = questions[start:start + batch_size]
            try:  # only the header was read up front: a cut image body fails here
                prompts = [_prompt(loaded, item, image_folder, instruction) for item in batch]
            except BenchError as error:
                raise BenchError(f"{error} (the {start} answers before its batch are kept in {log.path}: the same "
                                 f"command goes on from there)") from None
            answers = generate_answers(loaded, prompts, options)
            log.append(answers)
            predictions.extend(answers)
            progress.update(len(batch))
    return predictions


@dataclass
class EvalResult:
    rows: list[dict]  # predictions.jsonl
    summary: dict  # score.json


def score(metric: Metric, questions: list[BenchQuestion], predictions: list[str], bench: str,
          model: str) -> EvalResult:
    rows = [{"id": item.id, "question": item.question, "prediction": prediction, "answers": item.answers,
             "score": metric.score(prediction, item.answers)}
            for item, prediction in zip(questions, predictions, strict=True)]
    summary = {"metric": metric.name, "score": mean_score([row["score"] for row in rows]), "count": len(rows),
               "bench": bench, "model": model}
    return EvalResult(rows, summary)


def answer_rows(questions: list[BenchQuestion], predictions: list[str], model: str) -> list[dict]:
    """LLaVA's answer-file records (``llava/eval/model_vqa_loader.py``), which its per-benchmark scoring scripts
    and submission converters read. ``answer_id`` is derived from model and question, so a rerun writes the
    same file (LLaVA draws a random one)."""
    model_id = Path(model).name
    return [{"question_id": item.source_id, "prompt": item.question, "text": prediction,
             "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{item.id}").hex, "model_id": model_id,
             "metadata": {}}
            for item, prediction in zip(questions, predictions, strict=True)]


def write_answers(questions: list[BenchQuestion], predictions: list[str], model: str, output: Path) -> Path:
    path = output / LLAVA_ANSWERS_FILE
    write_jsonl_atomic(path, answer_rows(questions, predictions, model))
    return path


def write_results(result: EvalResult, output: Path) -> None:
    write_jsonl_atomic(output / "predictions.jsonl", result.rows)
    write_json_atomic(output / "score.json", result.summary)
