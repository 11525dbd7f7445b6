"""Console logging for stage entry points, and the one place that turns known errors into clean exits."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from rich.logging import RichHandler

P = ParamSpec("P")
R = TypeVar("R")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or class and what to do."""


def setup_logging(level: int = logging.INFO) -> None:
    """Rich console logs on a terminal, plain lines otherwise (DVC and Prefect capture them)."""
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=[handler], force=True)


def stage_entry(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a stage's main(): set up logging; a settings or data error exits 2 with its message only."""
    from tasks.config import ConfigError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as exc:
            logging.getLogger("lab2prod").error("%s", exc)
            raise SystemExit(2) from None

    return wrapper
