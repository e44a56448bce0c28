"""lmms-eval, the field's harness, runs our models through ``--model fila`` (the ``lmms_eval.models`` entry point):
a local task (YAML, a utils module and a generated dataset; nothing downloaded) scores exactly what
``fila-train eval`` scores on the same questions, with batched generation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distributed_utils import REPO, build_tiny_model
from fila_train.model.builder import load_tokenizer

pytest.importorskip("lmms_eval", reason="the eval extra (lmms-eval) is part of the dev environment")
from lmms_eval.api.instance import Instance  # noqa: E402 (after the skip)

TASK = "fila_local_docs"
UTILS = '''
from pathlib import Path

from PIL import Image

from fila_train.evaluation.evaluate import SHORT_ANSWER_PROMPT
from fila_train.evaluation.metrics import get_metric

IMAGES = Path(__file__).parent / "images"


def doc_to_visual(doc):
    return [Image.open(IMAGES / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']}\\n{SHORT_ANSWER_PROMPT}"


def process_results(doc, results):
    return {"anls": get_metric("anls").score(results[0].strip(), doc["answers"])}
'''


def write_task(folder: Path, records: list[dict], image_folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "images").symlink_to(image_folder)
    (folder / "docs.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "utils.py").write_text(UTILS)
    (folder / f"{TASK}.yaml").write_text(textwrap.dedent(f"""\
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / 'docs.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answers
        generation_kwargs:
          max_new_tokens: 6
          temperature: 0
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: anls
            aggregation: mean
            higher_is_better: true
        """))
    return folder


def test_lmms_eval_scores_a_local_task_as_fila_train_eval_does(tiny_assets, tmp_path, capsys):
    from fila_train.cli import main

    model = build_tiny_model(tiny_assets, hybrid=True, fuser=False)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_assets.llm), model, 512).save_pretrained(folder)
    questions = [json.loads(line) for line in (tiny_assets.stage2_data.parent / "eval_questions.jsonl")
                 .read_text().splitlines()][:5]
    # A random model answers nothing right: give every other question its own answer as one reference.
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(q) + "\n" for q in questions))
    assert main(["eval", "--model", str(folder), "--bench", str(bench), "--image_folder", str(tiny_assets.image_folder),
                 "--metric", "anls", "--output", str(tmp_path / "ours"), "--batch_size", "2",
                 "--max_new_tokens", "6", "--dtype", "float32", "--device", "cpu"]) == 0
    predictions = [json.loads(line)["prediction"] for line in
                   (tmp_path / "ours" / "predictions.jsonl").read_text().splitlines()]
    for question, prediction in list(zip(questions, predictions))[::2]:
        question["answers"] = [prediction or "x", "zzzz"]
    bench.write_text("".join(json.dumps(q) + "\n" for q in questions))
    assert main(["eval", "--model", str(folder), "--bench", str(bench), "--image_folder", str(tiny_assets.image_folder),
                 "--metric", "anls", "--output", str(tmp_path / "ours"), "--batch_size", "2",
                 "--max_new_tokens", "6", "--dtype", "float32", "--device", "cpu"]) == 0
    ours = json.loads((tmp_path / "ours" / "score.json").read_text())
    assert ours["score"] > 0

    task = write_task(tmp_path / "task", questions, tiny_assets.image_folder)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(task))
    finished = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "fila", "--model_args",
         f"pretrained={folder},dtype=float32", "--device", "cpu", "--tasks", TASK, "--include_path", str(task),
         "--batch_size", "3", "--output_path", str(tmp_path / "lmms"), "--log_samples"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads(next((tmp_path / "lmms").rglob("*results.json")).read_text())
    score = results["results"][TASK]
    anls = next(value for key, value in score.items() if key.startswith("anls"))
    assert anls == pytest.approx(ours["score"], abs=1e-12)
    samples = [json.loads(line) for path in (tmp_path / "lmms").rglob(f"*samples_{TASK}*.jsonl")
               for line in path.read_text().splitlines()]
    answered = {sample["doc_id"]: sample["filtered_resps"] for sample in samples}
    answered = {doc: answer[0] if isinstance(answer, list) else answer for doc, answer in answered.items()}
    assert [answered[index] for index in range(len(questions))] == predictions  # the same answers, one by one


@pytest.fixture(scope="module")
def fila(tiny_assets, tmp_path_factory):
    """lmms-eval's model object for a saved tiny model (LLaVA-1.5 layout)."""
    from fila_train.evaluation import lmms_eval_model

    folder = tmp_path_factory.mktemp("lmms_model")
    model = build_tiny_model(tiny_assets, hybrid=False, fuser=False)
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_assets.llm), model, 512).save_pretrained(folder)
    return lmms_eval_model.FilaLmms(str(folder), dtype="float32", device="cpu")


def test_an_answer_of_several_paragraphs_is_not_cut_at_lmms_evals_default_stop(fila, monkeypatch):
    """A task that names no `until` gets lmms-eval's few-shot delimiter "\\n\\n" as its stop (MM-Vet and others):
    before, every answer was cut to its first paragraph, which neither `fila-train eval` nor lmms-eval's llava
    adapters do (Qwen2.5-VL's drops "\\n\\n" too); a task's own stop still cuts."""
    from fila_train.evaluation import lmms_eval_model

    answer = "1. A table of costs.\n\n2. A chart of sales. ASSISTANT: more"
    # The answer a model gives: a tiny random one writes no paragraphs.
    monkeypatch.setattr(lmms_eval_model, "generate_answers", lambda loaded, prompts, options: [answer] * len(prompts))

    def request(index: int, until: list[str]) -> Instance:
        return Instance("generate_until", ("Describe the image.", {"until": until, "max_new_tokens": 4}, None, index,
                                           "task", "test"), index, {"task": "task", "doc_id": index, "repeats": 1})

    assert fila.generate_until([request(0, ["\n\n"]), request(1, ["ASSISTANT:"])]) == [
        answer, "1. A table of costs.\n\n2. A chart of sales."]


def test_a_prompt_error_names_the_task_and_the_document(fila):
    """A context with an image placeholder but no visual: before, lmms-eval printed a PromptError that named
    neither the task nor the document."""
    placeholder = Instance("generate_until", ("<image>\nDescribe it.", {"until": []}, None, 7, "task", "test"), 2,
                           {"task": "task", "doc_id": 7, "repeats": 1})
    with pytest.raises(ValueError, match="^task task doc 7: the prompt contains 1 '<image>' placeholder"):
        fila.generate_until([placeholder])


def test_generation_settings_of_a_task_follow_lmms_evals_llava_adapter():
    """What lmms-eval's own llava adapter (models/simple/llava.py) does with a task's generation settings, read from
    its source (importing it needs LLaVA's package). Before, a task that names no max_new_tokens got 128 new tokens
    where the adapter gives 1024, cutting long answers (MM-Vet's, LLaVA-Bench's descriptions) silently, and a task's
    temperature > 0 without do_sample decoded greedily where the adapter samples."""
    import re

    import lmms_eval

    from fila_train.evaluation.lmms_eval_model import generation_options

    source = (Path(lmms_eval.__file__).parent / "models" / "simple" / "llava.py").read_text()
    (default,) = re.findall(r'gen_kwargs\["max_new_tokens"\] = (\d+)', source)
    assert 'do_sample=True if gen_kwargs["temperature"] > 0 else False' in source  # do_sample itself is not read
    assert generation_options({}).max_new_tokens == int(default)
    assert generation_options({"max_new_tokens": 16}).max_new_tokens == 16
    warm = generation_options({"temperature": 0.2, "do_sample": False, "top_p": 0.9})
    assert warm.do_sample and warm.temperature == 0.2 and warm.top_p == 0.9
    assert not generation_options({"temperature": 0, "do_sample": True}).do_sample
    assert not generation_options({"do_sample": True}).do_sample  # the adapter's default temperature is 0
