"""Who may write: `POST /feedback` (the write routes, WRITE_PATHS) needs `Authorization: Bearer <token>`
when a token is configured, and is refused (401) on a server that listens beyond loopback without one.

The token comes from the environment, never from params.yaml: LAB2PROD_TOKEN, or a file named by
LAB2PROD_TOKEN_FILE (what `lab2prod serve --token-file` sets; a Kubernetes Secret, a systemd credential).
It is compared with hmac.compare_digest. On loopback without a token, writes stay open (a laptop, a test);
beyond loopback without one, the server starts and serves reads (/predict, /model, /healthz, /readyz,
/metrics), logs a warning, and answers every write 401 naming the variable to set.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from lab2prod.core.errors import ConfigError

TOKEN_ENV, TOKEN_FILE_ENV = "LAB2PROD_TOKEN", "LAB2PROD_TOKEN_FILE"
WRITE_PATHS = frozenset({"/feedback"})
MIN_TOKEN_CHARS = 16


def load_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The write token (LAB2PROD_TOKEN, else the file LAB2PROD_TOKEN_FILE names), None when neither is set;
    ConfigError for an unreadable file or a token too short to resist guessing."""
    token, source = environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    path = environ.get(TOKEN_FILE_ENV, "")
    if not token and path:
        source = f"{TOKEN_FILE_ENV} = {path!r}"
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the token file ({exc}); name a readable text file") from None
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isascii():
        raise ConfigError(
            f"{source}: the token must be at least {MIN_TOKEN_CHARS} ASCII characters; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def is_loopback(host: str) -> bool:
    """True when `host` (serve.host, --host) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost, or 0.0.0.0 / :: (every interface)


class WriteAuth:
    """The check of a write request's `Authorization` header."""

    def __init__(self, host: str, token: str | None) -> None:
        self.host, self.token = host, token.encode() if token else None
        self.open = token is None and is_loopback(host)

    @property
    def writes_disabled(self) -> bool:
        return self.token is None and not self.open

    def refusal(self, headers: Mapping[bytes, bytes]) -> str | None:
        """None when the request may write, else why not (its 401's message)."""
        if self.open:
            return None
        if self.token is None:
            return (
                f"writes are disabled: this server listens on {self.host}, beyond loopback, and was started "
                f"without a token; start it with {TOKEN_ENV} (or {TOKEN_FILE_ENV}, --token-file) set and send "
                "Authorization: Bearer <token>"
            )
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return None
        return f"send Authorization: Bearer <token>, the token this server was started with ({TOKEN_ENV})"
