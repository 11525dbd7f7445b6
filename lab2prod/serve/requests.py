"""`POST /predict`: reading the images (or a text model's JSON texts) of a request, decoding them (inline or on a
thread), micro-batched prediction, and the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import time
import urllib.parse
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from lab2prod.core.settings import IngestConfig, ServeConfig
from lab2prod.data.feedback import EXTENSIONS
from lab2prod.data.text import clean
from lab2prod.serve.batch import Busy, MicroBatcher
from lab2prod.serve.decode import Decoder, decode_request
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.model import ModelHolder, ServedModel
from lab2prod.serve.prediction_log import PredictionLog

log = logging.getLogger("lab2prod.serve")


@dataclasses.dataclass
class Server:
    cfg: ServeConfig
    holder: ModelHolder
    batcher: MicroBatcher
    metrics: Metrics
    feedback_dir: str
    decoder: Decoder


async def _read_images(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: multipart file parts, or the raw body as one image."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images + 16)
        except MultiPartException as exc:  # what Starlette raises outside an app's routing (PredictHandler)
            if "Too many files" in exc.message:
                raise HTTPException(
                    413, f"more than serve.max_images = {cfg.max_images} images in one request; split them up"
                ) from None
            raise HTTPException(400, f"the multipart body cannot be read: {exc.message}") from None
        try:
            parts = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        finally:
            await form.close()  # large parts spill to temporary files: release them now, not at garbage collection
        if not parts:
            raise HTTPException(
                422, "no image file in the form: send each image as a file part, e.g. curl -F files=@digit.png URL"
            )
        return parts
    body = await request.body()
    if not body:
        raise HTTPException(
            422,
            "empty request: send an image as the body (Content-Type: image/png, image/jpeg or "
            "application/octet-stream) or images as multipart file parts",
        )
    return [("body", body)]


async def _read_texts(request: Request, cfg: ServeConfig) -> tuple[list[tuple[str, bytes]], np.ndarray, list[str]]:
    """A text model's request: JSON {"texts": ["...", ...]}; 422 naming the first text that cannot be used."""
    try:
        texts = json.loads(await request.body()).get("texts")
    except (ValueError, AttributeError):
        texts = None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise HTTPException(422, 'this model classifies texts: send JSON {"texts": ["a text", ...]}')
    if len(texts) > cfg.max_images:
        raise HTTPException(413, f"{len(texts)} texts > serve.max_images = {cfg.max_images} per request; split them up")
    cleaned = []
    for i, raw in enumerate(texts):
        text, reason, detail = clean(raw, IngestConfig().max_chars)
        if text is None:
            raise HTTPException(422, f"texts[{i}]: {reason}: {detail}")
        cleaned.append(text)
    fingerprints = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in cleaned]
    return [(f"texts[{i}]", b"") for i in range(len(cleaned))], np.asarray(cleaned, dtype=object), fingerprints


class PredictHandler:
    """`POST /predict` as a plain ASGI handler: classify one image (raw body) or several (multipart file parts,
    at most serve.max_images).

    It skips FastAPI's routing, dependency and response layers: with a small model those cost a request more
    than the model does, and a server's throughput is what its event loop spends per request (README,
    "Serve it"). Errors answer `{"detail": ...}` with the status, exactly as FastAPI's do; `_document_predict`
    puts the endpoint into the OpenAPI schema.
    """

    def __init__(self, server: Server, prediction_log: PredictionLog | None) -> None:
        self.server, self.prediction_log = server, prediction_log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers: dict[str, str] = {}
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, "use POST /predict with the image(s) as the body", {"allow": "POST"})
            status, body = 200, await self._answer(Request(scope, receive), scope)
            headers = {"x-model-version": body["model_version"]}
        except StarletteHTTPException as exc:
            status, body = exc.status_code, {"detail": exc.detail}
            headers = dict(exc.headers or {})
        except Busy as exc:
            status, body, headers = 503, {"detail": f"server busy: {exc}; retry shortly"}, {"retry-after": "1"}
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            return
        except Exception:
            log.exception("POST /predict failed")
            status, body = 500, {"detail": "internal error while classifying; see the server log"}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, request: Request, scope: dict) -> dict[str, Any]:
        server, cfg = self.server, self.server.cfg
        top_k = _top_k(scope, cfg.top_k)
        model = _model_or_503(server.holder)
        batcher, deadline = server.batcher, time.monotonic() + cfg.request_timeout_s
        try:
            async with asyncio.timeout(cfg.request_timeout_s):
                batcher.arriving += 1
                try:
                    if model.classifier.modality == "text":
                        parts, images, fingerprints = await _read_texts(request, cfg)
                    else:
                        parts = await _read_images(request, cfg)
                        images, fingerprints = await decode_request(
                            server.decoder, model, parts, cfg.max_image_pixels, deadline, request.receive
                        )
                    files = None
                    if self.prediction_log is not None and self.prediction_log.keep_images and images.dtype != object:
                        files = [(d, _extension(d)) for _, d in parts]
                finally:
                    batcher.arriving -= 1
                probs = await batcher.submit(model, images, fingerprints, files)
        except TimeoutError:
            raise HTTPException(
                504, f"not answered within serve.request_timeout_s = {cfg.request_timeout_s:g} s"
            ) from None
        k = min(top_k, len(model.classifier.classes))
        order = np.argsort(-probs, axis=1)[:, :k]
        classes = model.classifier.classes
        return {
            "model_version": model.version,
            "model_sha256": model.sha256,
            "predictions": [
                {"name": name, "top": [{"class": classes[c], "probability": round(float(p[c]), 6)} for c in row]}
                for (name, _), p, row in zip(parts, probs, order, strict=True)
            ],
        }


def _model_or_503(holder: ModelHolder) -> ServedModel:
    """The model being served; 503 saying why when none is loaded yet."""
    model = holder.current
    if model is None:
        raise HTTPException(503, f"no model loaded yet: {holder.last_problem or 'loading'}")
    return model


def _top_k(scope: dict, default: int) -> int:
    """The `top_k` query parameter (an integer >= 1), or the default; 422 otherwise."""
    values = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get("top_k")
    if not values:
        return default
    try:
        k = int(values[-1])
    except ValueError:
        k = 0
    if k < 1:
        raise HTTPException(422, f"top_k = {values[-1]!r}: give a whole number of classes per image, 1 or more")
    return k


def _extension(data: bytes) -> str:
    try:
        return EXTENSIONS.get(Image.open(io.BytesIO(data)).format or "", "bin")
    except Exception:
        return "bin"


# ---------------------------------------------------------------- process entry points
