"""The server's Prometheus metrics, in a registry of its own so that several servers in one process stay apart."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
EDIT_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """Requests by route and status, the queue and the running edits (read when scraped), edit seconds, failures,
    rejections and retries."""

    def __init__(self, waiting: Callable[[], int], running: Callable[[], int]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "ifedit_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=registry
        )
        queue = Gauge("ifedit_queue_length", "requests accepted and waiting for a replica", registry=registry)
        queue.set_function(waiting)
        busy = Gauge("ifedit_edits_running", "requests a replica is editing now", registry=registry)
        busy.set_function(running)
        self.edit_seconds = Histogram(
            "ifedit_edit_seconds",
            "seconds a replica spent on a request (all its images, the prompt stage included)",
            buckets=EDIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "ifedit_failures", "edits that ended in an error, by code", ["code"], registry=registry
        )
        self.rejected = Counter("ifedit_rejected", "requests refused because every queue was full", registry=registry)
        self.retries = Counter("ifedit_retries", "edits retried after their replica died", registry=registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)
