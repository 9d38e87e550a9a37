"""Prometheus metrics of one node (a registry per node, so tests can run several).

Label values are bounded: every label set is kept forever, so a model name a client
makes up must not become one (100 names of 100 KB once made /metrics 20 MB). Models
served here are labelled by name; models served elsewhere (a gateway forwarding) by
name for the first `max_forwarded_models` of them; the rest, and names nobody serves,
count as model="other", with `swarm_other_model_requests{reason}` saying why.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OTHER", "NodeMetrics"]

# The model label of requests for unknown models, and for models past the label bound.
OTHER = "other"

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class NodeMetrics:
    def __init__(self, *, max_forwarded_models: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_forwarded = max_forwarded_models
        self._forwarded: set[str] = set()
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
        self.other_model = Counter(
            "swarm_other_model_requests", "Requests counted as model=\"other\": for a model "
            "neither served here nor in the swarm (reason=unknown), or for one served elsewhere "
            "once max_forwarded_models others had labels (reason=label_limit).",
            ["reason"], registry=r)
        self.stream_backpressure = Counter(
            "swarm_stream_backpressure", "Times a ModelStreamInfer stream stopped reading "
            "requests because max_stream_in_flight responses were waiting for the client.",
            registry=r)
        self.http_rejected = Counter(
            "swarm_http_rejected", "HTTP API requests refused before any work, by the bound "
            "they broke (body_size, json_depth, encoding).", ["reason"], registry=r)

    def forwarded_label(self, model: str) -> str:
        """The label of a model served elsewhere: its name, within the bound; else OTHER."""
        if model in self._forwarded:
            return model
        if len(self._forwarded) < self._max_forwarded:
            self._forwarded.add(model)
            return model
        self.other_model.labels("label_limit").inc()
        return OTHER

    def unknown_label(self) -> str:
        """The label of a request for a model no one serves (counted, never named)."""
        self.other_model.labels("unknown").inc()
        return OTHER

    def render(self) -> bytes:
        return generate_latest(self.registry)
