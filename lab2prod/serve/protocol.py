"""The connection limits uvicorn lacks: uvicorn's HTTP protocol (httptools when installed, h11 otherwise)
with a deadline for a request's headers and a bound on their size, and the uvicorn options that bound the
rest (idle keep-alive connections, concurrent connections).

uvicorn times out only an idle keep-alive connection, and only once a response was sent: a client that
connects and sends nothing, or a request's headers one byte a second, would hold its connection forever.
Here a connection closes (408, `Connection: close`) when a request's headers are not complete within
`serve.header_timeout_s` of its opening, or of the last response plus `serve.keep_alive_s`; headers over
MAX_HEAD_BYTES are answered 431. Bodies are timed by the Guard (`serve.body_timeout_s`), once the
app has the request.

An answer sent before the request's body was all read (413, 408, 401) is followed by a lingering close:
the answer and a FIN go out at once, what the client still sends is read and dropped for LINGER_S
seconds or LINGER_BYTES at most, then the connection closes. Closed at once, the unread bytes would make
the kernel reset the connection, and a client that writes its whole body before reading (most do) would
see the reset instead of the answer.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from lab2prod.core.settings import ServeConfig

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's own choice is h11 then
    HttpToolsProtocol = None

MAX_HEAD_BYTES = 1 << 20  # request line and headers, at most (h11 refuses over 16 KB itself)
LINGER_S, LINGER_BYTES = 2.0, 16 << 20
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_NONE = object()  # the "cycle" of a connection before its first request


class _HeaderDeadline:
    """Mixin for uvicorn's protocols (it relies on their `cycle`, `transport`, `loop` and
    `on_response_complete`): closes a connection whose next request's headers are late or too long."""

    header_timeout: float = 10.0
    _timer: asyncio.TimerHandle | None = None
    _waiting_on: Any = None  # the cycle that was current when waiting for headers began
    _head_bytes = 0

    def __init__(self, *args: Any, header_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.header_timeout = header_timeout

    _lingering: asyncio.TimerHandle | None = None
    _dropped = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Transport(transport, self))  # type: ignore[misc]
        self._await_headers(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # the answer is out: what still comes is dropped, up to a bound
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.real.close()  # type: ignore[attr-defined]
            return
        waiting = self._timer is not None
        if waiting:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")
                return
        super().data_received(data)  # type: ignore[misc]
        if waiting and self._current() is not self._waiting_on:  # the headers are in: the app has the request
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self._await_headers(self.timeout_keep_alive + self.header_timeout)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _close(self, real: Any) -> None:
        """What closing the connection does: a lingering close while the request's body is still coming."""
        cycle = self._current()
        body_coming = cycle is not _NONE and cycle.more_body and not cycle.disconnected
        if self._lingering is not None or not body_coming or not real.can_write_eof():
            real.close()
            return
        real.write_eof()  # after what is buffered: the client reads the answer, then the end
        real.resume_reading()
        self._lingering = self.loop.call_later(LINGER_S, real.close)  # type: ignore[attr-defined]

    def _current(self) -> Any:
        return _NONE if self.cycle is None else self.cycle  # type: ignore[attr-defined]

    def _await_headers(self, delay: float) -> None:
        self._stop_waiting()
        self._waiting_on, self._head_bytes = self._current(), 0
        self._timer = self.loop.call_later(delay, self._late)  # type: ignore[attr-defined]

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        if self._current() is self._waiting_on:
            self._refuse(408, f"no complete request headers within serve.header_timeout_s = {self.header_timeout:g} s")

    def _refuse(self, status: int, why: str) -> None:
        """Answer `status` (when no request is half-read: a response then would be read as part of it) and close."""
        self._stop_waiting()
        transport, cycle = self.transport, self._current()  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        if cycle is _NONE or (cycle.response_complete and not cycle.more_body):
            body, reason = why.encode(), REASONS[status]
            head = b"HTTP/1.1 %d %s\r\nconnection: close\r\ncontent-type: text/plain\r\n" % (status, reason)
            transport.write(head + b"content-length: %d\r\n\r\n%s" % (len(body), body))
        transport.close()


class _Transport:
    """The connection's transport as uvicorn's protocol sees it: closing it may linger (`_HeaderDeadline._close`)."""

    def __init__(self, real: Any, protocol: _HeaderDeadline) -> None:
        self.real, self._protocol, self._closing = real, protocol, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def close(self) -> None:
        self._closing = True
        self._protocol._close(self.real)

    def is_closing(self) -> bool:
        return self._closing or self.real.is_closing()


class H11WithDeadlines(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline."""


if HttpToolsProtocol is not None:

    class HttpToolsWithDeadlines(_HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol (its fast C parser) with the header deadline."""


def protocol_class(header_timeout_s: float) -> Any:
    """What uvicorn's `http=` takes: the protocol class it would pick itself, with the header deadline (a
    partial of a module-level class, so that worker processes can unpickle it)."""
    cls = H11WithDeadlines if HttpToolsProtocol is None else HttpToolsWithDeadlines
    return functools.partial(cls, header_timeout=header_timeout_s)


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """uvicorn settings for the connection limits: header deadline, idle keep-alive, concurrent connections."""
    return {
        "http": protocol_class(cfg.header_timeout_s),
        "timeout_keep_alive": cfg.keep_alive_s,
        "limit_concurrency": cfg.max_connections,
    }
