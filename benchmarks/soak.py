"""Soak test of `lab2prod serve`: a real server on loopback under mixed, partly hostile traffic for a bounded time,
with a promotion of a second model version half-way.

Traffic, all at once until the end (raw asyncio sockets, one client process):
    valid        concurrent keep-alive clients, one PNG per POST /predict      -> 200
    slow_body    a body announced, then one byte every 0.2 s                   -> 408 (serve.body_timeout_s)
    slow_header  request headers one byte every 0.2 s                          -> 408 (serve.header_timeout_s)
    oversized    Content-Length 10^12, no body                                 -> 413 at once
    broken       a PNG cut in half / bytes that are no image                   -> 422
    idle         a connection that sends nothing                               -> closed (or 408)
Half-way, `lab2prod registry promote v0002` makes the second version champion; the server hot-reloads it while
the valid clients keep sending. The server's header, body and keep-alive limits are 1 s, so hostile clients
cycle many times. Recorded: the server's RSS (start after warm-up, peak, end), answers by status per traffic
kind, valid latency, the versions answered. Checked: no failed valid request, every hostile request answered
as expected within its limit + GRACE_S, only v0002 answering from SETTLE_S after the promotion, RSS at the end
at most MEMORY_FACTOR x the start, no traceback in the server log.

    python -m benchmarks.soak                 # 120 s
    python -m benchmarks.soak --seconds 30 --clients 4
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import psutil
import typer
from PIL import Image

from benchmarks.tiny_model import tiny_onnx
from lab2prod.registry.store import register, set_champion

LIMIT_S = 1.0  # serve.header_timeout_s, body_timeout_s and keep_alive_s of the soaked server
GRACE_S = 1.5  # what a hostile request's answer may take beyond its limit
MEMORY_FACTOR = 3.0
SETTLE_S = 3.0  # after the promotion: reload_interval_s, the reload itself and the requests in flight
EXPECTED = {"slow_body": {408}, "slow_header": {408}, "oversized": {413}, "broken": {422}, "idle": {0, 408}}
LIMITS = {"slow_body": LIMIT_S, "slow_header": LIMIT_S, "idle": LIMIT_S, "oversized": 0.0, "broken": 0.0}
PAUSE_S = 0.05  # between one hostile client's requests (the fast ones would otherwise use up the local ports)
CLOSED = 0  # the status recorded for a connection closed without an answer (what an idle one may get)


def build_registry(work: Path) -> Path:
    """Two versions (two different models), v0001 champion."""
    registry = work / "registry"
    for seed in (1, 2):
        project = work / f"run{seed}"
        tiny_onnx(project / "artifacts/export/model.onnx", seed)
        register(registry, project, {"note": "soak"}, None)
    set_champion(registry, "v0001", "soak start")
    return registry


def pngs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def start_server(registry: Path, work: Path, port: int) -> subprocess.Popen:
    settings = {"header_timeout_s": LIMIT_S, "body_timeout_s": LIMIT_S, "keep_alive_s": LIMIT_S}
    settings |= {"reload_interval_s": 0.5, "max_body_mb": 1, "log_dir": str(work / "logs")}
    cmd = [sys.executable, "-m", "lab2prod.cli.main", "serve", "--registry", str(registry), "--port", str(port)]
    cmd += [a for k, v in settings.items() for a in ("-S", f"serve.{k}={v}")]
    with (work / "server.log").open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{(work / 'server.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready in 60 s:\n" + (work / "server.log").read_text())


def rss_mb(pid: int) -> float:
    """RSS of the server process and its children (uvicorn's workers, if any), in MB."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


async def read_status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one response; (CLOSED, b"") if the connection closes first."""
    line = await reader.readline()
    if not line:
        return CLOSED, b""
    length = 0
    while (h := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(line.split()[1]), await reader.readexactly(length)


def head(length: int | str, content_type: str = "image/png") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class Soak:
    def __init__(self, port: int, seconds: float, images: list[bytes]) -> None:
        self.port, self.images = port, images
        self.t0 = time.monotonic()
        self.deadline = self.t0 + seconds
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.late: dict[str, list[float]] = collections.defaultdict(list)  # hostile answers past limit + grace
        self.latencies: list[float] = []
        self.versions: list[tuple[float, str]] = []  # (seconds since start, model_version) of valid answers
        self.failures: list[str] = []

    async def valid(self, k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        i = k
        while time.monotonic() < self.deadline:
            body = self.images[i % len(self.images)]
            i += 7
            started = time.monotonic()
            try:
                writer.write(head(len(body)) + body)
                await writer.drain()
                status, answer = await asyncio.wait_for(read_status(reader), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                status, answer = -1, repr(exc).encode()
            self.counts["valid"][status] += 1
            if status != 200:
                self.failures.append(f"{status}: {answer[:200]!r}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                continue
            self.latencies.append(time.monotonic() - started)
            self.versions.append((started - self.t0, json.loads(answer)["model_version"]))
        writer.close()

    async def hostile(self, kind: str) -> None:
        while time.monotonic() < self.deadline:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            trickle = None
            try:
                if kind == "slow_body":
                    writer.write(head(1000) + b"\x89PNG")
                    trickle = asyncio.create_task(self._trickle(writer, b"x" * 1000))
                elif kind == "slow_header":
                    trickle = asyncio.create_task(self._trickle(writer, head(1000)))
                elif kind == "oversized":
                    writer.write(head(10**12))
                elif kind == "broken":
                    body = self.images[0][: len(self.images[0]) // 2] if int(started * 10) % 2 else b"no image" * 8
                    writer.write(head(len(body)) + body)
                status, _ = await asyncio.wait_for(read_status(reader), LIMITS[kind] + GRACE_S + 5)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                status = -1 if isinstance(exc, TimeoutError) else CLOSED
            finally:
                if trickle is not None:
                    trickle.cancel()
                writer.close()
            took = time.monotonic() - started
            self.counts[kind][status] += 1
            if took > LIMITS[kind] + GRACE_S:
                self.late[kind].append(round(took, 2))
            await asyncio.sleep(PAUSE_S)  # each connection leaves a socket in TIME_WAIT here for a minute

    @staticmethod
    async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
        for b in data:
            writer.write(bytes([b]))
            await asyncio.sleep(0.2)

    async def run(self, clients: int, hostile_each: int) -> None:
        tasks = [self.valid(k) for k in range(clients)]
        tasks += [self.hostile(kind) for kind in EXPECTED for _ in range(hostile_each)]
        await asyncio.gather(*tasks)


def soak(seconds: float = 120.0, clients: int = 8, hostile_each: int = 2, work: Path | None = None) -> dict[str, Any]:
    """Run the soak; returns its figures (see the module docstring) and `problems`, the checks that failed."""
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        work = work or Path(scratch)
        registry = build_registry(work)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_server(registry, work, port)
        try:
            images = pngs(64)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for body in images[:32]:  # warm-up: the model, the decoder, the batcher's buffers
                    client.post("/predict", content=body, headers={"content-type": "image/png"}).raise_for_status()
            rss = {"start": rss_mb(proc.pid)}
            peak, done = [rss["start"]], threading.Event()

            def sample() -> None:
                while not done.wait(0.25):
                    peak[0] = max(peak[0], rss_mb(proc.pid))

            def promote() -> None:
                if not done.wait(seconds / 2):
                    cmd = [sys.executable, "-m", "lab2prod.cli.main", "registry", "promote", "v0002"]
                    promoted.append(time.monotonic() - run.t0)
                    subprocess.run([*cmd, "--registry", str(registry)], check=True, capture_output=True, cwd=work)

            run, promoted = Soak(port, seconds, images), []
            threads = [threading.Thread(target=sample), threading.Thread(target=promote)]
            for t in threads:
                t.start()
            try:
                asyncio.run(run.run(clients, hostile_each))
            finally:
                done.set()
                for t in threads:
                    t.join()
            time.sleep(LIMIT_S + 1)  # the last hostile connections are closed and their buffers freed
            rss.update(peak=max(peak[0], rss_mb(proc.pid)), end=rss_mb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)
        log = (work / "server.log").read_text()
    lat = np.array(run.latencies or [0.0]) * 1000
    after = [v for t, v in run.versions if promoted and t >= promoted[0] + SETTLE_S]
    before = [v for t, v in run.versions if not promoted or t < promoted[0]]
    result = {
        "seconds": seconds,
        "clients": clients,
        "hostile_per_kind": hostile_each,
        "counts": {kind: dict(sorted(run.counts[kind].items())) for kind in ["valid", *EXPECTED]},
        "valid_failed": len(run.failures),
        "failures": run.failures[:5],
        "latency_ms": {q: round(float(np.percentile(lat, p)), 2) for q, p in (("p50", 50), ("p99", 99))},
        "latency_max_ms": round(float(lat.max()), 2),
        "late": {k: v[:5] for k, v in run.late.items() if v},
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "promoted_at_s": round(promoted[0], 2) if promoted else None,
        "versions": {"before": dict(collections.Counter(before)), "after_settle": dict(collections.Counter(after))},
        "tracebacks": log.count("Traceback"),
    }
    result["problems"] = problems(result)
    return result


def problems(r: dict[str, Any]) -> list[str]:
    found = []
    if r["valid_failed"] or not r["counts"]["valid"].get(200):
        found.append(f"valid requests failed: {r['valid_failed']} ({r['failures']})")
    for kind, allowed in EXPECTED.items():
        got = set(r["counts"][kind])
        if not got or not got <= allowed:
            found.append(f"{kind}: answered {r['counts'][kind]}, expected only {sorted(allowed)}")
    if r["late"]:
        found.append(f"answers later than their limit + {GRACE_S} s: {r['late']}")
    if r["rss_mb"]["end"] > MEMORY_FACTOR * r["rss_mb"]["start"]:
        found.append(f"RSS grew from {r['rss_mb']['start']} MB to {r['rss_mb']['end']} MB (> {MEMORY_FACTOR}x)")
    if set(r["versions"]["before"]) != {"v0001"} or set(r["versions"]["after_settle"]) != {"v0002"}:
        found.append(f"versions answered around the promotion: {r['versions']}")
    if r["tracebacks"]:
        found.append(f"{r['tracebacks']} traceback(s) in the server log")
    return found


def table(r: dict[str, Any]) -> str:
    rows = [f"{'traffic':12s} {'requests':>8s}  answers by status (0: closed without an answer)"]
    for kind, counts in r["counts"].items():
        rows.append(f"{kind:12s} {sum(counts.values()):8d}  {counts}")
    rss, lat = r["rss_mb"], r["latency_ms"]
    rows += [
        f"valid latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {r['latency_max_ms']} ms",
        f"server RSS: start {rss['start']} MB, peak {rss['peak']} MB, end {rss['end']} MB "
        f"(end/start {rss['end'] / rss['start']:.2f}x, limit {MEMORY_FACTOR:g}x)",
        f"promotion at {r['promoted_at_s']} s: before {r['versions']['before']}, "
        f"from {SETTLE_S:g} s after {r['versions']['after_settle']}",
        "problems: " + ("; ".join(r["problems"]) or "none"),
    ]
    return "\n".join(rows)


def main(
    seconds: Annotated[float, typer.Option(help="How long the traffic runs.")] = 120.0,
    clients: Annotated[int, typer.Option(help="Concurrent valid clients.")] = 8,
    hostile: Annotated[int, typer.Option(help="Concurrent clients of each hostile kind.")] = 2,
    out: Annotated[Path, typer.Option(help="JSON result.")] = Path("benchmarks/results/soak.json"),
) -> None:
    """Mixed valid and hostile traffic against a real server, a promotion half-way; memory, answers, latency."""
    result = soak(seconds, clients, hostile)
    print(table(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    if result["problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
