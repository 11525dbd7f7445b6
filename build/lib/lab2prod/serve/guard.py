"""The ASGI guard in front of the app: body limits from Content-Length and while reading, unknown paths,
clients that disconnect, and the hand-off of `POST /predict` to its plain ASGI handler."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from lab2prod.serve.metrics import Metrics

log = logging.getLogger("lab2prod.serve")


KNOWN_PATHS = {"/predict", "/feedback", "/healthz", "/readyz", "/metrics", "/model", "/docs", "/openapi.json"}


class Guard:
    """ASGI middleware: the body-size limit (before the body is read when Content-Length says so), the
    request metrics (count by endpoint and status, latency), and the hot path: `/predict` goes straight to
    `predict` (a plain ASGI handler), everything else to FastAPI."""

    def __init__(self, app: Any, predict: Any, max_body: int, metrics: Metrics) -> None:
        self.app, self.predict, self.max_body, self.metrics = app, predict, max_body, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        started, status = time.perf_counter(), [500]

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        too_big = (
            f"request body over serve.max_body_mb = {self.max_body / 2**20:g} MB; "
            "send fewer or smaller images per request"
        )
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._drain(receive)  # read (and drop) it so the client sees the answer, not a reset
                await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send_recording)
                return
            seen = 0

            async def limited() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise HTTPException(413, too_big)
                return message

            await (self.predict if endpoint == "/predict" else self.app)(scope, limited, send_recording)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _drain(self, receive: Any) -> None:
        drained, cap = 0, max(4 * self.max_body, 64 * 2**20)
        while drained <= cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body"):
                return
