"""The server's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "lab2prod_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "lab2prod_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch = Histogram(
            "lab2prod_batch_images", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.images = Counter("lab2prod_images", "Images classified", registry=r)
        self.queue = Gauge("lab2prod_queue_images", "Images waiting for the model", registry=r)
        self.model = Gauge("lab2prod_model_info", "The model served (value 1)", ["version", "sha256"], registry=r)
        self.reloads = Counter("lab2prod_model_reloads", "Model loads by result (ok, refused)", ["result"], registry=r)
        self.source_errors = Counter(
            "lab2prod_model_source_errors", "Failed reads of the champion pointer (registry unreachable)", registry=r
        )
        self.logged = Counter("lab2prod_logged_predictions", "Predictions written to the prediction log", registry=r)
        self.feedback = Counter("lab2prod_feedback", "Labelled corrections received", registry=r)
