"""Serving speed of the exported models, measured side by side on this machine.

Every runner gets the same real test images. Runners take turns in blocks of calls, in a shuffled
order each round, so drift in the machine's speed hits all variants alike. Batch-1 latency: p50/p95
over `calls` calls each; batch-N throughput: images per second from the median of `batch_calls`
calls each.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lab2prod.serve.runtime import session

Runner = Callable[[np.ndarray], object]


SINGLES = 256  # distinct images the batch-1 calls cycle through


def torch_runner(net: torch.nn.Module) -> Runner:
    net = net.eval()

    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return net(torch.from_numpy(x))

    return run


def onnx_runner(path: Path) -> Runner:
    sess = session(path)  # ORT's defaults, as served
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def measure(
    runners: dict[str, Runner],
    images: np.ndarray,
    calls: int,
    batch: int,
    batch_calls: int,
    block: int = 100,
    warmup: int = 50,
    pause_s: float = 0.05,
    seed: int = 0,
    budget_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """Latency at batch 1 and throughput at `batch`, interleaved across runners in blocks.

    Each round runs every runner for `block` consecutive calls (shuffled order per round), each call
    timed on its own. Blocks rather than single calls: a server runs one model back to back, and
    alternating call by call would mostly measure thread pools waking up after another model's turn.
    A short pause before each block lets the previous runner's worker threads (ONNX Runtime's spin
    after each call) go idle, so no runner is timed while another one's threads hold the cores.

    `budget_s` caps each of the two phases at half of it: after a whole round past that time no new
    round starts (every runner has had the same rounds, at least one), so a large model on a slow machine
    is measured with fewer calls instead of for an hour. The calls made are in the result.
    """
    phase_s = None if budget_s is None else budget_s / 2
    rng = random.Random(seed)
    names = list(runners)
    singles = [np.ascontiguousarray(images[i : i + 1]) for i in range(min(len(images), SINGLES))]
    big = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))

    def timed_block(
        fn: Runner, inputs: list[np.ndarray], count: int, out: list[float], scale: float, warm: int
    ) -> None:
        time.sleep(pause_s)
        for i in range(warm if not out else 0):  # first block of each runner: warm-up, untimed
            fn(inputs[i % len(inputs)])
        for i in range(count):
            start = time.perf_counter_ns()
            fn(inputs[i % len(inputs)])
            out.append((time.perf_counter_ns() - start) * scale)

    latency: dict[str, list[float]] = {n: [] for n in names}
    batched: dict[str, list[float]] = {n: [] for n in names}
    began = time.monotonic()
    for start in range(0, calls, block):
        rng.shuffle(names)
        for name in names:
            inputs = singles[start % len(singles) :] + singles
            timed_block(runners[name], inputs, min(block, calls - start), latency[name], 1e-6, warmup)
        if phase_s is not None and time.monotonic() - began > phase_s:
            break
    batch_block = max(1, block // 10)
    began = time.monotonic()
    for start in range(0, batch_calls, batch_block):
        rng.shuffle(names)
        for name in names:
            count = min(batch_block, batch_calls - start)
            timed_block(runners[name], [big], count, batched[name], 1e-9, max(1, warmup // 10))
        if phase_s is not None and time.monotonic() - began > phase_s:
            break
    return {
        n: {
            "batch1_p50_ms": float(np.percentile(latency[n], 50)),
            "batch1_p95_ms": float(np.percentile(latency[n], 95)),
            f"batch{batch}_images_per_s": float(batch / np.median(batched[n])),
            "calls": len(latency[n]),
            "batch_calls": len(batched[n]),
            "block": block,
            "pause_s": pause_s,
        }
        for n in runners
    }
