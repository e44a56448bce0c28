"""The unit every converter yields."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One question/answer pair (or one caption: question None) about one image.

    ``id`` is the source's own id (the record id becomes ``<source>_<id>``); ``image`` is
    relative to the image root the converter documents.
    """

    id: str
    image: str
    question: str | None
    answer: str
    # Every reference answer (all annotators'), for a benchmark file; empty where the source has one answer.
    answers: tuple[str, ...] = ()
