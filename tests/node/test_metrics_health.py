"""/metrics, /healthz, /readyz, gRPC health checking and reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import swarm
from swarm._errors import InvalidInputError
from swarm.node import Node
from swarm.node._config import ModelOptions
from swarm.node._runtime import Model
from tests.conftest import NodeFactory
from tests.node.fakes import GatedModel
from tests.waiting import wait_until

MLP = "builtin/mlp"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(node: Node, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{node.metrics_port}{path}",
            timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status, await response.text()


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def cached_mlp_node(start_node: NodeFactory, mlp: Model) -> AsyncIterator[Node]:
    async with start_node([mlp], {MLP: ModelOptions(cache=True)}) as node:
        yield node


async def test_metrics_count_traffic_by_model_status_and_stage(cached_mlp_node: Node) -> None:
    node = cached_mlp_node
    status, before_text = await scrape(node)
    assert status == 200
    before = parse(before_text)
    assert value(before, "swarm_models_ready") == 1
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 512)).astype(np.float32) for n in (1, 2, 3)]
    async with swarm.AsyncClient(node.grpc_address) as client:
        for x in xs:  # sequential: three batches of 1, 2 and 3 items
            await client.infer(MLP, x)
        await client.infer(MLP, xs[1])  # a cache hit
        with pytest.raises(InvalidInputError):
            await client.infer(MLP, np.zeros((1, 3), np.float32))
    after = parse((await scrape(node))[1])

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("swarm_requests_total", model=MLP, status="OK") == 4
    assert delta("swarm_requests_total", model=MLP, status="INVALID_ARGUMENT") == 1
    assert delta("swarm_request_seconds_count", model=MLP) == 4
    # Queue and compute time are observed for the three computed requests, not the hit.
    assert delta("swarm_request_queue_seconds_count", model=MLP) == 3
    assert delta("swarm_request_compute_seconds_count", model=MLP) == 3
    assert delta("swarm_request_compute_seconds_sum", model=MLP) > 0
    assert delta("swarm_batch_size_count", model=MLP) == 3
    assert delta("swarm_batch_size_sum", model=MLP) == 6
    assert delta("swarm_batch_size_bucket", model=MLP, le="1.0") == 1
    assert delta("swarm_batch_size_bucket", model=MLP, le="2.0") == 2
    assert delta("swarm_batch_size_bucket", model=MLP, le="4.0") == 3
    assert delta("swarm_cache_hits_total", model=MLP) == 1
    assert delta("swarm_cache_misses_total", model=MLP) == 3
    assert ("swarm_queue_depth", frozenset({("model", MLP)})) in after
    assert value(after, "swarm_queue_depth", model=MLP) == 0


async def test_queue_depth_gauge_follows_the_queue(start_node: NodeFactory) -> None:
    model = GatedModel(max_batch_size=1)
    x = np.ones((1, 2), np.float32)
    async with start_node([model]) as node, swarm.AsyncClient(node.grpc_address) as client:
        model.gate.clear()
        try:
            calls = [asyncio.create_task(client.infer(model.name, {"a": x, "b": x}))
                     for _ in range(3)]
            await wait_until(lambda: node.table.resolve(model.name).batcher.queue_depth >= 2,
                             what="two requests queued behind the one executing")
            depth = value(parse((await scrape(node))[1]), "swarm_queue_depth", model=model.name)
        finally:
            model.gate.set()
        await asyncio.gather(*calls)
        assert depth == 2  # one executing, two waiting
        assert value(parse((await scrape(node))[1]), "swarm_queue_depth", model=model.name) == 0


async def test_http_health_endpoints(start_node: NodeFactory, mlp: Model) -> None:
    model = GatedModel()
    async with start_node([mlp, model]) as node:
        assert await scrape(node, "/healthz") == (200, "ok\n")
        assert await scrape(node, "/readyz") == (200, "ready\n")
        # While draining, the node is alive but no longer ready.
        model.gate.clear()
        x = np.ones((1, 2), np.float32)
        async with swarm.AsyncClient(node.grpc_address) as client:
            try:
                pending = asyncio.create_task(client.infer(model.name, {"a": x, "b": x}))
                await asyncio.to_thread(model.running.wait, 10)
                node.request_stop()
                await wait_until(lambda: not node.is_ready(), what="the node draining")
                live, ready = await scrape(node, "/healthz"), await scrape(node, "/readyz")
            finally:
                model.gate.set()
            np.testing.assert_array_equal(await pending, [[2, 2]])
    assert live[0] == 200
    assert ready[0] == 503


async def test_grpc_health_and_reflection(start_node: NodeFactory, mlp: Model) -> None:
    async with start_node([mlp]) as node, grpc.aio.insecure_channel(node.grpc_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def ask(**kwargs: str) -> reflection_pb2.ServerReflectionResponse:
            call = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(**kwargs)]), timeout=10)
            responses = [r async for r in call]
            assert len(responses) == 1
            return responses[0]

        listed = await ask(list_services="")
        services = {s.name for s in listed.list_services_response.service}
        assert {"inference.GRPCInferenceService", "swarm.v1.NodeService",
                "grpc.health.v1.Health"} <= services
        files = await ask(file_containing_symbol="inference.GRPCInferenceService")
        descriptors = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                       for raw in files.file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in descriptors for s in f.service
                   if s.name == "GRPCInferenceService" for m in s.method}
        assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
                "RepositoryIndex"} <= methods


async def test_a_node_is_not_ready_until_every_served_reference_is_loaded(
        start_node: NodeFactory, mlp: Model) -> None:
    """Triton's strict readiness (issue 11, item 13): live at once, ready only when loaded.

    The node is told to serve a registry tag nobody has published; it serves the MLP
    meanwhile, answers liveness, and says what it waits for.
    """
    async with start_node([mlp], serve=["acme/lin:stable"], p2p_port=0) as node:
        assert not node.is_ready()
        assert node.waiting_for() == ["acme/lin:stable"]
        status, text = await scrape(node, "/readyz")
        assert (status, text) == (503, "waiting for acme/lin:stable\n")
        status, _ = await scrape(node, "/healthz")
        assert status == 200
        async with grpc.aio.insecure_channel(node.grpc_address) as channel:
            from swarm._proto.inference import grpc_service_pb2 as pb
            from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc

            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live
            assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready


async def test_a_node_serving_only_local_models_is_ready(start_node: NodeFactory,
                                                          mlp: Model) -> None:
    async with start_node([mlp]) as node:
        assert node.is_ready()
        assert node.waiting_for() == []
        assert await scrape(node, "/readyz") == (200, "ready\n")
