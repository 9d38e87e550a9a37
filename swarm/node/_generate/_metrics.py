"""Generation metrics under vLLM's names (`vllm:*`), labelled by model_name.

Histograms are observed as sequences produce tokens and leave; gauges and token
counters are read from each engine's `stats()` when /metrics is scraped. The label
is a served model's name only (bounded: names come from the node's own --serve).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from swarm.node._generate._engine import GenerationEngine, RequestTiming

__all__ = ["GenerationMetrics"]

_SECONDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            7.5, 10.0, 20.0, 40.0, 80.0)


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry,
                 engines: Callable[[], Mapping[str, GenerationEngine]]) -> None:
        self._engines = engines
        label = ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Time from arrival to the first generated token.", label,
                              buckets=_SECONDS, registry=registry)
        self.inter_token = Histogram("vllm:inter_token_latency_seconds",
                                     "Time between consecutive tokens of a sequence.", label,
                                     buckets=_SECONDS, registry=registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Time from arrival to the last token.", label,
                             buckets=_SECONDS, registry=registry)
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Time from arrival until first scheduled.", label,
                               buckets=_SECONDS, registry=registry)
        registry.register(_EngineCollector(engines))

    def attach(self, name: str, engine: GenerationEngine) -> None:
        """Observe `engine`'s sequences as they produce tokens and leave."""

        def finished(t: RequestTiming) -> None:
            if t.first_token is not None:
                self.ttft.labels(name).observe(t.first_token - t.arrived)
            self.e2e.labels(name).observe(t.finished - t.arrived)
            if t.scheduled is not None:
                self.queue.labels(name).observe(t.scheduled - t.arrived)

        engine.on_finish = finished
        engine.on_token_interval = self.inter_token.labels(name).observe


class _EngineCollector:
    def __init__(self, engines: Callable[[], Mapping[str, GenerationEngine]]) -> None:
        self._engines = engines

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("vllm:num_requests_running",
                                    "Sequences in the running batch.", labels=["model_name"])
        waiting = GaugeMetricFamily("vllm:num_requests_waiting",
                                    "Sequences waiting to be scheduled.", labels=["model_name"])
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc",
                               "Fraction of the KV cache budget in use (0-1).",
                               labels=["model_name"])
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Prompt tokens computed "
                                     "(recomputation after preemption included).",
                                     labels=["model_name"])
        generation = CounterMetricFamily("vllm:generation_tokens", "Tokens generated.",
                                         labels=["model_name"])
        preempt = CounterMetricFamily("vllm:num_preemptions", "Sequences preempted.",
                                      labels=["model_name"])
        for name, engine in self._engines().items():
            s = engine.stats()
            running.add_metric([name], s.running)
            waiting.add_metric([name], s.waiting)
            kv.add_metric([name], s.kv_usage)
            prompt.add_metric([name], s.prompt_tokens)
            generation.add_metric([name], s.generation_tokens)
            preempt.add_metric([name], s.preemptions)
        yield from (running, waiting, kv, prompt, generation, preempt)
