"""The service's Prometheus metrics, summed over ``--workers`` processes."""
from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from captcha_recognize.serve.config import MULTIPROC_ENV


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("captcha_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("captcha_request_seconds", "HTTP request latency", ["path"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.batch = Histogram("captcha_batch_images", "images per forward pass", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.images = Counter("captcha_images", "images read, per model", ["model"], registry=self.registry)
        self.reloads = Counter("captcha_model_reloads", "model file reloads by result", ["model", "result"],
                               registry=self.registry)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        def observe(n: int) -> None:
            self.batch.labels(model).observe(n)
            self.images.labels(model).inc(n)
        return observe

    def text(self) -> bytes:
        """The exposition: with ``--workers N`` (``MULTIPROC_ENV`` set) the sum over every worker
        process, as a scrape reaches just one of them; else this app's own counts."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess
            summed = CollectorRegistry()
            multiprocess.MultiProcessCollector(summed)
            return generate_latest(summed)
        return generate_latest(self.registry)
