"""Micro-batching: the concurrent requests for one model gathered into forward passes that run in
threads, off the event loop."""
from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from captcha_recognize.reading.recognizer import CaptchaRecognizer, Prediction
from captcha_recognize.serve.requests import RequestError, prepare_all

log = logging.getLogger("captcha.serve")


def batch_sizes(max_batch: int) -> list[int]:
    """The sizes a forward pass is padded to (1, 2, 4, then multiples of 8, and ``max_batch``): the
    CPU kernels keep buffers per input shape, and 64 shapes per thread grew the server by 300 MB."""
    return sorted({s for s in (1, 2, 4) if s < max_batch} | set(range(8, max_batch, 8)) | {max_batch})


@dataclass
class Job:
    """One request's images, waiting for a forward pass."""
    images: Sequence[bytes]  # encoded: decoded in the forward pass, by ``recognizer``
    recognizer: CaptchaRecognizer  # the model version the request was given to
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    predictions: list[Prediction]
    decode_ms: float
    queue_ms: float
    model_ms: float
    batch_images: int


@dataclass
class Pass:
    """What a forward thread hands back: per job its arrays' readings or its ``RequestError``."""
    readings: list[list[tuple[str, float]] | RequestError]
    decode_ms: list[float]
    model_ms: float
    images: int


class Batcher:
    """Gathers the jobs of one model into forward passes, waiting up to ``max_wait`` seconds for
    more, and runs up to ``passes`` of them at once, each of up to ``max_batch / passes`` images
    (so that a full queue keeps every thread busy, not one with all of it), each in its
    own thread with one torch thread (as ``CaptchaRecognizer.map_chunks`` does: on the CPU one
    core per pass beats all cores per pass, and a busy core does not stall the others). While
    every thread is busy, new jobs queue up and join the next pass. The forward thread also decodes
    the pass's images (``prepare_all``), as ``map_chunks`` does, so that the event loop only speaks
    HTTP. Jobs given to another version of the model (a reload in between) go into a pass of their
    own, with that version."""

    def __init__(self, max_batch: int, max_wait: float, on_batch: Callable[[int], None], passes: int = 1,
                 max_pixels: int | None = None):
        self.max_wait, self.on_batch, self.max_pixels = max_wait, on_batch, max_pixels
        self.answered, self.finished = 0, 0.0  # jobs of the last pass that finished, and when (perf_counter)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.free = asyncio.Semaphore(passes)
        self.share = -(-max_batch // passes)  # images per pass at most (a larger request runs whole)
        self.passes, self.sizes = passes, batch_sizes(max_batch)
        self.executor = ThreadPoolExecutor(passes, thread_name_prefix="forward", initializer=torch.set_num_threads,
                                           initargs=(1,))
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, *self.running, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def warm(self, rec: CaptchaRecognizer) -> None:
        """Decode a PNG and run every padded batch size once on each forward thread, so that
        Pillow's decoders load and the kernels' buffers for each shape are allocated now rather
        than over the first minutes of traffic."""
        pre = rec.preprocess
        barrier = threading.Barrier(self.passes)  # each thread takes exactly one of the calls
        png = io.BytesIO()
        Image.new("L", (pre.width, pre.height), 255).save(png, "PNG")

        def run() -> None:
            barrier.wait()
            rec.prepare(png.getvalue(), self.max_pixels)
            for size in self.sizes:
                rec.predict_arrays(np.zeros((size, pre.in_channels, pre.height, pre.width), np.uint8))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, run) for _ in range(self.passes)))

    async def submit(self, images: Sequence[bytes], rec: CaptchaRecognizer) -> BatchResult:
        """Readings of ``images`` (encoded) by ``rec``; a ``RequestError`` names a bad image."""
        job = Job(images, rec, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def gather(self, first: Job) -> tuple[list[Job], Job | None]:
        """``first`` and the jobs that join its pass; the job that could not join, if any. Jobs already
        queued always join; the pass waits (up to ``max_wait``) for more only until it holds as many
        jobs as the last pass that finished answered, as those clients are sending their next request.
        A request that comes more than ``max_wait`` after that pass ended is no such stream: it runs
        at once, as does a lone client's (one job a pass)."""
        loop = asyncio.get_running_loop()
        expect = self.answered if first.queued - self.finished <= self.max_wait else 1
        jobs, n, deadline = [first], len(first.images), loop.time() + self.max_wait
        while n < self.share:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                wait = deadline - loop.time()
                if wait <= 0 or len(jobs) >= expect:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), wait)
                except asyncio.TimeoutError:
                    break
            if job.recognizer is not first.recognizer or n + len(job.images) > self.share:
                return jobs, job
            jobs.append(job)
            n += len(job.images)
        return jobs, None

    async def run(self) -> None:
        held: Job | None = None
        loop = asyncio.get_running_loop()
        while True:
            first = held or await self.queue.get()
            await self.free.acquire()  # jobs that arrive meanwhile join this pass
            jobs, held = await self.gather(first)
            task = loop.create_task(self.execute(jobs))
            self.running.add(task)
            task.add_done_callback(self.done)

    def done(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.free.release()

    async def execute(self, jobs: list[Job]) -> None:
        """One forward pass for ``jobs``; each future gets its own slice of the answers, or its error."""
        rec = jobs[0].recognizer
        start = time.perf_counter()
        try:
            done = await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, rec, jobs)
        except Exception as e:  # a model that fails on its input fails these requests only
            log.exception("forward pass failed")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(RuntimeError(f"forward pass failed: {type(e).__name__}"))
            return
        finally:
            self.answered, self.finished = len(jobs), time.perf_counter()
        if done.images:
            self.on_batch(done.images)
        for j, readings, decode_ms in zip(jobs, done.readings, done.decode_ms):
            if j.future.done():  # the client went away
                continue
            if isinstance(readings, RequestError):
                j.future.set_exception(readings)
            else:
                mine = [Prediction(t, c, rec.accepts(c)) for t, c in readings]
                j.future.set_result(BatchResult(mine, decode_ms, 1000 * (start - j.queued), done.model_ms,
                                                done.images))

    def forward(self, rec: CaptchaRecognizer, jobs: list[Job]) -> Pass:
        """In a forward thread: decode each job's images, then read them all in one padded pass."""
        prepared: list[list[np.ndarray] | RequestError] = []
        decode_ms = []
        for j in jobs:
            t = time.perf_counter()
            try:
                prepared.append(prepare_all(rec, j.images, self.max_pixels))
            except RequestError as e:
                prepared.append(e)
            decode_ms.append(1000 * (time.perf_counter() - t))
        arrays = [a for p in prepared if not isinstance(p, RequestError) for a in p]
        n, t = len(arrays), time.perf_counter()
        if n:
            pad = next((size for size in self.sizes if size >= n), n) - n
            batch = np.stack(arrays + [np.zeros_like(arrays[0])] * pad)  # (N + pad, C, H, W) uint8
            readings = rec.predict_arrays(batch)
        model_ms = 1000 * (time.perf_counter() - t)
        out: list[list[tuple[str, float]] | RequestError] = []
        i = 0
        for p in prepared:
            if isinstance(p, RequestError):
                out.append(p)
            else:
                out.append(readings[i:i + len(p)])
                i += len(p)
        return Pass(out, decode_ms, model_ms, n)
