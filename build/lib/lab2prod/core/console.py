"""Console logging for entry points, and the one place that turns known errors into clean exits."""

from __future__ import annotations

import errno
import functools
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.logging import RichHandler

from lab2prod.core.errors import Lab2ProdError

ParamsFile = Annotated[Path, typer.Option(help="Settings file to read.")]
P = ParamSpec("P")
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk, a quota, a file size limit
NO_SPACE_EXIT = 3
R = TypeVar("R")


def setup_logging(level: int = logging.INFO) -> None:
    """Rich console logs on a terminal, plain lines otherwise (DVC and Prefect capture them)."""
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=[handler], force=True)
    for chatty in ("httpx", "httpcore"):  # one INFO line per HTTP request Prefect's client makes
        logging.getLogger(chatty).setLevel(logging.WARNING)


def stage_entry(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap an entry point: set up logging; a lab2prod error exits with its message only (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except Lab2ProdError as exc:
            logging.getLogger("lab2prod").error("%s", exc)
            raise SystemExit(exc.exit_code) from None
        except (OSError, sqlite3.OperationalError) as exc:
            full = exc.errno in NO_SPACE if isinstance(exc, OSError) else ("full" in str(exc) or "disk I/O" in str(exc))
            if not full:
                raise
            where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
            logging.getLogger("lab2prod").error(
                "could not write%s (%s): the disk is full, a quota or file-size limit was reached, or the storage "
                "failed. Nothing was replaced: every output is written to a temporary name and renamed only when "
                "complete, so the previous one is intact. Free some space and run again.",
                where,
                getattr(exc, "strerror", None) or exc,
            )
            raise SystemExit(NO_SPACE_EXIT) from None

    return wrapper


def run_stage(main: Callable[..., None]) -> None:
    """`python -m tasks.<stage>`: main's arguments from the command line, errors as in `stage_entry`."""
    typer.run(stage_entry(main))
