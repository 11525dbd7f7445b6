"""Decoding the images of a request within bounds: at most `serve.max_decodes` at once on threads of their
own, at most `serve.decode_mpx` megapixels being decoded at once (each request holds its largest image's
pixels, as its header states them, while its images are decoded one by one; 503 with Retry-After when
the budget is full), and no work for a request that timed out or whose client went away: the images are
decoded one at a time, the deadline and the client checked before each.

Small requests (under INLINE_DECODE_PIXELS in all) are decoded on the event loop: milliseconds, less
than a hop to a thread costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from fastapi import HTTPException
from PIL import Image
from starlette.requests import ClientDisconnect

from lab2prod.data.images import BadImage
from lab2prod.serve.batch import Busy
from lab2prod.serve.model import ServedModel

T = TypeVar("T")

INLINE_DECODE_PIXELS = 1_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Cancelled(Exception):
    """The request's deadline passed or its client went away: its remaining images are not decoded."""


def header_pixels(data: bytes) -> int:
    """Width x height as the image's header states it: read off a PNG's IHDR chunk (always the first), through
    PIL for other formats (it opens lazily: no pixel decoded); 0 when the header is unreadable (decoding then
    refuses the file at once)."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
        return img.width * img.height
    return 0


def decode_all(
    model: ServedModel,
    parts: list[tuple[str, bytes]],
    max_pixels: int,
    stop: threading.Event | None = None,
    deadline: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The images as the model's input (one at a time), and their fingerprints; 422 naming every unusable
    image; Cancelled before the next image once `stop` is set or `deadline` (time.monotonic()) has passed."""
    images, problems = [], []
    for i, (name, data) in enumerate(parts):
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
            raise Cancelled(f"stopped before image {i + 1} of {len(parts)}")
        try:
            images.append(model.classifier.decode(data, max_pixels))
        except BadImage as exc:
            problems.append(f"image {i + 1} ({name}): {exc.reason}: {exc.detail.rstrip('. ')}")
    if problems:
        raise HTTPException(422, "; ".join(problems) + ". Nothing was classified; send usable images")
    return np.stack(images), [hashlib.sha256(d).hexdigest()[:16] for _, d in parts]


class Decoder:
    """The decode threads and the budget of pixels being decoded (shared by /predict and /feedback)."""

    def __init__(self, max_decodes: int, decode_mpx: float, max_image_pixels: int) -> None:
        self.executor = ThreadPoolExecutor(max_decodes, thread_name_prefix="lab2prod-decode")
        self.budget, self.max_image_pixels = int(decode_mpx * 1e6), max_image_pixels
        self.in_flight = 0  # pixels held by requests being decoded (or queued for a decode thread)
        self.lock = threading.Lock()

    def cost(self, sizes: list[int]) -> int:
        """What decoding images of these header sizes one by one holds: the largest that passes the bomb guard
        (one over it is refused from its header, undecoded), at most the whole budget (so that any image can be
        decoded alone)."""
        return min(max((p for p in sizes if p <= self.max_image_pixels), default=0), self.budget)

    async def run(self, pixels: int, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a decode thread, holding `pixels` of the budget until it returns (or is dropped from the
        queue); Busy (503) at once when they do not fit."""
        with self.lock:
            if self.in_flight + pixels > self.budget:
                raise Busy(
                    f"{self.in_flight / 1e6:.1f} megapixels are being decoded and this request needs "
                    f"{pixels / 1e6:.1f} more (serve.decode_mpx = {self.budget / 1e6:g})"
                )
            self.in_flight += pixels
        try:
            future = self.executor.submit(fn, *args)
        except BaseException:
            self._release(pixels)
            raise
        future.add_done_callback(lambda _: self._release(pixels))  # when it ran, or was cancelled unstarted
        return await asyncio.wrap_future(future)

    def _release(self, pixels: int) -> None:
        with self.lock:
            self.in_flight -= pixels


async def decode_request(
    decoder: Decoder, model: ServedModel, parts: list[tuple[str, bytes]], max_pixels: int, deadline: float, receive: Any
) -> tuple[np.ndarray, list[str]]:
    """Decode a request's images (see the module's docstring): on the event loop when small, else on a decode
    thread within the budget, stopped when the request is cancelled (its timeout) or its client disconnects
    (ClientDisconnect then)."""
    sizes = [header_pixels(data) for _, data in parts]
    if sum(sizes) <= INLINE_DECODE_PIXELS:
        return decode_all(model, parts, max_pixels)
    stop = threading.Event()
    work = asyncio.ensure_future(decoder.run(decoder.cost(sizes), decode_all, model, parts, max_pixels, stop, deadline))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientDisconnect()
        return work.result()
    except Cancelled:
        raise TimeoutError from None  # the deadline passed between two images: the request's timeout answers
    finally:
        stop.set()  # the thread (if any) stops before its next image
        gone.cancel()
        if not work.done():
            work.cancel()
            work.add_done_callback(_ignore_result)


async def _disconnected(receive: Any) -> None:
    """Returns when the client has gone (the body is read: the next ASGI message is the disconnect)."""
    for _ in range(16):  # uvicorn sends nothing else; bounded all the same
        if (await receive())["type"] == "http.disconnect":
            return
    await asyncio.Event().wait()  # never: an ASGI server that keeps sending body messages is not watched


def _ignore_result(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning for work nobody waits for
