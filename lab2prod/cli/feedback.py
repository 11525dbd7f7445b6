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
    images: Annotated[list[Path], typer.Argument(help="Image files that all show LABEL, or .txt files of that class.")],
    label: Annotated[str, typer.Option(help="Their true class.")],
    inbox: Annotated[
        str | None, typer.Option(help="Feedback inbox (default: serve.feedback_dir, which ingest reads).")
    ] = None,
    new_class: Annotated[bool, typer.Option(help="Allow a label the champion does not know (a new class).")] = False,
) -> None:
    """Put labelled corrections into the feedback inbox (ingest.extra_sources reads it): each image (or .txt
    file: one text, UTF-8) is checked like ingest checks it and stored as `INBOX/LABEL/SHA256.EXT`; the next
    retraining run trains on it."""
    from lab2prod.data.feedback import add_feedback, add_text_feedback
    from lab2prod.data.images import BadImage
    from lab2prod.data.text import TEXT_SUFFIXES
    from lab2prod.registry.store import champion_model
    from lab2prod.serve.predict import Classifier

    params = load_params()
    inbox = inbox or params.serve.feedback_dir
    classes, modality = None, None
    if not new_class:
        served = champion_model(registry_location(None))
        model = Classifier.load(served) if served else None
        classes, modality = (model.classes, model.modality) if model else (None, None)
    added = 0
    for image in images:
        if not image.is_file():
            raise DataError(f"{image}: no such file")
        is_text = image.suffix.lower() in TEXT_SUFFIXES
        if modality is not None and modality != ("text" if is_text else "image"):
            raise DataError(
                f"{image}: the champion is {'a text' if modality == 'text' else 'an image'} model; give "
                f"{'.txt files' if modality == 'text' else 'image files'} (nothing from it was added)"
            )
        data = image.read_bytes()
        try:
            if is_text:
                stored = add_text_feedback(inbox, data, label, classes, new_class, params.ingest.max_chars)
            else:
                stored = add_feedback(inbox, data, label, classes, new_class, params.serve.max_image_pixels)
        except BadImage as exc:
            raise DataError(f"{image}: {exc.reason}: {exc.detail}; nothing from it was added") from None
        except DataError as exc:
            raise DataError(f"{image}: {exc}; nothing from it was added") from None
        added += stored.new
        log.info("feedback: %s -> %s%s", image, stored.path, "" if stored.new else " (already there)")
    log.info("feedback: %d new file(s) labelled %r in %s; the next retraining run ingests them", added, label, inbox)
