"""Labelled corrections into the feedback inbox: `<inbox>/<class>/<sha256[:20]>.<ext>`.

The inbox is a folder ingest already reads (`ingest.extra_sources`, default data/feedback), local or an
fsspec URL, so the next retraining run trains on what users corrected. `POST /feedback` and
`lab2prod feedback add` both come here: the image must decode, the label must be a safe folder name
(and one of the model's classes unless new classes are allowed), and a file is written whole or not at all.
A text correction is cleaned as ingest cleans a text (UTF-8, NFC, stripped, not empty, at most
`ingest.max_chars`) and stored as `<class>/<sha256[:20]>.txt`, the hash of the cleaned text's UTF-8 bytes,
which are the file's bytes: the text folders the next text ingest reads.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import fsspec
from PIL import Image

from lab2prod.core.errors import DataError
from lab2prod.core.files import atomic_file
from lab2prod.core.settings import IngestConfig
from lab2prod.core.storage import is_remote
from lab2prod.data.images import PASS_THROUGH, decode_image
from lab2prod.data.text import clean

MAX_LABEL_CHARS = 100
EXTENSIONS = {**PASS_THROUGH, "BMP": "bmp", "GIF": "gif", "TIFF": "tif", "PPM": "ppm"}


@dataclass(frozen=True)
class Stored:
    path: str
    label: str
    sha256: str
    new: bool  # False when the same image was already in the inbox under this label


def check_label(label: str, classes: list[str] | None = None, allow_new: bool = False) -> str:
    """The label as a folder name, or DataError saying what is wrong with it (no path tricks, no new class
    unless allowed)."""
    name = unicodedata.normalize("NFC", label.strip())
    problem = ""
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_LABEL_CHARS:
        problem = f"it is longer than {MAX_LABEL_CHARS} characters"
    elif name in (".", "..") or name.startswith("."):
        problem = "it starts with '.'"
    elif any(ch in name for ch in "/\\") or any(unicodedata.category(ch).startswith("C") for ch in name):
        problem = "it contains '/', '\\' or a control character"
    if problem:
        raise DataError(f"label {label!r} cannot be a class folder name: {problem}")
    if classes is not None and name not in classes and not allow_new:
        raise DataError(f"label {label!r} is not one of the model's classes ({', '.join(classes)}); check the spelling")
    return name


def add_feedback(
    inbox: str,
    data: bytes,
    label: str,
    classes: list[str] | None = None,
    allow_new: bool = False,
    max_pixels: int = 40_000_000,
) -> Stored:
    """Validate one labelled image and put it in the inbox; BadImage if it is not a usable image."""
    name = check_label(label, classes, allow_new)
    decode_image(data, 8, 1, max_pixels)  # the same checks as ingest: BadImage names the reason
    fmt = Image.open(io.BytesIO(data)).format or ""
    return _store(inbox, name, data, EXTENSIONS.get(fmt, "png"))


def add_text_feedback(
    inbox: str,
    raw: str | bytes,
    label: str,
    classes: list[str] | None = None,
    allow_new: bool = False,
    max_chars: int = IngestConfig().max_chars,
) -> Stored:
    """Validate one labelled text and put it in the inbox as `<label>/<sha256[:20]>.txt`; DataError naming
    what is wrong with the text (empty, not_utf8, too_long) or the label."""
    name = check_label(label, classes, allow_new)
    text, reason, detail = clean(raw, max_chars)  # the ingest's own rules for a text
    if text is None:
        raise DataError(f"text: {reason}: {detail}")
    return _store(inbox, name, text.encode("utf-8"), "txt")


def _store(inbox: str, name: str, data: bytes, ext: str) -> Stored:
    """`data` as `<inbox>/<name>/<sha256[:20]>.<ext>`, written whole or not at all; not again if it is there."""
    digest = hashlib.sha256(data).hexdigest()
    target = f"{inbox.rstrip('/')}/{name}/{digest[:20]}.{ext}"
    if is_remote(inbox):
        fs, path = fsspec.core.url_to_fs(target)
        if fs.exists(path):
            return Stored(target, name, digest, False)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)  # one PUT: whole or nothing
        return Stored(target, name, digest, True)
    path = Path(target)
    if path.exists():
        return Stored(target, name, digest, False)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Stored(target, name, digest, True)
