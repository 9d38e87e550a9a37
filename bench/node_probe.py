"""Where the node's time goes: the probes behind the explanations in bench/RESULTS.md.

    .venv/bin/python bench/node_probe.py cpu      # node CPU per request at c64, batching on/off;
                                                  # the grpc.aio echo ceiling at c1/16/64
    .venv/bin/python bench/node_probe.py inproc   # c1 without gRPC: infer vs forward vs thread hop
    .venv/bin/python bench/node_probe.py gil      # MLP forwards/s beside a spinning Python thread
    .venv/bin/python bench/node_probe.py uptime   # throughput and RSS of one node over 8 rounds
                                                  # of 25 s at c64, then of a fresh node
    .venv/bin/python bench/node_probe.py uvloop   # grpc.aio echo on asyncio vs on uvloop,
                                                  # alternating rounds at c16/c64 (uvloop must
                                                  # be installed; it is no dependency)
    .venv/bin/python bench/node_probe.py profile  # where a request's time goes: py-spy stacks
                                                  # and per-thread CPU, minilm/mlp at c1 and c64

Each prints plain lines; they report, they do not judge (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import node_bench as nb


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_cpu() -> None:
    payloads = [nb.mlp_request(i) for i in range(64)]
    for extra in ((), ("--no-batching",)):
        node = nb.NodeProcess(*extra)
        try:
            nb.drive(node.address, nb.INFER_PATH, payloads, 64, 3)
            cpu0, t0 = _cpu_seconds(node.proc.pid), time.time()
            r = nb.drive(node.address, nb.INFER_PATH, payloads, 64, 10, warmup=0.0)
            cpu1, t1 = _cpu_seconds(node.proc.pid), time.time()
            label = "batching off" if extra else "batching on"
            print(f"node mlp c64 {label}: {r['rps']:.0f} req/s, node uses "
                  f"{(cpu1 - cpu0) / (t1 - t0):.2f} cores, {(cpu1 - cpu0) / r['n'] * 1e3:.3f} "
                  "ms CPU per request", flush=True)
        finally:
            node.stop()
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    echo = ctx.Process(target=nb._echo_server, args=(ports,), daemon=True)
    echo.start()
    address = f"127.0.0.1:{ports.get(timeout=60)}"
    try:
        for concurrency in (1, 16, 64):
            r = nb.drive(address, nb.ECHO_PATH, payloads, concurrency, 6)
            print(f"grpc.aio echo c{concurrency}: {r['rps']:.0f} req/s, p50 {r['p50'] * 1e3:.2f} ms",
                  flush=True)
    finally:
        echo.terminate()


def probe_inproc() -> None:
    import torch

    from swarm._proto.inference import grpc_service_pb2 as pb
    from swarm.node import Node, NodeConfig

    async def node_side() -> None:
        with tempfile.TemporaryDirectory() as d:
            config = NodeConfig.local(Path(d), serve=("builtin/mlp",), device="cpu",
                                      metrics_port=-1)
            async with Node(config) as node:
                service = node._service
                assert service is not None
                requests = [pb.ModelInferRequest.FromString(nb.mlp_request(i)) for i in range(64)]
                for request in requests:
                    await service.infer(request, None)
                latency, compute = [], []
                for k in range(2000):
                    t = time.perf_counter()
                    response = await service.infer(requests[k % 64], None)
                    latency.append(time.perf_counter() - t)
                    compute.append(response.parameters["swarm_compute_us"].int64_param)
                print(f"InferenceService.infer in process, c1: p50 "
                      f"{statistics.median(latency) * 1e6:.0f} us, of which the forward (timed "
                      f"in the executor thread) {statistics.median(compute):.0f} us", flush=True)

    asyncio.run(node_side())

    from concurrent.futures import ThreadPoolExecutor

    from swarm.node._builtins import load_builtin
    from swarm.node._runtime import ThreadPolicy, set_thread_policy

    set_thread_policy(ThreadPolicy.for_machine(os.cpu_count() or 2))
    model = load_builtin("builtin/mlp", torch.device("cpu"))
    x = model.example_inputs(1)

    def back_to_back(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            model.execute(x)
        return (time.perf_counter() - t) / n

    with ThreadPoolExecutor(1, initializer=model.prepare_thread) as pool:
        pool.submit(back_to_back, 200).result()
        in_thread = pool.submit(back_to_back, 2000).result()
        hops = []
        for _ in range(2000):
            t = time.perf_counter()
            pool.submit(model.execute, x).result()
            hops.append(time.perf_counter() - t)
    print(f"MLP batch-1 forward back to back in one thread: {in_thread * 1e6:.0f} us; "
          f"one executor round trip per forward: {statistics.median(hops) * 1e6:.0f} us (p50)")


def probe_gil() -> None:
    import torch

    from swarm.node._builtins import load_builtin

    torch.set_num_threads(1)
    model = load_builtin("builtin/mlp", torch.device("cpu"))
    x = model.example_inputs(1)

    def rate(seconds: float, spin: bool) -> float:
        stop = threading.Event()

        def spinner() -> None:
            while not stop.is_set():
                sum(range(200))

        thread = threading.Thread(target=spinner)
        if spin:
            thread.start()
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            model.execute(x)
            n += 1
        stop.set()
        if spin:
            thread.join()
        return n / seconds

    rate(0.5, False)
    for interval in (0.005, 0.001, 0.0002):
        sys.setswitchinterval(interval)
        print(f"switch interval {interval * 1e3:g} ms: MLP batch-1 forwards/s alone "
              f"{rate(2, False):.0f}, beside a spinning Python thread {rate(2, True):.0f}",
              flush=True)


def probe_uptime() -> None:
    payloads = [nb.mlp_request(i) for i in range(64)]
    for label, rounds in (("old node", 8), ("fresh node", 2)):
        node = nb.NodeProcess()
        try:
            for k in range(rounds):
                r = nb.drive(node.address, nb.INFER_PATH, payloads, 64, 25, warmup=0.0)
                print(f"{label} round {k}: {r['rps']:.0f} req/s, RSS {node.rss_mib():.0f} MiB",
                      flush=True)
        finally:
            node.stop()


# Where a sampled Python stack spends its time: the first rule that matches a frame,
# scanning from the innermost frame out, names the phase (frames are "func (file:line)").
_PHASES: tuple[tuple[str, str], ...] = (
    ("forward", r"\(torch/|^forward \(swarm|^_compute \("),
    ("tokenize", r"^(tokenize|execute) \(swarm/node/_builtins"),
    ("decode+check", r"^(decode_request|decode_raw|decode_bytes_elements|_check_shape|check) \("),
    ("sign", r"^(sign_response|inputs_digest|outputs_digest|tensors_digest|sign) \("),
    ("encode response", r"^(_response|encode_raw) \("),
    ("metrics", r"prometheus_client"),
    ("batch assembly+split", r"^_run_batch \("),
    ("batcher (loop side)", r"swarm/node/_batching"),
    ("executor hop (incl. waking the loop)",
     r"_write_to_self|call_soon_threadsafe|concurrent/futures|threading\.py"),
    ("service (other)", r"swarm/node/_service|swarm/node/_cache"),
    ("event loop: epoll", r"^EpollSelector\.select"),
    ("gRPC (Cython callbacks run by the loop)", r"^Handle\._run \(asyncio/events"),
    ("asyncio (other)", r"asyncio/|grpc/"),
)


def classify(stack: list[str]) -> str:
    for frame in reversed(stack):
        if frame.startswith("process ") or frame.startswith("thread "):
            continue
        for phase, pattern in _PHASES:
            if re.search(pattern, frame):
                return phase
    return "other"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (from /proc; threads of one name summed)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = re.sub(r"[-_]?\d+$", "", stat[stat.index("(") + 1 : stat.rindex(")")])
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    return out


def probe_profile(seconds: float = 8.0) -> None:
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workloads = (("builtin/minilm", [nb.minilm_request(i) for i in range(64)]),
                 ("builtin/mlp", [nb.mlp_request(i) for i in range(64)]))
    node = nb.NodeProcess()
    try:
        for model, payloads in workloads:
            for concurrency in (1, 64):
                nb.drive(node.address, nb.INFER_PATH, payloads, concurrency, 2, warmup=0.0)
                out = Path(tempfile.mkdtemp()) / "stacks.txt"
                cpu0 = thread_cpu(node.proc.pid)
                recorder = subprocess.Popen(
                    [spy, "record", "--pid", str(node.proc.pid), "--duration", str(round(seconds)),
                     "--format", "raw", "--rate", "250", "--nonblocking", "--output", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = nb.drive(node.address, nb.INFER_PATH, payloads, concurrency, seconds,
                             warmup=0.0)
                cpu1 = thread_cpu(node.proc.pid)
                recorder.wait(60)
                phases: dict[str, int] = {}
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    phase = classify(stack.split(";"))
                    phases[phase] = phases.get(phase, 0) + int(count)
                total = sum(phases.values()) or 1
                n = max(1, r["n"])
                print(f"\n{model} c{concurrency}: {r['rps']:.0f} req/s, p50 {r['p50'] * 1e3:.2f} ms, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
                print("  CPU per request by thread (us): " + ", ".join(
                    f"{k} {v / n * 1e6:.0f}" for k, v in sorted(cpu.items(), key=lambda x: -x[1])
                    if v > 0))
                print(f"  Python samples by phase (of {total}; us per request at 4 ms/sample):")
                for phase, count in sorted(phases.items(), key=lambda x: -x[1]):
                    print(f"    {phase:40s} {count / total * 100:5.1f}%  "
                          f"{count * 4e3 / n:7.0f}")
    finally:
        node.stop()


def _uvloop_echo(port_out: Any) -> None:
    import uvloop

    uvloop.install()
    nb._echo_server(port_out)


def probe_uvloop() -> None:
    ctx = mp.get_context("spawn")
    payloads = [nb.mlp_request(i) for i in range(64)]
    addresses = {}
    servers = []
    for label, target in (("asyncio", nb._echo_server), ("uvloop", _uvloop_echo)):
        ports = ctx.Queue()
        server = ctx.Process(target=target, args=(ports,), daemon=True)
        server.start()
        servers.append(server)
        addresses[label] = f"127.0.0.1:{ports.get(timeout=60)}"
    try:
        for concurrency in (1, 16, 64):
            rates: dict[str, list[float]] = {label: [] for label in addresses}
            for _ in range(3):
                for label, address in addresses.items():
                    r = nb.drive(address, nb.ECHO_PATH, payloads, concurrency, 3)
                    rates[label].append(r["rps"] if concurrency > 1 else r["p50"] * 1e3)
            unit = "req/s" if concurrency > 1 else "ms p50"
            print(f"echo c{concurrency} ({unit}, 3 alternating rounds, load average "
                  f"{os.getloadavg()[0]:.1f}): " + "; ".join(
                      f"{label} {' '.join(f'{x:.2f}' if concurrency == 1 else f'{x:.0f}' for x in v)}"
                      for label, v in rates.items()), flush=True)
    finally:
        for server in servers:
            server.terminate()


PROBES: dict[str, Callable[[], Any]] = {
    "cpu": probe_cpu, "inproc": probe_inproc, "gil": probe_gil, "uptime": probe_uptime,
    "profile": probe_profile, "uvloop": probe_uvloop,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=sorted(PROBES))
    PROBES[parser.parse_args().probe]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
