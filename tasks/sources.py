"""Stage 0, sources: what ingest's sources hold, listed (never read), into data/sources.json.

DVC cannot see a folder, table or bucket outside the project, nor know that the feedback inbox got new
files; this stage runs on every `dvc repro` (`always_changed: true` in dvc.yaml) and writes one digest per
source (lab2prod/data/fingerprint.py). ingest depends on the file: DVC runs it again exactly when a source
changed, and `dvc status` names this stage as "always changed" because it cannot know without looking.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.core.console import ParamsFile, run_stage
from lab2prod.core.files import write_json
from lab2prod.core.layout import PARAMS, WORKSPACE
from lab2prod.core.settings import IngestConfig, load_params
from lab2prod.data.fingerprint import fingerprint

log = logging.getLogger("tasks.sources")  # not __name__: that is __main__ under python -m


def sources(cfg: IngestConfig, out: Path) -> dict:
    """Write the sources' fingerprint to `out` (left untouched when it is the same); returns it."""
    found = fingerprint(cfg)
    try:
        same = json.loads(out.read_text()) == found
    except (OSError, ValueError):
        same = False
    if not same:
        write_json(out, found)
    for source, what in found["sources"].items():
        log.info("sources: %s: %s", source, what)
    return found


def main(
    params: ParamsFile = PARAMS,
    out: Annotated[Path, typer.Option(help="Where to write the listing's digests.")] = WORKSPACE.sources,
) -> None:
    """List ingest's sources (never reading a file) into data/sources.json, so DVC reruns ingest when they change."""
    sources(load_params(params).ingest, out)


if __name__ == "__main__":
    run_stage(main)
