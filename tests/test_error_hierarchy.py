"""One error hierarchy: every error a user can cause is a FilaError, printed by the CLIs as one line with exit
code 1; only a DataRecordError is one record's fault, so only it is skipped under --on_bad_sample skip."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from transformers import AutoTokenizer

import fila_train
from distributed_utils import LLAMA2_DIR
from fila_train.data.dataset import ConversationDataset, DatasetOptions
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.model.vision.clip_encoder import ClipImageProcessor
from fila_train.processing.chat_templates import get_template
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.utils.errors import ConfigError, DataRecordError, FilaError

# Exceptions that are not errors: a converter's deliberate leave-out, the exit after an error was printed, and
# Ctrl-C and SIGTERM (a KeyboardInterrupt, and a BaseException, so that nothing catching Exception can swallow them).
NOT_ERRORS = {"SkipSample", "ReportedExit", "Interrupted", "Terminated"}


def exception_classes() -> list[type]:
    found = {}
    for module in pkgutil.walk_packages(fila_train.__path__, "fila_train."):
        if module.name.endswith("__main__"):
            continue
        for _, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("fila_train."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_error_class_is_a_fila_error_with_a_name_of_its_own():
    classes = exception_classes()
    assert len(classes) > 15  # the walk found them
    assert [c.__qualname__ for c in classes if c.__name__ not in NOT_ERRORS and not issubclass(c, FilaError)] == []
    names = [c.__name__ for c in classes]
    assert sorted({name for name in names if names.count(name) > 1}) == []


def test_a_template_the_tokenizer_cannot_write_fails_once_when_the_tokenizer_is_built():
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(LLAMA2_DIR))  # the real Llama-2: no Llama-3 chat markers
    with pytest.raises(ConfigError, match="template 'llama3' needs the special token") as error:
        ConversationTokenizer(tokenizer, get_template("llama3"), IMAGE_TOKEN_ID)
    assert not isinstance(error.value, DataRecordError)


class FailingTokenizer(ConversationTokenizer):
    """Fault injection: encoding fails the way a bug (or a tokenizer mismatch) would, not as a record error."""

    def encode(self, conversations, image_token_counts=None, add_generation_prompt=False):
        raise ValueError("the tokenizer broke")


def test_only_a_record_s_own_error_is_skipped(tiny_assets):
    tokenizer = FailingTokenizer(AutoTokenizer.from_pretrained(tiny_assets.llm), get_template("vicuna_v1"),
                                 IMAGE_TOKEN_ID)
    dataset = ConversationDataset(tiny_assets.stage2_data, tiny_assets.image_folder, tokenizer,
                                  ClipImageProcessor(28, 14), DatasetOptions(512, on_bad_sample="skip"))
    with pytest.raises(ValueError, match="the tokenizer broke") as error:
        dataset[0]
    assert not isinstance(error.value, FilaError)  # not counted and skipped record after record


def test_the_cli_prints_a_fila_error_as_one_line_with_exit_code_1(tiny_assets, capsys):
    from fila_train.cli import main

    code = main(["data", "inspect", "--data_path", str(tiny_assets.stage2_data), "--image_folder",
                 str(tiny_assets.image_folder), "--model_name_or_path", str(tiny_assets.llm), "--vision_tower",
                 str(tiny_assets.clip), "--vision_encoder", "fila_hybird"])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "fila-train data: error: unknown vision encoder 'fila_hybird'; choose one of: anyres, clip, fila_hybrid"]
