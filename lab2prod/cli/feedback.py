"""`lab2prod feedback ...`: labelled corrections into the inbox the next retraining run ingests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lab2prod.cli.registry import registry_location
from lab2prod.core.console import stage_entry
from lab2prod.core.errors import DataError
from lab2prod.core.settings import load_params

log = logging.getLogger("lab2prod")

app = typer.Typer(help="Labelled corrections for the next retraining run.", no_args_is_help=True, add_completion=False)


@app.command("add")
@stage_entry
def add(
    images: Annotated[list[Path], typer.Argument(help="Image files that all show LABEL.")],
    label: Annotated[str, typer.Option(help="Their true class.")],
    inbox: Annotated[
        str | None, typer.Option(help="Feedback inbox (default: serve.feedback_dir, which ingest reads).")
    ] = None,
    new_class: Annotated[bool, typer.Option(help="Allow a label the champion does not know (a new class).")] = False,
) -> None:
    """Put labelled corrections into the feedback inbox (ingest.extra_sources reads it): each image is checked
    like ingest checks it and stored as `INBOX/LABEL/SHA256.EXT`; the next retraining run trains on it."""
    from lab2prod.data.feedback import add_feedback
    from lab2prod.data.images import BadImage
    from lab2prod.registry.store import champion_model
    from lab2prod.serve.predict import Classifier

    params = load_params()
    inbox = inbox or params.serve.feedback_dir
    classes = None
    if not new_class:
        served = champion_model(registry_location(None))
        classes = Classifier.load(served).classes if served else None
    added = 0
    for image in images:
        if not image.is_file():
            raise DataError(f"{image}: no such file")
        try:
            stored = add_feedback(inbox, image.read_bytes(), label, classes, new_class, params.serve.max_image_pixels)
        except BadImage as exc:
            raise DataError(f"{image}: {exc.reason}: {exc.detail}; nothing from it was added") from None
        added += stored.new
        log.info("feedback: %s -> %s%s", image, stored.path, "" if stored.new else " (already there)")
    log.info("feedback: %d new image(s) labelled %r in %s; the next retraining run ingests them", added, label, inbox)
