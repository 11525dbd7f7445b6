"""The server's limits against clients that stall, send too much, leave, or flood it with large images: a real
`lab2prod serve` on loopback (a three-class ONNX model written here, run by ONNX Runtime), raw sockets and
httpx; the decompression-bomb guard from threads; the write token."""

from __future__ import annotations

import concurrent.futures
import io
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks.tiny_model import tiny_onnx
from lab2prod.data.images import BadImage, decode_image
from lab2prod.serve.auth import WriteAuth

TOKEN = "test-token-" + "x" * 24
BIG = (2000, 1900)  # 3.8 Mpx: under the server's serve.max_image_pixels here
SETTINGS = {
    "max_body_mb": 4,
    "max_images": 64,
    "max_image_pixels": 4_000_000,
    "decode_mpx": 8,  # two BIG images at a time
    "max_decodes": 2,
    "request_timeout_s": 2,
    "body_timeout_s": 1,
    "header_timeout_s": 1,
    "keep_alive_s": 1,
    "max_connections": 24,
    "feedback_dir": "inbox",
    "log_sample": 0,
}
WAIT = 4.0  # seconds a socket waits for what a 1 s limit must have produced


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def start_server(work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lab2prod.cli.main", "serve", "--model", str(tiny_onnx(work / "m.onnx"))]
    cmd += ["--port", str(port), *[a for k, v in SETTINGS.items() for a in ("-S", f"serve.{k}={v}")]]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (work / "server.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port, log
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not become ready within 60 s:\n" + (work / "server.log").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import os

    work = tmp_path_factory.mktemp("limits")
    proc, port, log = start_server(work, {**os.environ, "LAB2PROD_TOKEN": TOKEN})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        yield {"port": port, "proc": proc, "client": client, "work": work}
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
        log.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (socket.timeout if it does not within WAIT s)."""
    data, deadline = b"", time.monotonic() + WAIT
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise TimeoutError(f"connection still open after {WAIT} s; received {data[:200]!r}")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def head(path: str, length: int | str, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def counted(client: httpx.Client, endpoint: str, status: str) -> float:
    needle = f'lab2prod_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    line = next((ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(needle)), needle + "0")
    return float(line.rsplit(" ", 1)[1])


def test_a_huge_content_length_is_answered_413_at_once_without_its_body(server: dict[str, Any]) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(head("/predict", 10**12) + b"abc")
        answer = read_all(sock)  # answered, and closed, without the body being sent
    assert status_of(answer) == 413 and b"serve.max_body_mb" in answer
    assert b"connection: close" in answer.lower()


def test_a_streamed_body_is_answered_413_as_it_passes_the_limit_and_closed(server: dict[str, Any]) -> None:
    chunk = b"\0" * 2**20
    with connect(server["port"]) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):  # 5 MB announced by no Content-Length, over the 4 MB limit; then the client waits
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = read_all(sock)
    assert status_of(answer) == 413 and b"serve.max_body_mb" in answer


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_a_body_that_stalls_is_answered_408_within_the_body_timeout(server: dict[str, Any], path: str) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    with connect(server["port"]) as sock:
        sock.sendall(head(path, 1000, auth if path == "/feedback" else "") + b"--b\r\n")  # then nothing
        answer = read_all(sock)
    assert status_of(answer) == 408 and b"serve.body_timeout_s" in answer
    assert server["client"].get("/healthz").status_code == 200


def test_slow_headers_and_idle_connections_are_closed(server: dict[str, Any]) -> None:
    with connect(server["port"]) as idle, connect(server["port"]) as slow, connect(server["port"]) as kept:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and the rest never comes
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # answered, then left idle
        idle_answer = read_all(idle)  # closed: a connection that sends nothing is not held
        assert idle_answer == b"" or status_of(idle_answer) == 408
        slow_answer = read_all(slow)
        assert status_of(slow_answer) == 408 and b"serve.header_timeout_s" in slow_answer
        kept_answer = read_all(kept)
        assert status_of(kept_answer) == 200 and kept_answer.endswith(b'{"status":"ok"}')


def test_connections_over_max_connections_are_answered_503(server: dict[str, Any]) -> None:
    held = [connect(server["port"]) for _ in range(SETTINGS["max_connections"])]
    try:
        with connect(server["port"]) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status_of(sock.recv(65536)) == 503
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + WAIT  # the held ones are gone (closed by us): served again
    while server["client"].get("/healthz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server["client"].get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_a_client_that_leaves_mid_body_is_counted_499_not_500(server: dict[str, Any], path: str) -> None:
    client = server["client"]
    before = counted(client, path, "499"), counted(client, path, "500")
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    with connect(server["port"]) as sock:
        sock.sendall(head(path, 100_000, auth if path == "/feedback" else "") + b"--b\r\n" + b"x" * 1000)
        time.sleep(0.2)  # the server has the request and is reading its body
    deadline = time.monotonic() + WAIT
    while counted(client, path, "499") == before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (counted(client, path, "499"), counted(client, path, "500")) == (before[0] + 1, before[1])
    assert "Traceback" not in (server["work"] / "server.log").read_text()


def big_png(seed: int) -> bytes:
    return png(Image.new("RGB", BIG, (seed * 37 % 256, 90, 160)))  # compresses to a few KB, decodes to 23 MB


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1]) / 1024


def test_large_images_beyond_the_decode_budget_get_503_and_memory_stays_bounded(server: dict[str, Any]) -> None:
    pid, port = server["proc"].pid, server["port"]
    files = [("files", (f"{i}.png", big_png(i), "image/png")) for i in range(4)]
    baseline, peak, done = rss_mb(pid), [0.0], threading.Event()

    def sample() -> None:
        for _ in range(1000):  # every 10 ms, 10 s at most
            peak[0] = max(peak[0], rss_mb(pid))
            if done.wait(0.01):
                return

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            return c.post("/predict", files=files)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))  # 8 requests of 4 large images each, at once
    finally:
        done.set()
        watcher.join()
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes, codes  # two requests' images fit the budget (8 Mpx) at a time
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] and "serve.decode_mpx" in busy.json()["detail"]
    # two images decoded at a time: ~2 x 3.8 Mpx x 5 bytes (RGB as Pillow holds it, and grey) and the decoder's
    # buffers; 8 at a time (no budget) is over 250 MB
    assert peak[0] - baseline < 128, f"RSS went from {baseline:.0f} MB to {peak[0]:.0f} MB"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ = 100)


def test_a_timed_out_request_stops_decoding(server: dict[str, Any]) -> None:
    """64 large transparent images take longer to decode than serve.request_timeout_s (2 s): after the 504,
    the server stops (before its next image) instead of decoding the rest."""
    one = png(Image.new("RGBA", BIG, (10, 200, 30, 128)))  # composited onto white: slower than RGB
    started = time.perf_counter()
    for _ in range(3):
        decode_image(one, 16, 1, 4_000_000)
    per_image = (time.perf_counter() - started) / 3
    n = 64
    if n * per_image < SETTINGS["request_timeout_s"] + 2:
        pytest.skip(f"64 images decode in {n * per_image:.1f} s here: no work left after the timeout to stop")
    r = server["client"].post("/predict", files=[("files", (f"{i}.png", one, "image/png")) for i in range(n)])
    assert r.status_code == 504 and "serve.request_timeout_s" in r.json()["detail"], r.text
    cpu = cpu_seconds(server["proc"].pid)
    time.sleep(1.5)
    after = cpu_seconds(server["proc"].pid) - cpu
    assert after < max(0.5, 3 * per_image), f"{after:.2f} s of CPU after the 504 (one image: {per_image:.2f} s)"


def test_feedback_needs_the_token_when_one_is_configured(server: dict[str, Any]) -> None:
    client = server["client"]
    image = png(Image.new("L", (16, 16), 77))
    form = {"files": {"image": ("x.png", image, "image/png")}, "data": {"label": "b"}}
    for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"}, {"authorization": TOKEN}):
        refused = client.post("/feedback", headers=headers, **form)
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["detail"], refused.text
    assert not (server["work"] / "inbox").exists()
    ok = client.post("/feedback", headers={"authorization": f"Bearer {TOKEN}"}, **form)
    assert ok.status_code == 201, ok.text
    assert (server["work"] / ok.json()["path"]).read_bytes() == image  # relative to the server's directory
    assert client.post("/predict", content=image).status_code == 200  # reads need no token


def test_writes_beyond_loopback_need_a_token() -> None:
    assert WriteAuth("127.0.0.1", None).refusal({}) is None  # loopback, no token: open
    assert WriteAuth("::1", None).refusal({}) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        assert "LAB2PROD_TOKEN" in (WriteAuth(host, None).refusal({}) or "")
        auth = WriteAuth(host, TOKEN)
        assert auth.refusal({b"authorization": f"Bearer {TOKEN}".encode()}) is None
        assert auth.refusal({b"authorization": f"Bearer {TOKEN}x".encode()})


def test_the_bomb_guard_holds_while_other_images_decode_in_threads() -> None:
    """Decoding in threads (as the server does) must refuse an image over the limit every time: the guard
    reads no process-wide setting that another thread's decode could change under it."""
    normal = png(Image.new("L", (64, 64), 128))  # 4096 pixels
    over = png(Image.new("L", (150, 100), 128))  # 15000 pixels: over 10000
    leaked, refused, pillow_limit = [0], [0], Image.MAX_IMAGE_PIXELS
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: every race gets its chance
    end = time.monotonic() + 3

    def work(i: int) -> None:
        for k in range(2000):
            if time.monotonic() > end or leaked[0]:
                return
            if (k + i) % 2:
                assert decode_image(normal, 16, 1, 10_000).shape == (16, 16, 1)
                continue
            try:
                decode_image(over, 16, 1, 10_000)
                leaked[0] += 1
            except BadImage as exc:
                assert exc.reason == "decompression_bomb"
                refused[0] += 1

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
    finally:
        sys.setswitchinterval(interval)
    assert leaked[0] == 0 and refused[0] > 100, (leaked[0], refused[0])
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's own setting, untouched


class _Assets(HTMLParser):
    """The URLs a page loads: every <script src> and <link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        self.urls += [v for k, v in attrs if k == wanted and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_nothing_from_the_internet(server: dict[str, Any], page: str) -> None:
    client = server["client"]
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(html.text)
    scripts = [u for u in parser.urls if u.endswith(".js")]
    assert scripts and all(u.startswith("/") and not u.startswith("//") for u in parser.urls), parser.urls
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html.text), html.text
    before = counted(client, "/docs-assets", "200")
    for url in parser.urls:
        asset = client.get(url)
        kind = {".js": "javascript", ".css": "text/css", ".png": "image/png"}[Path(url).suffix]
        assert asset.status_code == 200 and kind in asset.headers["content-type"] and len(asset.content) > 1000, url
    deadline = time.monotonic() + WAIT  # counted once each answer is out: one metrics label for them all
    while counted(client, "/docs-assets", "200") < before + len(parser.urls) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted(client, "/docs-assets", "200") == before + len(parser.urls)
    assert counted(client, "/docs-assets", "499") == 0  # an answer sent in full is no client gone
    assert client.get("/openapi.json").json()["paths"]["/predict"]  # what the page then loads
