"""Console logging for one run, undone when the run ends; a report when a step is slow."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import transformers

CONFIG_DUMP_LOGGERS = ("transformers.configuration_utils", "transformers.generation.configuration_utils")


@contextmanager
def console_logging(level: int, fmt: str) -> Iterator[None]:
    """Route the root logger (and transformers') to one stderr handler at ``level`` for the block.

    The previous handlers and levels come back on exit: a run started in-process (a test, a notebook)
    must not leave behind a handler bound to a stream that is later closed, nor a chatty verbosity."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_verbosity = transformers.utils.logging.get_verbosity()
    handler = logging.StreamHandler()  # the stderr of this moment
    handler.setFormatter(logging.Formatter(fmt))
    for old in saved_handlers:  # replaced, not added to: no line printed twice
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    # Every config and generation config transformers loads is dumped whole at INFO: debug material.
    dumps = [logging.getLogger(name) for name in CONFIG_DUMP_LOGGERS]
    saved_dump_levels = [logger.level for logger in dumps]
    for logger in dumps:
        logger.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
        transformers.utils.logging.set_verbosity(saved_verbosity)
        for logger, saved in zip(dumps, saved_dump_levels):
            logger.setLevel(saved)


@contextmanager
def reported_if_slow(after_seconds: float, report: Callable[[], None]) -> Iterator[None]:
    """Call ``report`` once, from a timer thread, if the block still runs after ``after_seconds``: a step that
    may wait forever without a word (a lock, a rendezvous) says so."""
    timer = threading.Timer(after_seconds, report)
    timer.daemon = True  # never keeps a finished process alive
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
