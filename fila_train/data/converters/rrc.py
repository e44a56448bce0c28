"""Robust Reading Competition releases (rrc.cvc.uab.es): SP-DocVQA, InfographicVQA, ST-VQA.

All three are one JSON object whose ``data`` list holds one question per entry with a list
of annotator answers. Test files carry no answers and are reported as such.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, ClassVar, Iterator

from .base import Converter, Sample, register
from .fields import answer_list, identifier, most_common, text, with_id


def first(answers: list[str]) -> str:
    return answers[0]


class QuestionListConverter(Converter):
    """One question per ``data`` entry; the subclass names its id and image fields and its answer."""

    id_field: ClassVar[str]
    image_field: ClassVar[str]
    choose_answer: ClassVar[Callable[[list[str]], str]]

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        where = with_id(where, raw, self.id_field)
        answers = answer_list(raw, "answers", where)
        yield Sample(id=identifier(raw, self.id_field, where), image=text(raw, self.image_field, where),
                     question=text(raw, "question", where), answer=type(self).choose_answer(answers),
                     answers=tuple(answers))


@register
class DocVQA(QuestionListConverter):
    """SP-DocVQA (train_v1.0_withQT.json, val_v1.0_withQT.json, or the older *_v1.0.json).

    Entry: questionId, question, image ("documents/<page>.png"), answers (list), plus
    question_types, docId, ucsf_document_id, ucsf_document_page_no, data_split.
    Image root: the folder that holds ``documents/`` (the split folder of the release).
    Answer: the first non-empty answer. DocVQA's answers are alternative spellings of one
    span (scored by ANLS against all of them), and the first is the one the question writer gave.
    """

    name = "docvqa"
    splits = ("train", "val")
    bench_splits = ("val",)
    default_split = "train"
    file_patterns = ("{split}_v1.0_withQT.json", "{split}_v1.0.json")
    id_field, image_field, choose_answer = "questionId", "image", first


@register
class InfographicVQA(QuestionListConverter):
    """InfographicVQA (infographicsVQA_train_v1.0.json, infographicsVQA_val_v1.0_withQT.json).

    Entry: questionId, question, image_local_name ("<n>.jpeg"), answers (list), plus image_url,
    answer_type, evidence, operation/reasoning, ocr_output_file.
    Image root: the folder of the release's images (infographicsvqa_images/).
    Answer: the first non-empty answer (as for DocVQA: alternatives of one answer, ANLS-scored).
    """

    name = "infographicvqa"
    splits = ("train", "val")
    bench_splits = ("val",)
    default_split = "train"
    # One file per split: a folder may also hold the earlier file without question types, with the same questions.
    file_patterns = ("infographicsVQA_{split}_v1.0_withQT.json", "infographicsVQA_{split}_v1.0.json")
    id_field, image_field, choose_answer = "questionId", "image_local_name", first


@register
class STVQA(QuestionListConverter):
    """ST-VQA task 3 (train_task_3.json).

    Entry: question_id, question, answers (list), file_path ("<dataset>/<file_name>"), plus
    dataset, file_name, set_name. Image root: the folder the release's file_path values are
    relative to (the training images archive unpacked as ``train/``, one subfolder per source dataset).
    Answer: the most common answer among annotators; a tie goes to the one listed first.
    """

    name = "stvqa"
    splits = ("train",)
    default_split = "train"
    file_patterns = ("{split}_task_3.json",)
    id_field, image_field, choose_answer = "question_id", "file_path", most_common
