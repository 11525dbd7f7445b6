"""Dynamic micro-batching: images (or texts) from concurrent requests share one model call.

Texts are tokenized once for the whole merged batch, then cut into groups of similar token length
(lab2prod/data/tokens.py `length_groups`), each padded to its own longest text and run as one call: a few
long texts do not make every short one in the batch pay for their length. `MicroBatcher.text_calls` keeps the
shape (texts, padded length) and the real tokens of the recent text calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lab2prod.data.tokens import length_groups
from lab2prod.serve.metrics import Metrics
from lab2prod.serve.model import ServedModel
from lab2prod.serve.prediction_log import PredictionLog

log = logging.getLogger("lab2prod.serve")


class Busy(Exception):
    """More images waiting than serve.max_queue."""


@dataclasses.dataclass
class Job:
    model: ServedModel
    images: np.ndarray  # uint8 NHWC, or a text model's texts (dtype object)
    fingerprints: list[str]
    files: list[tuple[bytes, str]] | None
    future: asyncio.Future


class MicroBatcher:
    """Collects images from concurrent requests into model calls of up to `max_batch` images."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        prediction_log: PredictionLog | None,
        log_top_k: int,
    ) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics, self.prediction_log, self.log_top_k = metrics, prediction_log, log_top_k
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="lab2prod-model")
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pending = 0  # images submitted and not answered yet
        self.arriving = 0  # requests being read or decoded: their images will be submitted soon
        self.submitted = asyncio.Event()
        self.text_calls: deque[tuple[int, int, int]] = deque(maxlen=1024)  # (texts, padded length, real tokens)

    async def submit(
        self, model: ServedModel, images: np.ndarray, fingerprints: list[str], files: list[tuple[bytes, str]] | None
    ) -> np.ndarray:
        n = len(images)
        if self.pending + n > self.max_queue:
            raise Busy(f"{self.pending} images are waiting for the model (serve.max_queue = {self.max_queue})")
        loop = asyncio.get_running_loop()
        jobs = []
        for i in range(0, n, self.max_batch):
            sl = slice(i, i + self.max_batch)
            jobs.append(Job(model, images[sl], fingerprints[sl], files[sl] if files else None, loop.create_future()))
        self.pending += n
        self.metrics.queue.set(self.pending)
        try:
            for job in jobs:
                self.queue.put_nowait(job)
            self.submitted.set()
            return np.concatenate(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            self.pending -= n
            self.metrics.queue.set(self.pending)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: Job | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            jobs, n = [first], len(first.images)
            deadline = loop.time() + self.max_wait_s
            while True:
                while n < self.max_batch and not self.queue.empty():
                    job = self.queue.get_nowait()
                    if n + len(job.images) > self.max_batch:
                        carry = job
                        break
                    jobs.append(job)
                    n += len(job.images)
                remaining = deadline - loop.time()
                # Wait for more only while other requests are on their way in (being read or decoded):
                # a lone request is never held back.
                if carry is not None or n >= self.max_batch or remaining <= 0 or self.arriving == 0:
                    break
                self.submitted.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.submitted.wait(), remaining)
            jobs = [j for j in jobs if not j.future.done()]  # a request that timed out is not run
            for model in {id(j.model): j.model for j in jobs}.values():  # each request on the model it started with
                group = [j for j in jobs if j.model is model]
                try:
                    probs = await loop.run_in_executor(self.executor, self._infer, model, group)
                except Exception as exc:  # the model failed on valid input: those requests get a 500, nothing else
                    log.exception(
                        "model %s failed on a batch of %d images", model.version, sum(len(j.images) for j in group)
                    )
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                start = 0
                for j in group:
                    if not j.future.done():
                        j.future.set_result(probs[start : start + len(j.images)])
                    start += len(j.images)

    def _infer(self, model: ServedModel, group: list[Job]) -> np.ndarray:
        x = group[0].images if len(group) == 1 else np.concatenate([j.images for j in group])
        text_stats = None
        if model.classifier.encoder is not None:
            probs, text_stats = self._infer_texts(model, x)
        else:
            probs = model.classifier.predict(x)
        self.metrics.batch.observe(len(x))
        self.metrics.images.inc(len(x))
        if self.prediction_log is not None and self.prediction_log.enabled:
            files = None
            if self.prediction_log.keep_images and all(j.files for j in group):
                files = [f for j in group for f in j.files]
            try:
                logged = self.prediction_log.record(
                    model.version,
                    model.sha256,
                    model.classifier.classes,
                    probs,
                    x,
                    [f for j in group for f in j.fingerprints],
                    files,
                    self.log_top_k,
                    text_stats,
                )
                self.metrics.logged.inc(logged)
            except OSError as exc:  # a full disk must not fail predictions
                log.warning("prediction log: cannot write (%s); predictions go on unlogged", exc)
        return probs

    def _infer_texts(self, model: ServedModel, texts: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
        """Texts tokenized once, run per length group; probabilities in the texts' order, and their token stats."""
        encoder = model.classifier.encoder
        assert encoder is not None
        ids = encoder.ids([str(t) for t in texts])
        probs: np.ndarray | None = None
        for rows in length_groups([len(i) for i in ids]):
            padded = encoder.pad([ids[i] for i in rows])
            out = model.classifier.predict_tokens(padded)
            if probs is None:
                probs = np.empty((len(ids), out.shape[1]), dtype=out.dtype)
            probs[rows] = out
            self.text_calls.append((len(rows), int(padded.shape[1]), sum(len(ids[i]) for i in rows)))
        assert probs is not None
        return probs, encoder.token_stats(ids)
