"""Prometheus metrics of one node (a registry per node, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["NodeMetrics"]

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "swarm_requests", "Inference requests by model and final gRPC status.",
            ["model", "status"], registry=r)
        self.latency = Histogram(
            "swarm_request_seconds", "Request time in the node, arrival to response.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "swarm_request_queue_seconds", "Time a request waited for its batch to start.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_time = Histogram(
            "swarm_request_compute_seconds", "Execution time of the batch a request rode in.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "swarm_batch_size", "Items per executed batch.", ["model"],
            buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "swarm_queue_depth", "Requests waiting per model.", ["model"], registry=r)
        self.cache_hits = Counter(
            "swarm_cache_hits", "Response cache hits.", ["model"], registry=r)
        self.cache_misses = Counter(
            "swarm_cache_misses", "Response cache misses.", ["model"], registry=r)
        self.expired = Counter(
            "swarm_requests_expired", "Requests dropped unexecuted because their deadline passed.",
            ["model"], registry=r)
        self.models_ready = Gauge(
            "swarm_models_ready", "Models loaded and serving.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
