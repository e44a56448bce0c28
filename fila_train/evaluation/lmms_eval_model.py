"""lmms-eval's ``--model fila``: any lmms-eval task on a fila model folder or a LLaVA release.

Registered the way lmms-eval loads external models, through the ``lmms_eval.models`` entry point
(pyproject.toml), so ``python -m lmms_eval --model fila --model_args pretrained=FOLDER --batch_size 8`` works once
the ``eval`` extra is installed. Prompts are our chat template's, exactly as ``fila-train eval`` builds them, and
generation is batched (left-padded) and greedy unless the task asks to sample.
"""
from __future__ import annotations

import os

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from tqdm.auto import tqdm

from ..inference.generation import GenerationOptions, Prompt, PromptError, build_prompt, generate_answers
from ..inference.loading import load_model

MODEL_ID = "fila"


def manifest() -> ModelManifest:
    """The entry point's payload: lmms-eval's registry maps ``--model fila`` to FilaLmms."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.FilaLmms")


# lmms-eval's stop for a task that names none: its few-shot delimiter, made for base models continuing few-shot
# text. A chat model's answer ends at its end-of-turn token, and cut there a multi-paragraph answer (a detailed
# description, MM-Vet's) keeps only its first paragraph: lmms-eval's llava adapters apply no stop, its Qwen2.5-VL one
# drops this one.
FEWSHOT_DELIMITER = "\n\n"


def cut_at_stops(text: str, stops: list[str]) -> str:
    """lmms-eval's ``until``: the answer up to the first stop string (stripped again, as generate's answers are)."""
    for stop in stops:
        if stop and stop != FEWSHOT_DELIMITER:
            text = text.split(stop, 1)[0]
    return text.strip()


# A task's settings are read as lmms-eval's llava adapters read them, so scores compare with theirs: 1024 new tokens
# where a task names none (128 cut long answers), and sampling exactly when its temperature is above 0.
DEFAULT_MAX_NEW_TOKENS = 1024


def generation_options(gen_kwargs: dict) -> GenerationOptions:
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        raise ValueError(f"fila: num_beams {gen_kwargs['num_beams']} is not supported (greedy or sampling)")
    sample = float(gen_kwargs.get("temperature") or 0) > 0
    return GenerationOptions(max_new_tokens=int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
                             do_sample=sample,
                             temperature=float(gen_kwargs["temperature"]) if sample else None,
                             top_p=gen_kwargs.get("top_p") if sample else None,
                             top_k=gen_kwargs.get("top_k") if sample else None)


class FilaLmms(lmms):
    def __init__(self, pretrained: str, batch_size: int | str = 1, dtype: str = "auto", device: str | None = None,
                 max_batch_size: int | None = None, **unknown) -> None:
        """``--model_args pretrained=FOLDER[,dtype=..]``; ``--batch_size`` and ``--device`` are lmms-eval's own
        flags (``max_batch_size`` goes with ``--batch_size auto``, which is not supported: give a number)."""
        super().__init__()
        if unknown:
            raise ValueError(f"--model_args for fila: unknown {sorted(unknown)} (known: pretrained, dtype)")
        if not str(batch_size).isdigit():
            raise ValueError(f"--batch_size {batch_size}: fila takes a number of questions per batch")
        # Under `accelerate launch`, each process answers its share of the requests (lmms-eval splits by rank).
        self._rank, self._world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if device is None and torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        self.loaded = load_model(pretrained, dtype, device)
        self.batch_size = int(batch_size)

    def _visual(self, request: Instance) -> Image.Image | None:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [visual for visual in (visuals or []) if visual is not None]
        if len(visuals) > 1:
            raise ValueError(f"task {task} doc {doc_id}: {len(visuals)} images; fila models take one per question")
        if visuals and not isinstance(visuals[0], Image.Image):
            raise ValueError(f"task {task} doc {doc_id}: a {type(visuals[0]).__name__} visual (video?); fila models "
                             f"take one image per question")
        return visuals[0].convert("RGB") if visuals else None

    def _prompt(self, request: Instance) -> Prompt:
        context, _, _, doc_id, task, _ = request.args
        try:
            return build_prompt(self.loaded, context, self._visual(request))
        except PromptError as error:  # lmms-eval prints the traceback: it must say which question
            raise ValueError(f"task {task} doc {doc_id}: {error}") from None

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batches of ``batch_size`` requests with the same generation settings, answers in request order."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        with tqdm(total=len(requests), desc="fila: answering", disable=self.rank != 0) as progress:
            for indices in groups.values():
                gen_kwargs = dict(requests[indices[0]].args[1])
                stops = gen_kwargs.get("until") or []
                stops = [stops] if isinstance(stops, str) else list(stops)
                options = generation_options(gen_kwargs)
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    prompts = [self._prompt(requests[i]) for i in batch]
                    for i, text in zip(batch, generate_answers(self.loaded, prompts, options)):
                        answers[i] = cut_at_stops(text, stops)
                    progress.update(len(batch))
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("fila: loglikelihood tasks are not supported; use generate_until tasks")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("fila: multi-round generation is not supported")
