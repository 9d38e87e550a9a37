"""How far would front processes + one model process take the node? An upper bound.

    .venv/bin/python bench/split_probe.py [--rounds 3] [--fronts 1,2]

The lead left on issue 16: gRPC, decode, encode and signing in front processes that
share the port (SO_REUSEPORT), the model in one process that batches what the fronts
send it, so that the model never waits for the loop and gRPC can use the core the
forward leaves. Before building that into the node, this measures a minimal version of
it against the real node and the grpc.aio echo, in alternating rounds, with the CPU
each server process used per request:

  front  grpc.aio, generic handler: parse the ModelInferRequest, `decode_request`,
         send (id, inputs) to the model process over a pipe (one pickle per loop
         iteration, not per request), build the response with `encode_raw`, sign it
         with the node's `sign_response`. No metrics, admission, cache, deadlines,
         statistics: the prototype is cheaper per request than a node can be.
  model  `load_builtin` models; waits on the fronts' pipes, takes everything that
         has arrived (up to the model's max batch), executes, sends the results back.
         Greedy batching: no delay policy (at c16/c64 the forward is the delay).

So the prototype's numbers bound what the split could reach from above; if the bound
misses a target, building the split into the node would too.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench as nb

MAX_BATCH = {"builtin/mlp": 64, "builtin/minilm": 64}


# --------------------------------------------------------------------------- model process

def _model_process(conns: list[Connection], threads: int, ready: Any) -> None:
    import torch

    from swarm.node._builtins import load_builtin
    from swarm.node._runtime import ThreadPolicy, set_thread_policy

    # threads 0: the node's own adaptive policy (one thread for short passes)
    set_thread_policy(ThreadPolicy.for_machine(os.cpu_count() or 1, fixed=threads))
    models = {name: load_builtin(name, torch.device("cpu")) for name in MAX_BATCH}
    for model in models.values():
        model.execute(model.example_inputs(2))
    ready.put(True)
    # queue per model: (front index, request id, inputs)
    queues: dict[str, list[tuple[int, int, dict[str, np.ndarray]]]] = defaultdict(list)
    while True:
        timeout = 0 if any(queues.values()) else None
        for conn in cast(list[Connection], wait(conns, timeout)):
            front = conns.index(conn)
            while conn.poll():
                try:
                    msgs = conn.recv()
                except EOFError:
                    return
                for rid, name, inputs in cast(list[tuple[int, str, dict[str, np.ndarray]]], msgs):
                    queues[name].append((front, rid, inputs))
        for name, queue in queues.items():
            if not queue:
                continue
            take = queue[:MAX_BATCH[name]]
            del queue[:MAX_BATCH[name]]
            keys = take[0][2].keys()
            batch = {k: np.concatenate([t[2][k] for t in take]) for k in keys}
            out = models[name].execute(batch)
            replies: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = defaultdict(list)
            start = 0
            for front, rid, inputs in take:
                n = len(next(iter(inputs.values())))
                replies[front].append((rid, {k: v[start:start + n] for k, v in out.items()}))
                start += n
            for front, items in replies.items():
                conns[front].send((name, len(take), items))


# --------------------------------------------------------------------------- front process

def _front_process(conn: Connection, port: int, sign: bool, ready: Any) -> None:
    import grpc
    import torch

    from swarm._proto.inference import grpc_service_pb2 as pb
    from swarm._tensors import encode_raw
    from swarm.node._builtins import load_builtin
    from swarm.node._service import decode_request
    from swarm.protocol import Identity
    from swarm.protocol._responses import sign_response

    # The front needs each model's spec (to decode); the prototype loads the models to
    # get them (a real front would receive the specs).
    specs = {name: load_builtin(name, torch.device("cpu")).spec for name in MAX_BATCH}
    identity = Identity.generate()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pending: dict[int, asyncio.Future[Any]] = {}
        outbox: list[tuple[int, str, dict[str, np.ndarray]]] = []
        next_id = 0

        def flush() -> None:
            conn.send(list(outbox))
            outbox.clear()

        def on_readable() -> None:
            while conn.poll():
                _, batch, items = conn.recv()
                for rid, outputs in items:
                    fut = pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result((outputs, batch))

        loop.add_reader(conn.fileno(), on_readable)

        async def infer(raw: bytes, context: Any) -> bytes:
            nonlocal next_id
            request = pb.ModelInferRequest.FromString(raw)
            spec = specs[request.model_name]
            decoded = decode_request(request, spec, MAX_BATCH[request.model_name])
            rid = next_id
            next_id += 1
            fut = loop.create_future()
            pending[rid] = fut
            if not outbox:
                loop.call_soon(flush)
            outbox.append((rid, request.model_name, dict(decoded.inputs)))
            outputs, batch = await fut
            response = pb.ModelInferResponse(model_name=request.model_name,
                                             model_version="0" * 64, id=request.id)
            for out in spec.outputs:
                datatype, shape, data = encode_raw(outputs[out.name])
                response.outputs.add(name=out.name, datatype=datatype, shape=shape)
                response.raw_output_contents.append(data)
            response.parameters["swarm_batch_items"].int64_param = batch
            if sign:
                sign_response(identity, request, response)
            return response.SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.put(True)
        await server.wait_for_termination()

    asyncio.run(main())


class Split:
    def __init__(self, fronts: int, threads: int, sign: bool = True) -> None:
        import socket

        ctx = mp.get_context("spawn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ready = ctx.Queue()
        pipes = [ctx.Pipe() for _ in range(fronts)]
        self.model = ctx.Process(target=_model_process, args=([p[0] for p in pipes], threads, ready),
                                 daemon=True)
        self.model.start()
        ready.get(timeout=120)
        self.fronts = [ctx.Process(target=_front_process, args=(p[1], port, sign, ready), daemon=True)
                       for p in pipes]
        for f in self.fronts:
            f.start()
        for _ in self.fronts:
            ready.get(timeout=120)
        self.address = f"127.0.0.1:{port}"
        self.pids = [p.pid or 0 for p in (self.model, *self.fronts)]

    def stop(self) -> None:
        for p in (*self.fronts, self.model):
            p.terminate()
            p.join(10)


# --------------------------------------------------------------------------- measuring

def _cpu_seconds(pid: int) -> float:
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        total += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(pids: list[int], address: str, path: str, payloads: list[bytes], conc: int,
            seconds: float) -> dict[str, float]:
    """Drive for `seconds` (after 1 s of warm-up); the servers' CPU over the middle."""
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(nb.drive(address, path, payloads, conc, seconds)))
    t.start()
    time.sleep(1.5 + seconds * 0.2)  # past the load process's start and warm-up
    c0, w0 = sum(map(_cpu_seconds, pids)), time.perf_counter()
    time.sleep(seconds * 0.6)
    c1, w1 = sum(map(_cpu_seconds, pids)), time.perf_counter()
    t.join()
    cores = (c1 - c0) / (w1 - w0)
    return {"rps": result["rps"], "p50": result["p50"], "p99": result["p99"], "cores": cores,
            "cpu_us": cores / max(result["rps"], 1e-9) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fronts", default="1,2")
    parser.add_argument("--threads", type=int, default=0,
                        help="model process's intra-op threads (0: the node's adaptive choice)")
    parser.add_argument("--no-sign", action="store_true", help="fronts do not sign responses")
    parser.add_argument("--points", default="mlp64,mlp1,minilm16,minilm64")
    args = parser.parse_args()
    points = []
    for text in args.points.split(","):
        model = text.rstrip("0123456789")
        points.append((model, int(text[len(model):])))
    payloads = {"mlp": [nb.mlp_request(i) for i in range(256)],
                "minilm": [nb.minilm_request(i) for i in range(64)]}

    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    echo = ctx.Process(target=nb._echo_server, args=(port_q,), daemon=True)
    echo.start()
    servers: dict[str, tuple[list[int], str, str]] = {
        "echo": ([echo.pid or 0], f"127.0.0.1:{port_q.get(timeout=60)}", nb.ECHO_PATH)}
    node = nb.NodeProcess()
    servers["node"] = ([node.proc.pid], node.address, nb.INFER_PATH)
    splits = []
    for f in (int(x) for x in args.fronts.split(",")):
        split = Split(f, args.threads, sign=not args.no_sign)
        splits.append(split)
        servers[f"split {f} front{'s' if f > 1 else ''}"] = (split.pids, split.address, nb.INFER_PATH)
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    try:
        for name, (_, address, path) in servers.items():
            if name != "echo":
                for model, conc in points:
                    nb.drive(address, path, payloads[model], conc, 1.5, warmup=0.5)
        for r in range(args.rounds):
            order = list(servers.items())
            if r % 2:
                order.reverse()
            for model, conc in points:
                for name, (pids, address, path) in order:
                    if name == "echo" and model != "mlp":
                        continue
                    m = measure(pids, address, path, payloads[model], conc, args.seconds)
                    rows[(f"{model}{conc}", name)].append(m)
                    print(f"round {r} {model}{conc:<3d} {name:16s} {m['rps']:7.0f} req/s  p50 "
                          f"{m['p50'] * 1e3:7.2f} ms  p99 {m['p99'] * 1e3:7.2f} ms  "
                          f"{m['cores']:4.2f} cores  {m['cpu_us']:6.0f} us CPU/req", flush=True)
    finally:
        node.stop()
        for split in splits:
            split.stop()
        echo.terminate()
    print("\n| point | server | req/s by round | p50 ms (median) | p99 ms (median) "
          "| server CPU us/req (median) |")
    print("|---|---|---|---:|---:|---:|")
    for (point, name), ms in rows.items():
        by_round = ", ".join(f"{m['rps']:.0f}" for m in ms)
        print(f"| {point} | {name} | {by_round} | "
              f"{statistics.median(m['p50'] for m in ms) * 1e3:.2f} | "
              f"{statistics.median(m['p99'] for m in ms) * 1e3:.1f} | "
              f"{statistics.median(m['cpu_us'] for m in ms):.0f} |")
    raw = nb.raw_throughput(3.0, os.cpu_count() or 1)
    print("\nraw, all cores: " + ", ".join(f"{k} {v:.0f} items/s" for k, v in raw.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
