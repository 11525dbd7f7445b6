"""The ASGI guard in front of the app: the token of write routes, body limits (from Content-Length, and while
reading: size and `serve.body_timeout_s`), unknown paths, clients that disconnect, and the hand-off of
`POST /predict` to its plain ASGI handler."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from lab2prod.serve.auth import WRITE_PATHS, WriteAuth
from lab2prod.serve.metrics import Metrics

log = logging.getLogger("lab2prod.serve")


KNOWN_PATHS = {
    "/predict",
    "/feedback",
    "/healthz",
    "/readyz",
    "/metrics",
    "/model",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
}
DOCS_ASSETS = "/docs-assets"  # the documentation pages' scripts, styles and icon (counted as one endpoint)
CLOSE = (b"connection", b"close")
CLIENT_GONE = "499"  # the status counted for a client that disconnected before its answer (nginx's code)


class Guard:
    """ASGI middleware: write routes' token, the body limits (a body over the limit is answered 413 from its
    Content-Length, unread, or as soon as what was read passes the limit; a body not all read within
    `body_timeout_s` 408), the request metrics (count by endpoint and status, latency; 499 for a client that
    went away), and the hot path: `/predict` goes straight to `predict` (a plain ASGI handler), everything
    else to FastAPI. Any answer sent before the request's body was all read closes the connection
    (`Connection: close`): the rest of the body is not read."""

    def __init__(
        self, app: Any, predict: Any, max_body: int, metrics: Metrics, body_timeout_s: float, auth: WriteAuth
    ) -> None:
        self.app, self.predict, self.max_body, self.metrics = app, predict, max_body, metrics
        self.body_timeout_s, self.auth = body_timeout_s, auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else DOCS_ASSETS if path.startswith(DOCS_ASSETS + "/") else "other"
        started, status = time.perf_counter(), [500]
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        body_read = [length in (None, b"0") and b"transfer-encoding" not in headers]
        gone, answered = [False], [False]

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if not body_read[0]:  # the rest of the body will not be read: the connection cannot be reused
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered[0] = True
            await send(message)

        too_big = (
            f"request body over serve.max_body_mb = {self.max_body / 2**20:g} MB; "
            "send fewer or smaller images per request"
        )
        try:
            if endpoint in WRITE_PATHS and (why := self.auth.refusal(headers)):
                answer = JSONResponse({"detail": why}, status_code=401, headers={"www-authenticate": "Bearer"})
                await answer(scope, receive, send_recording)
                return
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send_recording)
                return  # at once, the body unread (the connection closes)
            seen, deadline = 0, asyncio.get_running_loop().time() + self.body_timeout_s

            async def limited() -> dict:
                nonlocal seen
                if body_read[0]:  # nothing more to read: only the disconnect comes, whenever it does
                    message = await receive()
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            message = await receive()
                    except TimeoutError:
                        raise HTTPException(
                            408,
                            f"request body not received within serve.body_timeout_s = {self.body_timeout_s:g} s "
                            f"({seen} bytes read); send it faster, or smaller",
                        ) from None
                if message["type"] == "http.disconnect":
                    # a client gone before its answer was all sent; a file response (the docs' assets) listens
                    # for the disconnect that follows its own end, which is no client gone
                    gone[0] = gone[0] or not answered[0]
                elif message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise HTTPException(413, too_big)
                    body_read[0] = not message.get("more_body", False)
                return message

            await (self.predict if endpoint == "/predict" else self.app)(scope, limited, send_recording)
        except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing went wrong here
            gone[0] = True
        finally:
            code = CLIENT_GONE if gone[0] else str(status[0])
            self.metrics.requests.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
