"""Classify images (or texts, with a text model) with an exported model: by default the file the registry's
champion serves (`lab2prod predict` is the command line for it).

The ONNX file carries what prediction needs (class names, input size and channels as metadata), and
images are decoded and resized exactly as `ingest` does. A file that is not a usable image gets a row
with its reason (empty_file, not_an_image, truncated, corrupt, decompression_bomb, unreadable), never a silent
skip.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import onnxruntime as ort
from rich.progress import track

from lab2prod.core.errors import DataError
from lab2prod.core.files import atomic_file
from lab2prod.core.settings import IngestConfig
from lab2prod.core.storage import is_remote
from lab2prod.data.images import IMAGE_SUFFIXES, BadImage, decode_image
from lab2prod.data.text import clean
from lab2prod.data.tokens import TextEncoder
from lab2prod.serve.runtime import logits, session


@dataclass(frozen=True)
class Classifier:
    session: ort.InferenceSession
    classes: list[str]
    image_shape: tuple[int, int, int]  # H, W, C
    source: str
    resize: str = "stretch"  # how ingest resized the images the model was trained on
    sha256: str = ""
    variant: str = "fp32"
    encoder: TextEncoder | None = None  # a text model's tokenizer (from the file's metadata); None: an image model

    @property
    def modality(self) -> str:
        return "image" if self.encoder is None else "text"

    @classmethod
    def load(cls, model: str, sha256: str | None = None) -> Classifier:
        """An ONNX file written by lab2prod's export (a path or any fsspec URL); with `sha256` (the registry's
        record of it) a file whose bytes differ is refused, as the server refuses it."""
        try:
            with fsspec.open(model, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise DataError(f"model {model}: no such file; run the pipeline or name one with --model") from None
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            raise DataError(
                f"model {model}: sha256 {digest[:16]}... does not match the registry's record {sha256[:16]}...: "
                "the file was changed after it was registered; not used. `lab2prod registry rollback` or "
                "`lab2prod registry promote VERSION` picks an intact version"
            )
        return cls.from_bytes(data, model)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> Classifier:
        """Open an ONNX file's bytes; DataError (naming `source`) if ONNX Runtime or lab2prod cannot use it."""
        try:
            sess = session(data)
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable files
            raise DataError(f"model {source}: ONNX Runtime cannot load it: {str(exc).strip()[:300]}") from None
        meta = sess.get_modelmeta().custom_metadata_map
        digest, variant = hashlib.sha256(data).hexdigest(), meta.get("variant", "fp32")
        if meta.get("modality") == "text" and "classes" in meta and "tokenizer" in meta:
            encoder = TextEncoder(meta["tokenizer"], int(meta.get("max_length", 512)))
            return cls(sess, json.loads(meta["classes"]), (), source, sha256=digest, variant=variant, encoder=encoder)
        if "classes" not in meta or "image_shape_hwc" not in meta:
            raise DataError(
                f"model {source}: no class names or input size in its metadata; "
                "use an ONNX file written by lab2prod's export stage"
            )
        return cls(
            sess,
            json.loads(meta["classes"]),
            tuple(json.loads(meta["image_shape_hwc"])),
            source,
            resize=meta.get("resize", "stretch"),
            sha256=digest,
            variant=variant,
        )

    def decode(self, data: bytes, max_pixels: int) -> np.ndarray:
        """One image file's bytes as this model's input image, decoded exactly as ingest decodes (BadImage if not)."""
        h, _, c = self.image_shape
        return decode_image(data, h, c, max_pixels, self.resize)

    def predict(self, images: np.ndarray | list[str]) -> np.ndarray:
        """Class probabilities for uint8 NHWC images (an image model) or for texts (a text model)."""
        if self.encoder is not None:
            return self.predict_tokens(self.encoder(list(images)))
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        return softmax(logits(self.session, x))

    def predict_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Class probabilities of a text model for token ids already padded (int64, batch x length): what
        the server's batcher calls per length group."""
        return softmax(logits(self.session, ids))


def softmax(z: np.ndarray) -> np.ndarray:
    exp = np.exp(z - z.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def image_files(paths: list[str], suffixes: tuple[str, ...] | frozenset[str] = IMAGE_SUFFIXES) -> list[str]:
    """Files named, plus the files under folders named whose suffix is one of `suffixes` (images' by default),
    sorted; a missing path is an error."""
    found: list[str] = []
    for p in paths:
        fs, root = fsspec.core.url_to_fs(p)
        if fs.isdir(root):
            inside = sorted(f for f in fs.find(root) if Path(f).suffix.lower() in suffixes)
            found += [fs.unstrip_protocol(f) if is_remote(p) else f for f in inside]
        elif fs.exists(root):
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def classify(
    classifier: Classifier,
    files: list[str],
    top: int = 1,
    batch_size: int = 256,
    max_pixels: int = IngestConfig().max_image_pixels,
    progress: bool = False,
) -> list[dict]:
    """One row per file: its `top` classes with probabilities, or the reason it could not be read."""
    rows: list[dict] = []
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        inputs = [x for _, x in batch]
        probs = classifier.predict(inputs if classifier.encoder is not None else np.stack(inputs))
        for (i, _), p in zip(batch, probs, strict=True):
            best = np.argsort(-p)[:top]
            rows[i]["predictions"] = [(classifier.classes[k], float(p[k])) for k in best]
        batch.clear()

    for f in track(files, description="classifying", disable=not progress):
        rows.append({"file": f, "predictions": [], "error": ""})
        try:
            with fsspec.open(f, "rb") as fh:
                data = fh.read()
            if classifier.encoder is not None:
                text, reason, detail = clean(data, IngestConfig().max_chars)
                if text is None:
                    raise BadImage(reason, detail)
                batch.append((len(rows) - 1, text))
            else:
                batch.append((len(rows) - 1, classifier.decode(data, max_pixels)))
        except BadImage as exc:
            rows[-1]["error"] = f"{exc.reason}: {exc.detail}"
        except OSError as exc:  # a dangling symlink, a permission, a remote read that failed
            rows[-1]["error"] = f"unreadable: {type(exc).__name__}: {exc}"
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return rows


def classify_texts(classifier: Classifier, texts: list[str], top: int = 1) -> list[dict]:
    """One row per text given on the command line, as `classify` writes for a file ("file": the text, shortened)."""
    if not texts:
        return []
    probs = classifier.predict(texts)
    rows = []
    for t, p in zip(texts, probs, strict=True):
        best = [(classifier.classes[k], float(p[k])) for k in np.argsort(-p)[:top]]
        rows.append({"file": t if len(t) <= 60 else t[:57] + "...", "error": "", "predictions": best})
    return rows


def write_csv(rows: list[dict], out: Path, top: int) -> None:
    with atomic_file(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *[f"{k}{i}" for i in range(1, top + 1) for k in ("class", "probability")], "error"])
        for r in rows:
            cells = [x for cls, prob in r["predictions"] for x in (cls, f"{prob:.6f}")]
            writer.writerow([r["file"], *cells, *[""] * (2 * top - len(cells)), r["error"]])
