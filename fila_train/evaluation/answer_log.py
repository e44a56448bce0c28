"""Answers kept as they come, so that an eval stopped part-way (an image whose body is cut, Ctrl-C, out of
memory) goes on from there when run again, instead of answering every question again.

OUTPUT/answers_so_far.jsonl holds a first line with what every answer depends on (the model folder's files,
the dtype and device, the prompt and generation settings), then one line per answer with its question's
fingerprint (id, text, image file), written after each batch. A rerun keeps the answers of the whole batches
whose questions are unchanged and starts at the next batch: those are the batches an uninterrupted run makes,
so it gives the same answers. The image that stopped the run can be mended in between; a changed model or
setting starts afresh. The file is removed once the results of every bench of the command are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import IO

from ..inference.loading import ModelLoadError
from ..model.llava_layout import local_file
from ..utils.files import replace_atomically
from .bench import BenchQuestion

logger = logging.getLogger(__name__)

ANSWER_LOG_FILE = "answers_so_far.jsonl"
FORMAT = 1


def files_fingerprint(paths: list[Path]) -> str:
    """Name, size and modification time of each file: a retrained model or a replaced image changes it."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            facts = path.stat()
            digest.update(f"{path.name}\0{facts.st_size}\0{facts.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path.name}\0missing\n".encode())
    return digest.hexdigest()


def question_fingerprint(item: BenchQuestion, image_folder: Path | None) -> str:
    image = [Path(image_folder) / item.image] if item.image is not None else []
    facts = [item.id, item.question, item.verbatim, item.image, files_fingerprint(image)]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def model_files_folder(model: str | Path) -> Path:
    """The folder of the model's files: ``model`` itself, or for a hub id (a LLaVA release) its snapshot in the hub
    cache, which a new revision replaces."""
    if Path(model).is_dir():
        return Path(model)
    config = local_file(str(model), "config.json")  # the loader found it there
    if config is None:
        raise ModelLoadError(f"{model}: neither a model folder nor a hub model in the cache")
    return config.parent


def model_name(model: str | Path) -> str:
    """How results name the model: a local folder by its absolute path, a hub model (a LLaVA release) by its id,
    which resolved against the working folder would name a local folder that is not there."""
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def answers_key(model_folder: Path, model_setup: str, settings: dict) -> dict:
    """What every answer depends on; ``model_setup`` is the dtype and device the model runs in."""
    # This file itself changes between the two runs when the output is the model folder
    model_files = sorted(path for path in model_files_folder(model_folder).iterdir()
                         if path.is_file() and path.name != ANSWER_LOG_FILE)
    return {"format": FORMAT, "model": model_name(model_folder), "model_files": files_fingerprint(model_files),
            "model_setup": model_setup, **settings}


class AnswerLog:
    """The answers of one bench in one output folder, appended batch by batch."""

    def __init__(self, output: Path, key: dict, questions: list[str], batch_size: int):
        """``questions``: each question's fingerprint, in order."""
        self.path = Path(output) / ANSWER_LOG_FILE
        # The question count too: a last, short batch is only that batch in a run of as many questions.
        self.key = {**key, "questions": len(questions)}
        self.questions = questions
        self.kept = whole_batches(self._read(), batch_size, len(questions))
        self.handle: IO[str] | None = None
        self.written = 0  # answers in the file

    def _read(self) -> list[str]:
        try:
            # "\n" only: an answer may hold U+2028 and the like, which splitlines() would cut at
            lines = self.path.read_text(encoding="utf-8").split("\n")
        except (FileNotFoundError, UnicodeDecodeError):
            return []
        if len(lines) < 2 or not self._matches(lines[0]):
            return []
        answers: list[str] = []
        for line, question in zip(lines[1:-1], self.questions):  # the last piece: after the last "\n"
            try:  # a line cut by the stop, or a changed question, ends what is kept
                record = json.loads(line)
            except ValueError:
                record = {}
            if record.get("question") != question or not isinstance(record.get("answer"), str):
                break
            answers.append(record["answer"])
        return answers

    def _matches(self, line: str) -> bool:
        try:
            return json.loads(line) == self.key
        except ValueError:
            return False

    def __enter__(self) -> AnswerLog:
        """Rewrite the file with what is kept (dropping a cut line, or another run's answers), then append."""
        lines = [json.dumps(self.key) + "\n", *map(self.line, self.questions, self.kept)]
        replace_atomically(self.path, lambda temporary: Path(temporary).write_text("".join(lines), encoding="utf-8"))
        self.handle = open(self.path, "a", encoding="utf-8")
        self.written = len(self.kept)
        if self.kept:
            logger.info("keeping %d answers from %s (an earlier run stopped there)", len(self.kept), self.path)
        return self

    def append(self, answers: list[str]) -> None:
        assert self.handle is not None
        start = self.written
        self.handle.writelines(map(self.line, self.questions[start:start + len(answers)], answers))
        self.written += len(answers)
        self.handle.flush()

    @staticmethod
    def line(question: str, answer: str) -> str:
        return json.dumps({"question": question, "answer": answer}, ensure_ascii=False) + "\n"

    def __exit__(self, *exc_info) -> None:
        assert self.handle is not None
        self.handle.close()


def whole_batches(answers: list[str], batch_size: int, total: int) -> list[str]:
    """Only whole batches are kept (the last one may be short): a rerun then batches as an uninterrupted run."""
    if len(answers) >= total:
        return answers[:total]
    return answers[:len(answers) // batch_size * batch_size]
