"""Where a MiniLM cycle goes: the node's own timing parameters, read from each response.

    .venv/bin/python bench/batch_timeline.py [NODE ARGS]

Starts one node (node_bench.NodeProcess), drives builtin/minilm at c16 and c64 for 5 s,
three times, and prints per point: req/s, the share of time the model executed (each
request's share of its batch's `swarm_compute_us`), the batch size, one execution's
duration, queueing and latency (medians) and the most frequent batch sizes; then, over
the batches that held every client (their requests share one `swarm_compute_us`), how
far apart the clients sent and how long the last and the first to arrive were queued.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import node_bench as nb

from swarm._proto.inference import grpc_service_pb2 as pb


async def drive(address: str, conc: int, seconds: float) -> None:
    payloads = [nb.minilm_request(i) for i in range(64)]
    # (latency, batch items, execution seconds, queue seconds) per request
    recs: list[tuple[float, int, float, float]] = []
    # execution microseconds (one value per batch) -> (sent at, queue seconds) per request
    batches: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(nb.INFER_PATH,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        for p in payloads[:8]:
            await call(p)
        measure_from = time.perf_counter() + 1.0
        stop = measure_from + seconds

        async def worker(k: int) -> None:
            i = k
            while (t0 := time.perf_counter()) < stop:
                r = await call(payloads[i % len(payloads)], timeout=30)
                if t0 >= measure_from:
                    params = r.parameters
                    queued = params["swarm_queue_us"].int64_param / 1e6
                    recs.append((time.perf_counter() - t0, params["swarm_batch_items"].int64_param,
                                 params["swarm_compute_us"].int64_param / 1e6, queued))
                    batches[params["swarm_compute_us"].int64_param].append((t0, queued))
                i += conc

        await asyncio.gather(*(worker(k) for k in range(conc)))
    busy = sum(compute / batch for _, batch, compute, _ in recs)
    sizes = collections.Counter(batch for _, batch, _, _ in recs)
    print(f"minilm c{conc}: {len(recs) / seconds:.0f} req/s, model executing {busy / seconds:.2f} "
          f"of the time, batch {statistics.mean(r[1] for r in recs):.1f} (mean per request), "
          f"execution {statistics.median(r[2] for r in recs) * 1e3:.1f} ms, "
          f"queue {statistics.median(r[3] for r in recs) * 1e3:.1f} ms, "
          f"latency {statistics.median(r[0] for r in recs) * 1e3:.1f} ms (medians); "
          f"requests by batch size {sorted(sizes.items(), key=lambda kv: -kv[1])[:4]}", flush=True)
    full = [b for b in batches.values() if len(b) == conc]
    if full:
        spread = statistics.median(max(t for t, _ in b) - min(t for t, _ in b) for b in full)
        last = statistics.median(min(q for _, q in b) for b in full)
        first = statistics.median(max(q for _, q in b) for b in full)
        print(f"  {len(full)} batches held all {conc} clients: sent within {spread * 1e3:.1f} ms, "
              f"the last to arrive queued {last * 1e3:.1f} ms, the first {first * 1e3:.1f} ms "
              f"(medians)", flush=True)


def main() -> int:
    node = nb.NodeProcess(*sys.argv[1:])
    try:
        for _ in range(3):
            for conc in (16, 64):
                asyncio.run(drive(node.address, conc, 5.0))
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
