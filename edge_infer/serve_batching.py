"""Dynamic batching for `edge-infer serve`: the digits of requests that arrive together share one session.run.

    batcher = Batcher(classifier.classify)
    await batcher.start()
    with batcher.expecting():                       # this request is decoding its images
        digits = await decode(...)                  # (in a thread)
    predictions = await batcher.classify(digits)    # one run with whatever else is queued
    await batcher.stop()

One task owns the model: it takes everything queued (up to max_batch images) and runs it in one thread, so
runs never overlap and requests queue while one is in progress. Before a run it waits up to `wait_s` for
requests that are still decoding their images (the server announces them with `expecting`), never when
none are: a lone client pays no wait (like Triton's max_queue_delay, but only when more is on its way).
The queue is bounded (max_pending images): past that, classify raises QueueFull at once (HTTP 503).

Only asyncio, numpy and the standard library: the server's framework is not needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edge_infer.classifier import Prediction

__all__ = ["Batcher", "BatchStats", "QueueFull"]


class QueueFull(RuntimeError):
    """More images are queued than the batcher holds; the caller should answer 503 (retry later)."""


@dataclass
class BatchStats:
    """What the batcher has done so far (GET /v1/model shows it, the benchmark reads it)."""

    runs: int = 0  # session.runs
    images: int = 0  # images classified by them
    largest: int = 0  # images in the largest run


@dataclass
class _Job:
    digits: np.ndarray  # float32 [n, 28, 28]
    done: asyncio.Future[list[Prediction]]


class Batcher:
    """Classifies the digits of concurrent requests, those queued together in one call of `classify`."""

    def __init__(
        self,
        classify: Callable[[np.ndarray], list[Prediction]],
        *,
        max_batch: int = 256,
        wait_s: float = 0.002,
        max_pending: int = 4096,
    ) -> None:
        self._classify = classify
        self.max_batch, self.wait_s, self.max_pending = max_batch, wait_s, max_pending
        self.stats = BatchStats()
        self._queue: list[_Job] = []
        self._pending = 0  # images in the queue
        self._expected = 0  # requests still decoding, whose digits will come soon
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="edge-infer-model")  # runs never overlap

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            while self._queue:
                await asyncio.sleep(0.001)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._runner.shutdown(wait=True)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """While inside, the batcher knows that one more request will soon queue digits, and may wait for it."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            if self._wake is not None:
                self._wake.set()  # a run waiting for this request needn't wait longer

    async def classify(self, digits: np.ndarray) -> list[Prediction]:
        """Predictions for float32 [n, 28, 28], classified together with whatever else is queued."""
        if len(digits) == 0:
            return []
        if self._wake is None:
            raise RuntimeError("Batcher.start() was not called")
        if self._pending + len(digits) > self.max_pending:
            raise QueueFull(f"the queue is full ({self._pending} images waiting); retry later")
        job = _Job(digits, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._pending += len(digits)
        self._wake.set()
        return await job.done

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            deadline = time.monotonic() + self.wait_s
            while self._expected and self._pending < self.max_batch and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                self._wake.clear()
            jobs: list[_Job] = []
            size = 0
            while self._queue and (not jobs or size + len(self._queue[0].digits) <= self.max_batch):
                job = self._queue.pop(0)
                jobs.append(job)
                size += len(job.digits)
            self._pending -= size
            if self._queue:
                self._wake.set()  # more than one run's worth: the next run starts right after this one
            digits = jobs[0].digits if len(jobs) == 1 else np.concatenate([job.digits for job in jobs])
            try:
                predictions = await loop.run_in_executor(self._runner, self._classify, digits)
            except Exception as error:  # e.g. ModelError for NaN logits: every request in the run gets it
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(error)
                continue
            self.stats.runs += 1
            self.stats.images += size
            self.stats.largest = max(self.stats.largest, size)
            start = 0
            for job in jobs:
                if not job.done.done():  # (a request that timed out has cancelled its future)
                    job.done.set_result(predictions[start : start + len(job.digits)])
                start += len(job.digits)
