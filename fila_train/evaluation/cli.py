"""``fila-train eval``: answer a benchmark file's questions with a saved model, and score them.

Several --bench files share one model load; each writes to OUTPUT/<bench name> (OUTPUT default: MODEL/eval).
Per bench: OUTPUT/predictions.jsonl (id, question, prediction, answers, score per question),
OUTPUT/score.json (metric, score = mean per-question score in [0, 1], count, bench, model) and
OUTPUT/answers.jsonl in LLaVA's answer-file format. A LLaVA question file (question_id, image, text; no
answers) is answered without --metric: answers.jsonl only. Answers are kept in OUTPUT/answers_so_far.jsonl as
they come, so a run that stops part-way goes on from there when the same command runs again (answer_log.py).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path


from ..data.annotations import AnnotationError
from ..inference.loading import ModelLoadError, ModelOptions
from ..model.llava_layout import local_file
from ..utils.argument_parser import StrictArgumentParser
from ..utils.errors import ConfigError
from ..utils.files import nearest_existing
from ..utils.scores import format_score
from .answer_log import ANSWER_LOG_FILE, model_name
from .bench import BenchError, read_bench
from .evaluate import SHORT_ANSWER_PROMPT, predict, score, write_answers, write_results
from .metrics import METRICS, get_metric

logger = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    bench: list[str] = field(metadata={"help": "benchmark JSONL: id, image, question, answers (list); or a LLaVA "
                                               "question file: question_id, image, text. Several: one model load"})
    metric: str | None = field(default=None, metadata={
        "help": "how answers are scored (leave out for a file without answers: answered, not scored)",
        "choices": METRICS.names()})
    image_folder: str | None = field(default=None, metadata={"help": "folder the records' image paths are relative to"})
    output: str | None = field(default=None, metadata={
        "help": "output folder (default: MODEL/eval/<bench name>; needed for a hub model); with several --bench "
                "files, their parent"})
    batch_size: int = field(default=8, metadata={"help": "questions per generation batch"})
    max_new_tokens: int = field(default=128, metadata={"help": "most tokens per answer"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N questions"})
    short_answer_prompt: bool = field(default=True, metadata={
        "help": f"append LLaVA's {SHORT_ANSWER_PROMPT!r} to every question (--no_short_answer_prompt: don't); "
                f"a LLaVA question file's text is used as it is"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("--batch_size, --max_new_tokens and --limit must be positive")
        names = [Path(bench).stem for bench in self.bench]
        if len(set(names)) != len(names):
            raise ConfigError(f"--bench: two files share a name ({', '.join(names)}), so their outputs would collide")

    def output_dir(self, model: str, bench: str) -> Path:
        if self.output and len(self.bench) == 1:
            return Path(self.output)
        return (Path(self.output) if self.output else Path(model) / "eval") / Path(bench).stem


def main(argv: list[str] | None = None) -> int:
    parser = StrictArgumentParser((ModelOptions, EvalArguments), prog="fila-train eval", description=__doc__)
    model_options, args = parser.parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metric = get_metric(args.metric) if args.metric else None
    image_folder = Path(args.image_folder) if args.image_folder else None
    try:
        # Every record of every file is checked before the model is loaded: a bad line fails in seconds, not hours.
        benches = {bench: read_bench(bench, metric, image_folder, args.limit) for bench in args.bench}
        if args.output is None:
            check_default_output(model_options.model)
        for bench in benches:  # likewise: answers are kept there from the first batch on
            check_output_folder(args.output_dir(model_options.model, bench))
        loaded = model_options.load()
        for bench, questions in benches.items():
            logger.info("evaluating %s on %d questions of %s (metric %s, batch %d)", model_options.model,
                        len(questions), bench, metric.name if metric else "none: answers only", args.batch_size)
            output = args.output_dir(model_options.model, bench)
            predictions = predict(loaded, questions, image_folder, args.max_new_tokens, args.batch_size,
                                  SHORT_ANSWER_PROMPT if args.short_answer_prompt else None, output)
            report(bench, questions, predictions, metric, model_options.model, output)
        # The results now hold every answer. Only now: a rerun after a stop in a later bench takes the earlier
        # benches' answers from their logs.
        for bench in benches:
            (args.output_dir(model_options.model, bench) / ANSWER_LOG_FILE).unlink(missing_ok=True)
    except (BenchError, AnnotationError, ModelLoadError) as error:
        print(f"fila-train eval: error: {error}", file=sys.stderr)
        return 1
    return 0


def check_default_output(model: str) -> None:
    """The default output, MODEL/eval, is a folder of the model's. A hub model (a LLaVA release by its id) has none:
    the default would make a local folder named like the id, which every later load from there takes for the model."""
    if not Path(model).exists() and local_file(model, "config.json") is not None:
        raise ConfigError(f"--model {model} is a hub model, not a local folder to write its results into: give --output")


def check_output_folder(output: Path) -> None:
    """``output`` exists as a folder or can be made one: its nearest existing ancestor is a folder."""
    existing = nearest_existing(output)
    if not existing.is_dir():
        raise ConfigError(f"--output {output}: {existing} is a file, not a folder")


def report(bench: str, questions, predictions: list[str], metric, model: str, output: Path) -> None:
    """Write one bench's answers (and its scores, with a metric) and print one line about it."""
    answers = write_answers(questions, predictions, model, output)
    if metric is None:
        print(f"answered {len(questions)} questions of {bench}, not scored (no answers in the file); "
              f"LLaVA's answer file: {answers}")
        return
    result = score(metric, questions, predictions, str(Path(bench).resolve()), model_name(model))
    write_results(result, output)
    print(f"{format_score(metric.name, result.summary['score'])} on {result.summary['count']} questions "
          f"of {bench} (written to {output})")
