"""TLS cost on the data plane: plaintext vs identity-bound TLS on loopback, same run.

    .venv/bin/python bench/tls_bench.py [--duration 6] [--rounds 2]

One `swarm-node` process serves builtin/mlp; a separate load process (grpc.aio, one
request per item, pre-encoded requests) drives its plaintext port and its TLS port in
alternating rounds at concurrency 1 and 64. The TLS client is the production one
(swarm.protocol.PeerChannels: certificate fetched, checked against the node's peer id,
pinned). Also measured in this process: the cost of signing and of verifying one
builtin/mlp response (canonical digests + Ed25519), which every response pays.
Prints a Markdown table and the ratio the issue targets (TLS c64 req/s / plaintext >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def mlp_request(i: int) -> Any:
    from swarm._proto.inference import grpc_service_pb2 as pb

    x = np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="builtin/mlp", id=f"bench-{i}")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 512])
    req.raw_input_contents.append(x.tobytes())
    return req


def _load_worker(address: str, peer: str, concurrency: int, duration: float,
                 warmup: float, out: Any) -> None:
    import grpc

    from swarm._types import PeerId
    from swarm.protocol import PeerChannels

    payloads = [mlp_request(i).SerializeToString() for i in range(64)]

    async def main() -> dict[str, Any]:
        channels = PeerChannels()
        channel = (await channels.channel(PeerId(peer), address) if peer
                   else grpc.aio.insecure_channel(address))
        call = channel.unary_unary(INFER_PATH)
        for p in payloads[:8]:
            await call(p, timeout=30)
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + duration

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while (now := time.perf_counter()) < stop:
                try:
                    await call(payloads[i % len(payloads)], timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                end = time.perf_counter()
                if now >= measure_from:
                    latencies.append(end - now)
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        await channels.close()
        if not peer:
            await channel.close()
        return {"n": len(latencies), "errors": errors,
                "p50": float(np.percentile(latencies, 50)) if latencies else 0.0,
                "p99": float(np.percentile(latencies, 99)) if latencies else 0.0}

    out.put(asyncio.run(main()))


def drive(address: str, peer: str, concurrency: int, duration: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load_worker,
                       args=(address, peer, concurrency, duration, 1.0, out))
    proc.start()
    result: dict[str, Any] = out.get(timeout=duration + 120)
    proc.join(30)
    result["rps"] = result["n"] / duration
    return result


class NodeProcess:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        cmd = [sys.executable, "-m", "swarm.node._cli", "run", "--data-dir", self.dir.name,
               "--grpc-port", "0", "--metrics-port", "-1", "--p2p-port", "-1",
               "--serve", "builtin/mlp", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        fields: dict[str, str] = {}
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("swarm-node exited during start-up")
            m = re.match(r"\s+(grpc|tls|peer id)\s+(\S+)", line)
            if m:
                fields[m.group(1)] = m.group(2)
            if line.strip().startswith("model"):
                break
        self.plain, self.tls, self.peer = fields["grpc"], fields["tls"], fields["peer id"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.dir.cleanup()


def signing_cost(n: int = 2000) -> dict[str, float]:
    """Microseconds to sign, and to verify, one builtin/mlp response (1x512 in, 1x10 out)."""
    from swarm._proto.inference import grpc_service_pb2 as pb
    from swarm.protocol import Identity, sign_response, verify_response

    identity = Identity.generate()
    request = mlp_request(0)
    response = pb.ModelInferResponse(model_name="builtin/mlp", id=request.id,
                                     model_version="sha256:" + "ab" * 32)
    response.outputs.add(name="output", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros(10, np.float32).tobytes())
    t0 = time.perf_counter()
    for _ in range(n):
        sign_response(identity, request, response)
    signed = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        verify_response(request, response, signer=identity.peer_id)
    return {"sign_us": signed / n * 1e6, "verify_us": (time.perf_counter() - t0) / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    node = NodeProcess()
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for _ in range(args.rounds):
            for concurrency in (1, 64):
                for mode in ("plaintext", "tls"):  # alternating: load drifts on a shared VM
                    address, peer = (node.plain, "") if mode == "plaintext" else (node.tls,
                                                                                   node.peer)
                    r = drive(address, peer, concurrency, args.duration)
                    results.setdefault((mode, concurrency), []).append(r)
                    print(f"  {mode} c{concurrency}: {r['rps']:.0f} req/s, "
                          f"p50 {r['p50'] * 1e3:.2f} ms, errors {r['errors']}", file=sys.stderr)
    finally:
        node.stop()
    print("| transport | concurrency | req/s (median of rounds) | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for (mode, concurrency), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {mode} | {concurrency} | {statistics.median(r['rps'] for r in runs):.0f} "
              f"| {statistics.median(r['p50'] for r in runs) * 1e3:.2f} "
              f"| {statistics.median(r['p99'] for r in runs) * 1e3:.2f} "
              f"| {sum(r['errors'] for r in runs)} |")
    c64 = [t["rps"] / p["rps"] for t, p in zip(results[("tls", 64)], results[("plaintext", 64)],
                                               strict=True)]
    c1 = [t["p50"] / p["p50"] for t, p in zip(results[("tls", 1)], results[("plaintext", 1)],
                                              strict=True)]
    print(f"\nTLS / plaintext c64 req/s per round (target >= 0.90): "
          f"{', '.join(f'{x:.3f}' for x in c64)}")
    print(f"TLS / plaintext c1 p50 per round: {', '.join(f'{x:.3f}' for x in c1)}")
    cost = signing_cost()
    print(f"response signature: sign {cost['sign_us']:.0f} us, verify {cost['verify_us']:.0f} us "
          "(builtin/mlp response, this process)")


if __name__ == "__main__":
    main()
