"""The Open Inference Protocol over HTTP (/v2) against gRPC, on one node, for builtin/mlp.

    .venv/bin/python bench/rest_bench.py [--duration 6] [--concurrency 1 16]

One `swarm-node` process serving builtin/mlp with --http-port, driven by a separate
load process (closed loop, one item of 512 floats per request, pre-encoded bodies) over:
  grpc         ModelInfer (grpc.aio, the raw serialized request)
  http-binary  POST /v2/models/builtin/mlp/infer, Triton's binary tensor extension
               both ways (what tritonclient.http sends by default)
  http-json    the same request and answer as JSON numbers
and prints a Markdown table (req/s, p50 and p99 latency per transport and concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = "Inference-Header-Content-Length"
DIM = 512


def payloads(transport: str, n: int = 64) -> list[tuple[bytes, dict[str, str]]]:
    """`n` request bodies (and HTTP headers) of one item each."""
    from swarm._proto.inference import grpc_service_pb2 as pb

    out = []
    for i in range(n):
        x = np.random.default_rng(i).standard_normal((1, DIM)).astype(np.float32)
        if transport == "grpc":
            req = pb.ModelInferRequest(model_name="builtin/mlp")
            req.inputs.add(name="input", datatype="FP32", shape=[1, DIM])
            req.raw_input_contents.append(x.tobytes())
            out.append((req.SerializeToString(), {}))
        elif transport == "http-binary":
            head = json.dumps({"inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()
            out.append((head + x.tobytes(), {HEADER: str(len(head)),
                                             "Content-Type": "application/octet-stream"}))
        else:
            body = json.dumps({"inputs": [{"name": "input", "shape": [1, DIM], "datatype": "FP32",
                                           "data": x.reshape(-1).tolist()}]}).encode()
            out.append((body, {"Content-Type": "application/json"}))
    return out


def _load(transport: str, grpc_address: str, http_port: int, concurrency: int,
          duration: float, warmup: float, out: Any) -> None:
    import aiohttp
    import grpc

    bodies = payloads(transport)

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(grpc_address) as channel, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)) as http:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            url = f"http://127.0.0.1:{http_port}/v2/models/builtin/mlp/infer"

            async def once(i: int) -> bool:
                body, headers = bodies[i % len(bodies)]
                if transport == "grpc":
                    try:
                        await call(body, timeout=30)
                    except grpc.aio.AioRpcError:
                        return False
                    return True
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200

            for i in range(8):
                await once(i)
            start = time.perf_counter()
            measure_from, stop = start + warmup, start + warmup + duration

            async def worker(k: int) -> None:
                nonlocal errors
                i = k
                while (now := time.perf_counter()) < stop:
                    ok = await once(i)
                    errors += not ok
                    if now >= measure_from:
                        latencies.append(time.perf_counter() - now)
                    i += concurrency

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return {"n": len(latencies), "errors": errors,
                "p50": float(np.percentile(latencies, 50)) * 1e3,
                "p99": float(np.percentile(latencies, 99)) * 1e3}

    out.put(asyncio.run(main()))


def drive(transport: str, grpc_address: str, http_port: int, concurrency: int,
          duration: float, warmup: float = 1.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load, args=(transport, grpc_address, http_port, concurrency,
                                           duration, warmup, out))
    proc.start()
    result = out.get(timeout=duration + warmup + 120)
    proc.join(30)
    result["rps"] = result["n"] / duration
    return result


def start_node(data_dir: str) -> tuple[subprocess.Popen[str], str, int]:
    cmd = [sys.executable, "-m", "swarm.node._cli", "run", "--data-dir", data_dir,
           "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1", "--p2p-port", "-1",
           "--serve", "builtin/mlp", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    address, port = "", 0
    deadline = time.time() + 120
    while time.time() < deadline and not (address and port):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("swarm-node exited during start-up")
        if m := re.match(r"\s+grpc\s+(\S+)", line):
            address = m.group(1)
        if m := re.match(r"\s+kserve\s+http://[^:]+:(\d+)/v2", line):
            port = int(m.group(1))
    return proc, address, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, port = start_node(data_dir)
        try:
            print("| transport | concurrency | req/s | p50 ms | p99 ms | errors |")
            print("|---|---:|---:|---:|---:|---:|")
            for concurrency in args.concurrency:
                for transport in ("grpc", "http-binary", "http-json"):
                    r = drive(transport, address, port, concurrency, args.duration)
                    print(f"| {transport} | {concurrency} | {r['rps']:.0f} | {r['p50']:.2f} "
                          f"| {r['p99']:.2f} | {r['errors']} |", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
