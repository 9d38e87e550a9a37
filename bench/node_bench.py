"""Node throughput, latency and memory against raw torch and a bare gRPC echo server.

    .venv/bin/python bench/node_bench.py [--duration 8] [--soak 300]

One run measures, on this machine:
  raw     builtin/minilm and builtin/mlp forward passes in this process (batch 32 / 64)
  node    a `swarm-node` process serving both, driven at concurrency 1, 16, 64
          by a separate load process (one request per item, pre-encoded requests)
  nobatch the same node with batching off (mlp, concurrency 64)
  echo    a grpc.aio server that returns the request bytes (same sizes as mlp), at
          concurrency 1 (alternating with the node) and 16/64 (the ceiling gRPC and the
          client set on this machine)
  memory  the node's RSS after warm-up, and its growth over a soak at concurrency 64
and prints a Markdown table plus the ratios the node issue sets as targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
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
ECHO_PATH = "/bench.Echo/Echo"

SENTENCES = [
    "A decentralized network routes each inference request to the best provider.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Dynamic batching groups concurrent requests into one forward pass.",
    "Providers advertise their models, queue depth and price over gossip.",
    "Latency, load and price together decide where a request should go.",
    "Sentence embeddings map text to vectors that capture its meaning.",
    "Every model version is addressed by the digest of its content.",
    "A graceful shutdown finishes in-flight work before the process exits.",
]


# --------------------------------------------------------------------------- requests

def mlp_request(i: int) -> bytes:
    from swarm._proto.inference import grpc_service_pb2 as pb

    x = np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="builtin/mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 512])
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def minilm_request(i: int) -> bytes:
    from swarm._proto.inference import grpc_service_pb2 as pb
    from swarm._tensors import encode_bytes_elements

    req = pb.ModelInferRequest(model_name="builtin/minilm")
    req.inputs.add(name="text", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(encode_bytes_elements([SENTENCES[i % len(SENTENCES)].encode()]))
    return req.SerializeToString()


# --------------------------------------------------------------------------- load process

def _load_worker(address: str, path: str, payloads: list[bytes], concurrency: int,
                 duration: float, warmup: float, out: Any) -> None:
    import grpc

    async def main() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(path)
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
            return {"n": len(latencies), "errors": errors, "seconds": duration,
                    "p50": float(np.percentile(latencies, 50)) if latencies else 0.0,
                    "p99": float(np.percentile(latencies, 99)) if latencies else 0.0}

    out.put(asyncio.run(main()))


def drive(address: str, path: str, payloads: list[bytes], concurrency: int,
          duration: float, warmup: float = 1.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load_worker,
                       args=(address, path, payloads, concurrency, duration, warmup, out))
    proc.start()
    result = out.get(timeout=duration + warmup + 120)
    proc.join(30)
    result["rps"] = result["n"] / duration
    return result


# --------------------------------------------------------------------------- servers

class NodeProcess:
    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        cmd = [sys.executable, "-m", "swarm.node._cli", "run", "--data-dir", self.dir.name,
               "--grpc-port", "0", "--metrics-port", "0", "--p2p-port", "-1",
               "--serve", "builtin/minilm", "--serve", "builtin/mlp", "--log-level", "warning",
               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        deadline = time.time() + 120
        self.address = ""
        self.metrics_url = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("swarm-node exited during start-up")
            m = re.match(r"\s+grpc\s+(\S+)", line)
            if m:
                self.address = m.group(1)
            m = re.match(r"\s+metrics\s+(\S+)", line)
            if m:
                self.metrics_url = m.group(1)
            if line.strip().startswith("model") and "builtin/mlp" in line:
                break

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def batch_sizes(self, model: str) -> dict[str, float]:
        """The node's swarm_batch_size histogram for `model`: cumulative count per bucket."""
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=10) as f:
            text = f.read().decode()
        out: dict[str, float] = {}
        for m in re.finditer(r'swarm_batch_size_bucket\{le="([^"]+)",model="([^"]+)"\} (\S+)', text):
            if m.group(2) == model:
                out[m.group(1)] = float(m.group(3))
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.dir.cleanup()


def histogram_line(before: dict[str, float], after: dict[str, float]) -> str:
    """Batches per size bucket between two scrapes, e.g. "<=16: 3, <=32: 120"."""
    parts, below = [], 0.0
    for le in after:
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - below > 0:
            parts.append(f"<={le.removesuffix('.0')}: {cumulative - below:.0f}")
        below = cumulative
    return ", ".join(parts)


def _echo_server(port_out: Any) -> None:
    import grpc

    async def main() -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request[: 2048 + 20]

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_out.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


# --------------------------------------------------------------------------- raw torch

def raw_throughput(seconds: float, threads: int) -> dict[str, float]:
    import torch

    from swarm.node._builtins import MLP, MiniLM
    from swarm.node._runtime import ThreadPolicy, set_thread_policy

    # `execute` sets the threads of each pass from the thread policy (one thread unless
    # set): fix it to `threads`, as the module calls below use.
    set_thread_policy(ThreadPolicy.for_machine(threads, fixed=threads))
    out: dict[str, float] = {}
    minilm = MiniLM(torch.device("cpu"))
    texts = np.array([SENTENCES[i % len(SENTENCES)].encode() for i in range(32)], dtype=object)
    ids, mask = minilm.tokenize([t.decode() for t in texts])
    with torch.inference_mode():
        for _ in range(3):
            minilm._module(ids, mask)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            minilm._module(ids, mask)
            n += 1
        out["minilm_forward_b32"] = n * 32 / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        minilm.execute({"text": texts})
        n += 1
    out["minilm_tokenize_forward_b32"] = n * 32 / (time.perf_counter() - t0)
    mlp = MLP(torch.device("cpu"))
    for batch in (1, 64):
        x = {"input": np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)}
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            mlp.execute(x)
            n += 1
        out[f"mlp_forward_b{batch}"] = n * batch / (time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load point")
    parser.add_argument("--soak", type=float, default=300.0, help="seconds of the memory soak")
    args = parser.parse_args()
    rows: list[tuple[str, str, float, float, float, float]] = []
    ratios: dict[str, float] = {}

    # The node leaves a core to gRPC (torch threads = cores - 1); raw torch is measured
    # with that setting and with every core, and the better of the two is the reference.
    node_threads = max(1, (os.cpu_count() or 2) - 1)
    raw_node = raw_throughput(args.duration / 2, node_threads)
    raw_all = raw_throughput(args.duration / 2, os.cpu_count() or 1)
    raw = {k: max(raw_node[k], raw_all[k]) for k in raw_node}
    print(f"raw torch, {node_threads} thread(s) (items/s): "
          f"{json.dumps({k: round(v) for k, v in raw_node.items()})}", flush=True)
    print(f"raw torch, {os.cpu_count()} threads (items/s): "
          f"{json.dumps({k: round(v) for k, v in raw_all.items()})}", flush=True)

    mlp_payloads = [mlp_request(i) for i in range(256)]
    minilm_payloads = [minilm_request(i) for i in range(64)]

    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    echo = ctx.Process(target=_echo_server, args=(port_q,), daemon=True)
    echo.start()
    echo_address = f"127.0.0.1:{port_q.get(timeout=60)}"
    node = NodeProcess()
    try:
        rss_start = node.rss_mib()
        results: dict[tuple[str, int], dict[str, Any]] = {}
        # Concurrency 1 against the echo server: alternate short rounds, so both see the
        # same machine (it is shared and noisy), and compare the medians of the rounds.
        echo_p50s, node_p50s = [], []
        for _ in range(3):
            echo_p50s.append(drive(echo_address, ECHO_PATH, mlp_payloads, 1, 3)["p50"])
            node_p50s.append(drive(node.address, INFER_PATH, mlp_payloads, 1, 3)["p50"])
        echo_p50 = statistics.median(echo_p50s)
        c1_p50 = statistics.median(node_p50s)
        print(f"c=1 p50, alternating rounds: echo {[round(x * 1e3, 2) for x in echo_p50s]} ms, "
              f"node mlp {[round(x * 1e3, 2) for x in node_p50s]} ms", flush=True)
        for model, payloads in (("builtin/mlp", mlp_payloads), ("builtin/minilm", minilm_payloads)):
            for conc in (1, 16, 64):
                before = node.batch_sizes(model)
                r = drive(node.address, INFER_PATH, payloads, conc, args.duration)
                results[(model, conc)] = r
                rows.append(("node", model, conc, r["rps"], r["p50"] * 1e3, r["p99"] * 1e3))
                print(f"node {model} c={conc}: {r['rps']:.0f} req/s p50 {r['p50']*1e3:.2f} ms "
                      f"p99 {r['p99']*1e3:.2f} ms errors {r['errors']}; load average "
                      f"{os.getloadavg()[0]:.1f}; batches by size: "
                      f"{histogram_line(before, node.batch_sizes(model))}", flush=True)
        rss_warm = node.rss_mib()
        soak_rss = [rss_warm]
        soak_rps = []
        t_end = time.time() + args.soak
        while time.time() < t_end:
            chunk = min(30.0, t_end - time.time())
            if chunk < 1:
                break
            r = drive(node.address, INFER_PATH, mlp_payloads + minilm_payloads[:8], 64, chunk,
                      warmup=0.0)
            soak_rps.append(r["rps"])
            soak_rss.append(node.rss_mib())
            print(f"soak: {r['rps']:.0f} req/s rss {soak_rss[-1]:.0f} MiB", flush=True)
    finally:
        node.stop()

    nobatch = NodeProcess("--no-batching")
    try:
        r = drive(nobatch.address, INFER_PATH, mlp_payloads, 64, args.duration)
        rows.append(("node, batching off", "builtin/mlp", 64, r["rps"], r["p50"] * 1e3,
                     r["p99"] * 1e3))
        print(f"no-batching mlp c=64: {r['rps']:.0f} req/s", flush=True)
        nobatch_rps = r["rps"]
    finally:
        nobatch.stop()

    echo_rps: dict[int, float] = {}
    try:
        for conc in (1, 16, 64):
            r = drive(echo_address, ECHO_PATH, mlp_payloads, conc, args.duration)
            echo_rps[conc] = r["rps"]
            rows.append(("grpc.aio echo", "same bytes as mlp", conc, r["rps"], r["p50"] * 1e3,
                         r["p99"] * 1e3))
    finally:
        echo.terminate()
        echo.join(10)

    minilm64 = results[("builtin/minilm", 64)]["rps"]
    minilm16 = results[("builtin/minilm", 16)]["rps"]
    ratios["minilm c64 / raw batch-32 forward (target >= 0.9)"] = minilm64 / raw["minilm_forward_b32"]
    ratios["minilm c16 / raw batch-32 forward (target >= 0.8)"] = minilm16 / raw["minilm_forward_b32"]
    ratios["minilm c64 / raw batch-32 tokenize+forward"] = minilm64 / raw["minilm_tokenize_forward_b32"]
    mlp64 = results[("builtin/mlp", 64)]["rps"]
    ceiling = max(echo_rps[16], echo_rps[64])
    ratios["mlp c64 / grpc.aio echo ceiling (best of c16, c64) (target >= 0.6)"] = mlp64 / ceiling
    ratios["mlp c64 batching on / off (target >= 4)"] = mlp64 / nobatch_rps
    ratios["mlp c64 req/s (target >= 2000)"] = mlp64
    ratios["mlp c1 p50 / echo c1 p50, alternating rounds (target <= 2; was 1.5)"] = c1_p50 / echo_p50
    ratios["node RSS after warm-up, MiB (target < 700)"] = rss_warm
    ratios["node RSS growth over soak, % (target <= 5)"] = (
        (max(soak_rss) - soak_rss[0]) / soak_rss[0] * 100 if len(soak_rss) > 1 else 0.0)

    print("\n| system | model | concurrency | req/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for system, model, conc, rps, p50, p99 in rows:
        print(f"| {system} | {model} | {conc} | {rps:.0f} | {p50:.2f} | {p99:.2f} |")
    print(f"\n| raw torch (this process) | {node_threads} thread(s) | {os.cpu_count()} threads |"
          "\n|---|---:|---:|")
    for k in raw:
        print(f"| {k} | {raw_node[k]:.0f} | {raw_all[k]:.0f} |")
    print(f"\nRSS at start {rss_start:.0f} MiB, after warm-up {rss_warm:.0f} MiB, "
          f"soak {args.soak:.0f} s: {' '.join(f'{x:.0f}' for x in soak_rss)} MiB; "
          f"soak req/s {' '.join(f'{x:.0f}' for x in soak_rps)}")
    print("\n| ratio | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
