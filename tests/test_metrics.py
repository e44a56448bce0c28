"""Benchmark metrics against hand-computed cases from each benchmark's official definition."""
from __future__ import annotations

import pytest

from fila_train.evaluation.metrics import (
    METRICS,
    anls,
    exact_match,
    get_metric,
    levenshtein,
    mean_score,
    normalize_vqa_answer,
    relaxed_accuracy,
    vqa_accuracy,
)


def test_registry_is_keyed_by_exact_names():
    assert METRICS.names() == ["anls", "exact", "relaxed", "vqa"]
    assert get_metric("relaxed").score is relaxed_accuracy
    with pytest.raises(ValueError, match="unknown metric 'VQA'.*anls, exact, relaxed, vqa"):
        get_metric("VQA")


# ------------------------------------------------------------------------------------- vqa


@pytest.mark.parametrize("raw, normalized", [
    ("The Dog", "dog"),                # articles go, case folds
    ("a cat", "cat"),
    ("an apple on the table", "apple on table"),
    ("Two", "2"),                      # number words become digits
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("eleven", "eleven"),              # only zero..ten (and none) are mapped
    ("dont", "don't"),                 # a missing apostrophe is restored
    ("isnt it", "isn't it"),
    ("yall'll", "y'all'll"),
    ("somebody'd", "somebodyd"),       # the official table maps this one backwards
    ("yes!", "yes"),                   # a mark touching no space becomes a space
    ("e-mail", "e mail"),
    ("e-mail - now", "email now"),     # a mark next to a space: every such mark is deleted
    ("2.5", "2.5"),                    # a period before a digit stays
    ("e.g.", "eg"),
    ("3.", "3"),
    ("x" + "." * 40, "x" + "." * 8),   # only the first 32 periods go (re.UNICODE passed as the count)
    (" yes\tno\n", "yes no"),
    # EvalAI's first step: commas and question marks are deleted before anything else ...
    ("a,b", "ab"),                     # ... so no space is left for the article rule to see
    ("red,blue", "redblue"),
    ("red, blue", "red blue"),
    ("1,000", "1000"),
    ("1,000 e-mail", "1000 e mail"),   # no comma is left, so no digit,digit rule: "-" becomes a space
    ("what?", "what"),
    ("Why? No", "why no"),
    ("e-mail?", "e mail"),
    # ... and "'s" becomes a word of its own, also inside contractions
    ("McDonald's", "mcdonald 's"),
    ("mcdonald 's", "mcdonald 's"),
    ("it's", "it 's"),
    ("he's", "he 's"),
    ("hes", "he's"),                   # a restored contraction keeps its "'s"
    ("don't", "don't"),                # other apostrophes are not touched
])
def test_vqa_normalization(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


@pytest.mark.parametrize("matching, expected", [
    # 10 human answers, `matching` of them equal to the prediction. Leaving out a matching answer
    # leaves matching - 1 matches, leaving out another leaves `matching`; each is min(1, m / 3).
    (0, 0.0),
    (1, (1 * 0 + 9 * (1 / 3)) / 10),          # 0.3
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),    # 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),          # 0.9
    (4, 1.0),
    (10, 1.0),
])
def test_vqa_leave_one_out_arithmetic(matching, expected):
    answers = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_vqa_normalizes_prediction_and_answers():
    answers = ["Two", "2", "two."] + ["three"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy("The two!", answers) == pytest.approx(0.9)
    assert vqa_accuracy("3", answers) == pytest.approx(1.0)


def test_vqa_commas_question_marks_and_possessives_match_as_evalai():
    assert vqa_accuracy("mcdonald's", ["mcdonald 's"] * 10) == 1.0
    assert vqa_accuracy("McDonald's", ["mcdonald's"] * 10) == 1.0
    assert vqa_accuracy("mcdonald's", ["mcdonalds"] * 10) == 0.0
    assert vqa_accuracy("a,b", ["ab"] * 10) == 1.0
    assert vqa_accuracy("a,b", ["b"] * 10) == 0.0
    # Two of ten answers are "red, blue" -> "red blue" and match; "redblue" would not.
    answers = ["red, blue", "red blue?"] + ["green"] * 8
    assert vqa_accuracy("Red blue", answers) == pytest.approx(0.6)
    assert vqa_accuracy("red,blue", answers) == 0.0


def test_vqa_needs_ten_answers():
    metric = get_metric("vqa")
    metric.check_answers(["a"] * 10)
    with pytest.raises(ValueError, match="needs 10 ground-truth answers per question, got 1"):
        metric.check_answers(["yes"])
    for name in ("anls", "relaxed", "exact"):
        get_metric(name).check_answers(["one answer"])


# ------------------------------------------------------------------------------------ anls


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls_lowercases_and_strips():
    assert anls("  Denver Broncos ", ["denver broncos"]) == 1.0


def test_anls_collapses_whitespace():
    assert anls("hello  world", ["hello world"]) == 1.0
    assert anls("Hello\tWorld", [" hello\n world "]) == 1.0
    assert anls("helloworld", ["hello world"]) == pytest.approx(1 - 1 / 11)


def test_anls_divides_by_the_raw_length():
    # Distance 6 between "abcdefghij" and "abcdxxxxxx"; over the normalised length 10 that is 0.4,
    # below the threshold, but the official scorer divides by the raw prediction's 12 characters.
    assert anls("abcdXXXXXX", ["abcdefghij"]) == 0.0
    assert anls("abcdXXXXXX  ", ["abcdefghij"]) == pytest.approx(0.5)
    assert anls("abcdXXXXXX", ["  abcdefghij   "]) == pytest.approx(1 - 6 / 15)  # 0.6


def test_anls_threshold():
    target = "abcdefghijklmnopqrst"  # 20 characters
    assert anls("abcdefghijk" + "X" * 9, [target]) == pytest.approx(1 - 9 / 20)  # 0.55: kept
    assert anls("abcdefghij" + "X" * 10, [target]) == pytest.approx(0.5)  # exactly 0.5: kept
    assert anls("abcdefghi" + "X" * 11, [target]) == 0.0  # 0.45: below the threshold counts 0


def test_anls_takes_the_best_answer():
    # Lengths differ: distance 2 over the longer length 5.
    assert anls("abce", ["zzzz", "abcd", "abcdef"]) == pytest.approx(0.75)
    assert anls("abcdX", ["abcd"]) == pytest.approx(1 - 1 / 5)


# --------------------------------------------------------------------------------- relaxed


@pytest.mark.parametrize("prediction, answer, correct", [
    ("105", "100", True),       # exactly 5% above
    ("95", "100", True),        # exactly 5% below
    ("21", "20", True),
    ("105.1", "100", False),
    ("94.9", "100", False),
    (" 100 ", "100.0", True),
    ("46%", "45%", True),       # 0.46 vs 0.45: 2.2%
    ("0.45", "45%", True),      # "x%" is x / 100 ...
    ("45", "45%", False),       # ... so a bare 45 is 100 times too large (as in ChartQA's evaluation)
    ("1,000", "1000", False),   # thousands separators are not numbers: compared as text
    ("1,000", "1,000", True),
    ("0", "0", True),           # a zero target is compared as text
    ("0.0", "0", False),
    ("Yes", "yes", True),
    (" Blue ", "blue", True),
    ("blue", "red", False),
    ("12 apples", "12", False),
])
def test_relaxed_correctness(prediction, answer, correct):
    assert relaxed_accuracy(prediction, [answer]) == float(correct)


def test_relaxed_any_answer():
    assert relaxed_accuracy("50", ["fifty", "51"]) == 1.0
    assert relaxed_accuracy("50", ["fifty", "60"]) == 0.0


# ----------------------------------------------------------------------------------- exact


def test_exact_match():
    assert exact_match(" yes ", ["no", "yes"]) == 1.0
    assert exact_match("Yes", ["yes"]) == 0.0


def test_mean_score():
    assert mean_score([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        mean_score([])


# ------------------------------------------------------------- against lmms-eval's implementations
def fuzzed_cases(count: int, seed: int = 0):
    """Predictions and answers from pieces that stress each normalisation: articles, number words, contractions,
    possessives, punctuation next to spaces or not, percents and thousands separators, case that changes length
    when upper-cased (ß, ﬁ), stray whitespace and empty strings."""
    import random

    pieces = ["the", "a", "an", "Two", "two", "none", "ten", "10", "1,000", "12%", "0", "0.0", "-3", "1e3", "nan",
              "inf", "dont", "isnt", "he's", "mcdonald's", "red/blue", "red / blue", "3.5", "3.50", "U.S.", "e.g.",
              "yes", "café", "ß", "ﬁle", "İ", "\t", "\n", "?", ",", "!", "(x)", "x-y", "$5", "100.", ".5", "a.b",
              "#1", "Dog", "dogs", "dog.", "it's", "its", "somebody'd", "y'all", "yall", ":", ";", "*", "="]
    rng = random.Random(seed)

    def phrase() -> str:
        words = rng.choice([0, 1, 1, 1, 2, 3])
        return rng.choice(["", " ", "  "]).join(rng.choice(pieces) for _ in range(words)) if words else rng.choice(["", " "])

    for _ in range(count):
        prediction, answers = phrase(), [phrase() for _ in range(rng.choice([1, 2, 3]))]
        yield prediction, answers, [rng.choice([*answers, prediction, phrase()]) for _ in range(10)]


def test_scores_equal_lmms_eval_s_own_implementations():
    """The reference the field reports with: lmms-eval's ANLS (DocVQA, InfoVQA), TextVQA's EvalAI scorer and
    ChartQA's relaxed correctness, on 3,000 fuzzed questions."""
    pytest.importorskip("lmms_eval", reason="the eval extra (lmms-eval) is part of the dev environment")
    from lmms_eval.api.metrics import anls as lmms_anls
    from lmms_eval.tasks.chartqa.utils import relaxed_correctness as lmms_relaxed
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    for prediction, answers, ten in fuzzed_cases(3000):
        assert anls(prediction, answers) == pytest.approx(lmms_anls(answers, [prediction])["anls"], abs=1e-12), \
            (prediction, answers)
        doc = {"answers": list(ten), "question_id": 0}  # the scorer normalises the answers in place
        assert vqa_accuracy(prediction, ten) == pytest.approx(
            textvqa_process_results(doc, [prediction])["exact_match"], abs=1e-12), (prediction, ten)
        # lmms-eval compares the texts as given; ours strips both (generated answers end in a newline or space).
        stripped, answer = prediction.strip(), answers[0].strip()
        assert relaxed_accuracy(stripped, [answer]) == float(lmms_relaxed(stripped, answer)), (stripped, answer)
