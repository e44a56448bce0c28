"""Benchmark metrics, one prediction against its ground-truth answers -> a score in [0, 1].

Each follows its benchmark's official evaluation, quirks included, so our numbers are comparable
with published ones:

- ``vqa`` (TextVQA, VQAv2, VizWiz): the TextVQA/EvalAI answer normalisation of the prediction and
  every human answer, and the average over the 10 leave-one-out subsets of min(1, matches / 3).
- ``anls`` (DocVQA, InfographicVQA): 1 - Levenshtein distance between the lowercased, stripped,
  whitespace-collapsed texts over the longer raw length, 0 below 0.5, best over the answers.
- ``relaxed`` (ChartQA): numbers within 5% relative change of a non-zero target, other answers
  equal after lowercasing (pix2struct's ``relaxed_correctness``, which LLaVA and lmms-eval use).
- ``exact``: the stripped prediction equals a stripped answer.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..utils.registry import Registry


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[str, Sequence[str]], float]
    answers_per_question: int | None = None  # the definition needs exactly this many answers

    def check_answers(self, answers: Sequence[str]) -> None:
        """ValueError if ``answers`` cannot be scored by this metric's definition."""
        if self.answers_per_question is not None and len(answers) != self.answers_per_question:
            raise ValueError(f"metric {self.name!r} needs {self.answers_per_question} ground-truth answers per "
                             f"question, got {len(answers)}")


METRICS: Registry[Metric] = Registry("metric")


def register(metric: Metric) -> Metric:
    return METRICS.register(metric.name)(metric)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def mean_score(scores: Sequence[float]) -> float:
    if not scores:
        raise ValueError("no scores to average (the benchmark is empty)")
    return sum(scores) / len(scores)


# ------------------------------------------------------------------------------------- vqa
# The TextVQA/EvalAI answer processor (MMF's EvalAIAnswerProcessor): VQAv2's vqaEval.py rules
# (GT-Vision-Lab/VQA) behind one extra first step, applied alike to the prediction and every answer.
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# vqaEval.py's list also has "," and "?", which the first step has already removed; with no comma
# left, its "delete every mark when digit,digit occurs" rule can never fire either.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", "!")
# As written in vqaEval.py: "(?!<=\d)" is a look-ahead, not a look-behind, so every period that is
# not followed by a digit is removed ("2.5" keeps its point, "e.g." loses both) ...
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# ... but only the first 32: re.UNICODE (= 32) is passed where sub() takes its count.
_PERIODS_REMOVED = 32
# The contractions vqaEval.py restores: each spelling with exactly one apostrophe missing maps to
# the full form. (Its table also lists capitalised "I'm"/"I've" keys, which never match after
# lowercasing, and identity entries; they are left out as they change nothing.)
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've "
    "shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll "
    "someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's "
    "what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's "
    "won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()
_CONTRACTIONS = {full[:i] + full[i + 1:]: full
                 for full in _CONTRACTED for i, char in enumerate(full) if char == "'"}
_CONTRACTIONS["somebody'd"] = "somebodyd"  # sic: vqaEval.py maps this one the wrong way round


def _evalai_first_step(text: str) -> str:
    # Commas and question marks go outright ("a,b" -> "ab") and a possessive becomes its own word
    # ("mcdonald's" -> "mcdonald 's"), so "he's" stays "he 's" while "hes" becomes "he's".
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _vqa_punctuation(text: str) -> str:
    # A mark next to a space is deleted, otherwise it becomes a space, decided on the input text:
    # "red/blue" -> "red blue", "red / blue" -> "red  blue".
    out = text
    for mark in _PUNCTUATION:
        spaced = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if spaced else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def _vqa_digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The TextVQA/EvalAI answer processing: case, commas, question marks and possessives, then
    VQA's whitespace, punctuation, number words, articles and contractions."""
    text = _evalai_first_step(text).replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the 10 leave-one-out subsets of the human answers of min(1, matches / 3), the
    prediction and every answer normalised alike (TextVQA's evaluator, also EvalAI's for VQAv2)."""
    predicted = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(answer) == predicted for answer in answers]
    total = sum(matches)
    # Leaving answer i out removes its own match, if any, from the count.
    return sum(min(1.0, (total - left_out) / 3) for left_out in matches) / len(matches)


register(Metric("vqa", vqa_accuracy, answers_per_question=10))


# ------------------------------------------------------------------------------------ anls
ANLS_THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _anls_text(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str]) -> float:
    """Best 1 - normalised Levenshtein distance over the answers; below the threshold it counts 0
    (the DocVQA/InfographicVQA scorer keeps a similarity of exactly 0.5)."""
    predicted = _anls_text(prediction)
    best = 0.0
    for answer in answers:
        # As in the official scorer the distance is between the normalised texts but divided by
        # the longer RAW text (upper-cased): stray whitespace raises a near miss's similarity.
        length = max(len(answer.upper()), len(prediction.upper()))
        best = max(best, 1.0 - (levenshtein(_anls_text(answer), predicted) / length if length else 0.0))
    return best if best >= ANLS_THRESHOLD else 0.0


register(Metric("anls", anls))


# --------------------------------------------------------------------------------- relaxed
RELAXED_TOLERANCE = 0.05


def _chartqa_float(text: str) -> float | None:
    """ChartQA's number parsing: Python float, "x%" means x / 100; "1,000" is not a number."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, answer: str) -> bool:
    predicted, target = prediction.strip(), answer.strip()
    predicted_number, target_number = _chartqa_float(predicted), _chartqa_float(target)
    if predicted_number is not None and target_number:  # a zero target falls back to text
        return abs(predicted_number - target_number) / abs(target_number) <= RELAXED_TOLERANCE
    return predicted.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str]) -> float:
    return float(any(relaxed_correctness(prediction, answer) for answer in answers))


register(Metric("relaxed", relaxed_accuracy))


# ----------------------------------------------------------------------------------- exact
def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(prediction.strip() in {answer.strip() for answer in answers})


register(Metric("exact", exact_match))
