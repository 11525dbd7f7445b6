"""Load test of `lab2prod serve` from a separate process on loopback: throughput and latency at several
client counts, micro-batched vs batch-of-one, and two champion promotions under load.

Each client sends one digit image per request (raw PNG body), as fast as answers come back, for
`--seconds` per level (and at most `--max-requests`). The server is a real `lab2prod serve` process
following a registry with two versions of the workspace's exported model (run `lab2prod run` first).
Then, with 32 clients, the champion is promoted twice during the load: every request must succeed and
the answers' model version must follow the promotions.

    python -m benchmarks.serve_load                 # 1, 8, 32 clients; 6 s per level
    python -m benchmarks.serve_load --clients 32 --seconds 10
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from PIL import Image
from sklearn.datasets import load_digits

from lab2prod.core.layout import WORKSPACE
from lab2prod.registry.store import register, set_champion
from models.export.machine import describe_machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digit_pngs(n: int, size: int) -> list[bytes]:
    digits = load_digits()
    out = []
    for i in range(n):
        img = Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((size, size))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """A `lab2prod serve` subprocess on a free port, stopped on exit."""

    def __init__(self, registry: Path, work: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        sets = [a for k, v in settings.items() for a in ("-S", f"serve.{k}={v}")]
        cmd = [
            sys.executable,
            "-m",
            "lab2prod.cli.main",
            "serve",
            "--registry",
            str(registry),
            "--port",
            str(self.port),
        ]
        self.log = (work / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen(cmd + sets, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not become ready in 60 s; see {self.log.name}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive POST on an open connection: (status, response body)."""
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(status_line.split()[1]), await reader.readexactly(length)


async def _client_loop(
    port: int, clients: int, offset: int, seconds: float, max_requests: int, images: list[bytes]
) -> dict:
    """`clients` keep-alive connections in this process, each sending one image per request until the deadline."""
    latencies: list[float] = []
    failures: list[str] = []
    versions: list[tuple[float, str]] = []
    sent = 0
    start = time.time()  # wall clock: comparable across processes
    deadline = time.perf_counter() + seconds

    async def one(k: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = images[i % len(images)]
                head = (
                    f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                sent_at = time.time() - start
                try:
                    status, answer = await _post(reader, writer, head, body)
                    if status != 200:
                        failures.append(f"{status}: {answer[:200]!r}")
                    else:
                        versions.append((sent_at, json.loads(answer)["model_version"]))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - t0)
                i += clients
        finally:
            writer.close()

    await asyncio.gather(*(one(offset + k) for k in range(clients)))
    return {"start": start, "latencies": latencies, "failures": failures, "versions": versions}


def _client_process(args: tuple) -> dict:
    return asyncio.run(_client_loop(*args))


def load(
    port: int, clients: int, seconds: float, max_requests: int, images: list[bytes], during: Any = None
) -> dict[str, Any]:
    """`clients` concurrent keep-alive connections, one image per request, spread over up to 4 client
    processes (so the load generator is not the bottleneck); `during(start, deadline)` runs meanwhile."""
    procs = min(4, clients)
    shares = [clients // procs + (k < clients % procs) for k in range(procs)]
    offsets = [sum(shares[:k]) for k in range(procs)]
    ctx = multiprocessing.get_context("fork")
    start = time.time()
    with ctx.Pool(procs) as pool:
        pending = pool.map_async(
            _client_process,
            [(port, n, off, seconds, max_requests // procs, images) for n, off in zip(shares, offsets, strict=True)],
        )
        if during is not None:
            during(start, start + seconds)
        parts = pending.get(seconds + 120)
    wall = max(time.time() - p["start"] for p in parts) if parts else seconds
    latencies = np.array([x for p in parts for x in p["latencies"]]) * 1000
    failures = [x for p in parts for x in p["failures"]]
    versions = sorted((p["start"] - start + t, v) for p in parts for t, v in p["versions"])
    return {
        "clients": clients,
        "requests": len(latencies),
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "versions": versions,
    }


def batch_sizes(url: str) -> tuple[float, float]:
    """(images, model calls) so far, from the server's /metrics."""
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("lab2prod_batch_images_sum", "lab2prod_batch_images_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("lab2prod_batch_images_sum", 0.0), values.get("lab2prod_batch_images_count", 0.0)


def promotion_check(r: dict[str, Any], promoted: list[tuple[float, str]], settle_s: float = 1.5) -> dict[str, Any]:
    """Versions answered in each phase: before the first promotion, from `settle_s` after it to the second, and
    from `settle_s` after the second (the settle time covers serve.reload_interval_s and requests in flight)."""
    edges = [0.0] + [t for t, _ in promoted] + [float("inf")]
    expected = ["v0001"] + [v for _, v in promoted]
    phases = []
    for k, want in enumerate(expected):
        lo, hi = edges[k] + (settle_s if k else 0.0), edges[k + 1]
        seen = [v for t, v in r["versions"] if lo <= t < hi]
        phases.append(
            {"from_s": round(lo, 2), "expected": want, "answers": len(seen), "other": sum(v != want for v in seen)}
        )
    return {
        "requests": r["requests"],
        "failed": r["failed"],
        "failures": r["failures"],
        "promotions": promoted,
        "phases": phases,
        "ok": r["failed"] == 0 and all(p["answers"] > 0 and p["other"] == 0 for p in phases),
    }


def model_only(onnx_file: Path, size: int, channels: int, batch: int) -> dict[str, float]:
    """ONNX Runtime alone, no HTTP: ms per image at batch 1 and at `batch` (what batching can save at most)."""
    from lab2prod.serve.runtime import session

    sess = session(onnx_file)
    out = {}
    for bs in (1, batch):
        x = np.random.default_rng(0).random((bs, channels, size, size), dtype=np.float32)
        for _ in range(20):
            sess.run(None, {"pixels": x})
        calls = max(50, 4000 // bs)
        t0 = time.perf_counter()
        for _ in range(calls):
            sess.run(None, {"pixels": x})
        out[f"ms_per_image_batch{bs}"] = round((time.perf_counter() - t0) / calls / bs * 1000, 4)
    return out


def main(
    clients: Annotated[str, typer.Option(help="Concurrent client counts, comma-separated.")] = "1,8,32",
    seconds: Annotated[float, typer.Option(help="Seconds of load per level.")] = 6.0,
    max_requests: Annotated[int, typer.Option(help="Requests per level, at most.")] = 50_000,
    max_batch: Annotated[int, typer.Option(help="serve.max_batch of the micro-batched server.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="serve.max_wait_ms of the micro-batched server.")] = 5.0,
    out: Annotated[Path, typer.Option(help="JSON result.")] = Path("benchmarks/results/serve_load.json"),
) -> None:
    """Throughput and p50/p99 latency of the server, micro-batched vs batch-of-one; promotions under load."""
    if not (WORKSPACE.exported / "model.onnx").exists():
        raise SystemExit(f"{WORKSPACE.exported}/model.onnx is missing: run `lab2prod run` first")
    levels = [int(c) for c in clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        work = Path(scratch)
        registry = work / "registry"
        for _ in range(2):
            register(registry, Path.cwd(), {"note": "serve_load benchmark"}, None)
        set_champion(registry, "v0001", "benchmark")
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(WORKSPACE.exported / "model.onnx")).metadata_props}
        size, _, channels = json.loads(meta["image_shape_hwc"])
        images = digit_pngs(256, size)
        served = registry / "versions" / "v0001" / json.loads((registry / "champion.json").read_text())["onnx"]
        alone = model_only(served, size, channels, max_batch)
        print(
            f"model alone ({served.name}): {alone['ms_per_image_batch1']:.4f} ms/image at batch 1, "
            f"{alone[f'ms_per_image_batch{max_batch}']:.4f} at batch {max_batch}",
            flush=True,
        )
        common = {"log_dir": str(work / "logs"), "reload_interval_s": 0.5}
        rows = []
        for mode, settings in (
            ("micro-batched", {"max_batch": max_batch, "max_wait_ms": max_wait_ms}),
            ("batch-of-one", {"max_batch": 1, "max_wait_ms": 0}),
        ):
            with Server(registry, work, **settings, **common) as server:
                load(server.port, 4, 1.0, 1000, images)  # warm-up
                for c in levels:
                    before = batch_sizes(server.url)
                    r = load(server.port, c, seconds, max_requests, images)
                    after = batch_sizes(server.url)
                    r.update(mode=mode, mean_batch=round((after[0] - before[0]) / max(after[1] - before[1], 1), 2))
                    rows.append(r)
                    print(
                        f"{mode:14s} {c:3d} clients: {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                        f"p99 {r['p99_ms']:7.2f} ms  mean batch {r['mean_batch']:5.1f}  failed {r['failed']}",
                        flush=True,
                    )

        # promotions under load: v0001 -> v0002 -> v0001 while 32 clients keep sending
        with Server(registry, work, max_batch=max_batch, max_wait_ms=max_wait_ms, **common) as server:
            promoted: list[tuple[float, str]] = []

            def promote_twice(start: float, deadline: float) -> None:
                for target, at in (("v0002", 1 / 3), ("v0001", 2 / 3)):
                    time.sleep(max(0.0, start + at * (deadline - start) - time.time()))
                    set_champion(registry, target, "promotion under load")
                    promoted.append((round(time.time() - start, 2), target))

            r = load(server.port, 32, max(seconds, 6.0), max_requests, images, promote_twice)
        promotion = promotion_check(r, promoted)
    by = {(x["mode"], x["clients"]): x for x in rows}
    top = max(levels)
    ratio = by[("micro-batched", top)]["requests_per_s"] / by[("batch-of-one", top)]["requests_per_s"]
    print(f"\nmicro-batched / batch-of-one throughput at {top} clients: {ratio:.2f}x")
    phases = "; ".join(
        f"from {p['from_s']} s: {p['answers']} answers, {p['other']} not {p['expected']}" for p in promotion["phases"]
    )
    print(f"promotions under load: {promotion['requests']} requests, {promotion['failed']} failed; {phases}")
    for x in rows:
        x.pop("versions")
    result = {
        "machine": describe_machine(),
        "cpu_count": os.cpu_count(),
        "model": meta.get("variant", "fp32") + f" {size}px",
        "seconds_per_level": seconds,
        "model_alone": alone,
        "levels": rows,
        "batched_over_one_at_max_clients": round(ratio, 2),
        "promotion_under_load": promotion,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    if not promotion["ok"]:
        raise SystemExit("promotion under load failed: see the figures above")


if __name__ == "__main__":
    typer.run(main)
