"""The logging set-up every entry point shares.

detectron2's ``setup_logger`` adds a console handler (and a log-file handler) on every call, and
``detectron2.engine.default_setup`` calls it again for "detectron2" and "fvcore": a program that
sets up logging twice prints each line twice. Its console format colours the prefix with ANSI codes
whether or not the output is a terminal. :func:`setup_logging` wraps it so that:

* each logger writes at most once to each stream (console or ``log.txt``), however often it runs
  (:func:`tidy_handlers`, also called after ``default_setup``);
* the console gets colours only when it is a terminal, the log-file format otherwise;
* known third-party noise that users can do nothing about is silenced (``KNOWN_NOISE``).

:func:`progress` is the progress bar of long loops: while it runs, log lines are written through
tqdm so they appear above the bar instead of splitting it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence

from detectron2.utils.logger import setup_logger
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["LOGGER_NAMES", "progress", "setup_logging", "tidy_handlers"]

LOGGER_NAMES: tuple[str, ...] = ("detectron2", "fvcore", "pixelclip")
# Loggers of other packages lowered to ERROR: torch's CUDA build logs "No CUDA runtime is found"
# when detectron2's environment report imports torch.utils.cpp_extension on a CPU-only machine.
KNOWN_NOISE: tuple[str, ...] = ("torch.utils.cpp_extension",)
_PLAIN_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"  # detectron2's log.txt format


def _console_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def tidy_handlers(names: Sequence[str] = LOGGER_NAMES) -> None:
    """Drop every handler of ``names`` that writes to a stream an earlier handler already writes
    to, and give console handlers the plain log-file format when stdout is not a terminal."""
    plain = not _console_is_terminal()
    for name in names:
        logger = logging.getLogger(name)
        seen = set()
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if stream is None:
                continue
            if id(stream) in seen:
                logger.removeHandler(handler)
                continue
            seen.add(id(stream))
            if plain and stream in (sys.stdout, sys.stderr):
                handler.setFormatter(logging.Formatter(_PLAIN_FORMAT, datefmt="%m/%d %H:%M:%S"))


class _HideSetupReport(logging.Filter):
    """Drops the INFO records of the "detectron2" logger itself: ``default_setup``'s report
    (environment, command line, config file, full config), hundreds of lines per run; they stay
    in log.txt. Records of its sub-loggers (training progress, evaluation) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "detectron2" or record.levelno >= logging.WARNING


_HIDE_SETUP_REPORT = _HideSetupReport()


def setup_logging(
    output: str | None = None,
    rank: int = 0,
    *,
    third_party_level: int = logging.INFO,
    setup_report_on_console: bool = True,
) -> None:
    """Log PixelCLIP's messages (INFO and above) and detectron2's / fvcore's (``third_party_level``
    and above) to the console (rank 0 only) and, with ``output`` (a folder, or a ``.txt`` /
    ``.log`` file), to ``output/log.txt`` (``.rank{N}`` on other ranks), as detectron2 does.
    Idempotent: calling it again adds no handler but a new log file. Without
    ``setup_report_on_console`` the console leaves out detectron2's set-up report."""
    for name in LOGGER_NAMES:
        color = _console_is_terminal()
        logger = setup_logger(output, distributed_rank=rank, color=color, name=name)
        logger.setLevel(logging.INFO if name == "pixelclip" else third_party_level)
    tidy_handlers()
    if not setup_report_on_console:
        for handler in logging.getLogger("detectron2").handlers:
            if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                handler.addFilter(_HIDE_SETUP_REPORT)
    for name in KNOWN_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def progress(iterable: Iterable, **tqdm_kwargs) -> Iterator[tqdm]:
    """A tqdm bar over ``iterable`` (keyword arguments go to tqdm) during which the console
    handlers of our loggers, detectron2's and the root logger write through ``tqdm.write``."""
    loggers = [logging.getLogger(n) for n in LOGGER_NAMES] + [logging.getLogger()]
    with logging_redirect_tqdm(loggers=loggers), tqdm(iterable, **tqdm_kwargs) as bar:
        yield bar
