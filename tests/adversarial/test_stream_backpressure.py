"""Issue 11 item 6: a stream client that never reads must not make the node buffer all it sends."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node import NodeConfig
from swarm.simnet._testing import start_swarm
from tests.adversarial.support import rss_mb
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROWS = 128  # 256 KiB per request, as much per response
SENT_BYTES = 100 << 20
REQUESTS = SENT_BYTES // (ROWS * 512 * 4)


def _request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="builtin/mlp", id=str(i))
    request.inputs.add(name="input", datatype="FP32", shape=[ROWS, 512])
    request.raw_input_contents.append(np.full((ROWS, 512), i, np.float32).tobytes())
    return request


async def _counter(metrics_url: str, pattern: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(metrics_url) as response:
        text = await response.text()
    return sum(float(v) for v in re.findall(pattern + r" ([0-9.e+]+)", text))


async def test_stream_infer_has_backpressure(tmp_path: Path) -> None:
    window = NodeConfig().max_stream_in_flight
    async with start_swarm(1, models=("builtin/mlp",), p2p=False, log_dir=tmp_path) as swarm:
        node = swarm.nodes[0]
        assert node is not None
        ok = r'swarm_requests_total\{model="builtin/mlp",status="OK"\}'
        bitten = r"swarm_stream_backpressure_total"
        async with grpc.aio.insecure_channel(node.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(_request(0), timeout=30)
            served_before = await _counter(node.metrics, ok)
            rss_before = rss_mb(node.pid)
            call = stub.ModelStreamInfer()

            async def send() -> None:
                for i in range(REQUESTS):
                    await call.write(_request(i))

            writer = asyncio.create_task(send())

            async def settled() -> bool:
                served = await _counter(node.metrics, ok) - served_before
                # Without backpressure the node reads and serves everything; with it, it
                # stops reading once `window` responses wait for the client.
                return served >= REQUESTS or (
                    await _counter(node.metrics, bitten) > 0 and served >= window)

            await wait_until(settled, timeout=120, what="the node to serve or to stop reading")
            grown = rss_mb(node.pid) - rss_before
            served = await _counter(node.metrics, ok) - served_before
            print(f"stream client that never reads, {REQUESTS} requests ({SENT_BYTES >> 20} MiB)"
                  f" sent: node RSS {grown:+.1f} MB, {served:.0f} served, writer "
                  f"{'finished' if writer.done() else 'blocked'}")
            assert not writer.done()  # the client is held back too: the node stopped reading
            writer.cancel()
            call.cancel()
            # The node cleans up after the cancelled stream and serves on.
            await stub.ModelInfer(_request(1), timeout=30)
            assert grown < 40
    log = node.log.read_text()
    assert "never retrieved" not in log
    assert "Traceback" not in log
