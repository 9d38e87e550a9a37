""".venv/bin/python bench/registry_bench.py   # [--size-mb 200] [--chunk-mb 4] [--fetchers 4] [--repeat 3]

Replicating a model version between registry nodes on loopback, against plain TCP copies.

Setup: one version of `--size-mb` random bytes (a real signed manifest, `--chunk-mb` chunks)
stored by two source nodes. Each source node is its own process: a grpc.aio server with
swarm.registry's RegistryServicer over a BlobStore (the blob is in the page cache after the
first run). Each fetching node is its own process running `fetch_version` into an empty
BlobStore on local disk: every chunk verified on receipt, the whole blob hashed as it is
written, fsync, atomic rename; the source re-verifies every chunk it reads.
The baseline is a tiny TCP server process (`socket.sendfile` of the same file) and clients
that receive over one connection each and write the bytes to a file, fsynced: a plain
sequential copy. "copy+sha256" also hashes the stream once, as a lower bound for any
verified transfer.

Scenarios (wall time from a common start signal to the last finisher, median of --repeat):
  plain copy x1          1 client
  copy+sha256 x1         1 client that hashes what it receives
  fetch 1<-1             1 fetcher, 1 source
  fetch 1<-2             1 fetcher, 2 sources (the 2-sources-vs-1 comparison)
  plain copy xN          N clients at once from one server
  fetch N<-1             N fetchers at once from one source (replicate one node to N)
Exits 0; it reports, it does not judge (the machine's disk and loopback are shared and noisy).

Results, with the command and the reasons for the gap, are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm._types import Digest  # noqa: E402
from swarm.protocol import Identity  # noqa: E402
from swarm.registry import (  # noqa: E402
    BlobStore,
    FetchConfig,
    ManifestStore,
    ModelFormat,
    Outcome,
    TagState,
    manifest_for_file,
    sign_manifest,
)

_BLOCK = 1 << 20


# -- source node and TCP server (child processes) ------------------------------------------


class _NoTags:
    """A TagBook for a node that only serves blobs."""

    state = TagState()
    allowlist: Mapping[str, Set[bytes]] = {}

    def signed_record(self, name: str, tag: str) -> bytes | None:
        return None

    async def publish(self, signed: bytes, **kwargs: Any) -> Outcome:
        raise NotImplementedError


def _serve_registry(root: str, ports: Any) -> None:
    import grpc

    from swarm.registry import RegistryServicer, add_registry_service
    from swarm.registry._client import CHANNEL_OPTIONS

    async def serve() -> None:
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        add_registry_service(RegistryServicer(ManifestStore(BlobStore(Path(root))), _NoTags()), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await server.wait_for_termination()

    asyncio.run(serve())


def _serve_tcp(path: str, ports: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ports.put(listener.getsockname()[1])
        while True:
            conn, _ = listener.accept()
            with conn, open(path, "rb") as f:
                conn.sendfile(f)


# -- clients (child processes) -------------------------------------------------------------


def _copy(port: int, out: str, verify: bool, ready: Any, go: Any, results: Any) -> None:
    ready.put(1)
    go.wait()
    h = hashlib.sha256() if verify else None
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with socket.create_connection(("127.0.0.1", port)) as sock, open(out, "wb") as f:
        while n := sock.recv_into(buf):
            f.write(view[:n])
            if h is not None:
                h.update(view[:n])
        f.flush()
        os.fsync(f.fileno())
    results.put((time.time(), {}))


def _fetch(addresses: list[str], digest: str, root: str, ready: Any, go: Any, results: Any) -> None:
    from swarm.registry import RegistryClient, fetch_version

    async def run() -> dict[str, Any]:
        clients = [RegistryClient(a) for a in addresses]
        try:
            result = await fetch_version(ManifestStore(BlobStore(Path(root))), Digest(digest),
                                         clients, config=FetchConfig())
        finally:
            for c in clients:
                await c.close()
        return dict(result.stats.bytes_by_source)

    ready.put(1)
    go.wait()
    by_source = asyncio.run(run())
    results.put((time.time(), by_source))


# -- the parent ----------------------------------------------------------------------------


def _run(ctx: Any, target: Any, arg_sets: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """Start one process per arg set, release them together; wall time to the last finisher."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(*a, ready, go, results)) for a in arg_sets]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    time.sleep(0.2)  # let every child reach go.wait()
    start = time.time()
    go.set()
    outs = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"a child failed (exit {p.exitcode})")
    return max(t for t, _ in outs) - start, [o for _, o in outs]


def _drop(paths: list[Path]) -> None:
    import shutil

    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--chunk-mb", type=int, default=4)
    parser.add_argument("--fetchers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where stores and copies go (default: $TMPDIR)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    size = args.size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="registry-bench-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.bin"
        with model.open("wb") as f:
            for _ in range(0, size, 8 * _BLOCK):
                f.write(os.urandom(min(8 * _BLOCK, size - f.tell())))
        publisher = Identity.generate()
        manifest = manifest_for_file(model, "bench/model", "v1", format=ModelFormat.TORCH_EXPORT,
                                     inputs=(), outputs=(), publisher=publisher.public_key,
                                     created_at=time.time(), chunk_size=args.chunk_mb << 20)
        signed = sign_manifest(manifest, publisher)
        digest = ManifestStore(BlobStore(tmp / "src0")).put(signed)[1]
        for name in ("src0", "src1"):
            store = ManifestStore(BlobStore(tmp / name))
            store.put(signed)
            store.blobs.put_file(model)

        queues: list[Any] = [ctx.Queue() for _ in range(3)]
        servers = [ctx.Process(target=_serve_registry, args=(str(tmp / n), q), daemon=True)
                   for n, q in zip(("src0", "src1"), queues, strict=False)]
        servers.append(ctx.Process(target=_serve_tcp, args=(str(model), queues[2]), daemon=True))
        for s in servers:
            s.start()
        src0, src1, tcp = (q.get(timeout=60) for q in queues)
        a0, a1 = f"127.0.0.1:{src0}", f"127.0.0.1:{src1}"
        n = args.fetchers

        def copies(count: int, verify: bool = False) -> tuple[float, list[Any]]:
            outs = [tmp / f"copy{i}" for i in range(count)]
            try:
                return _run(ctx, _copy, [(tcp, str(o), verify) for o in outs])
            finally:
                _drop(outs)

        def fetches(count: int, addresses: list[str]) -> tuple[float, list[Any]]:
            roots = [tmp / f"fetch{i}" for i in range(count)]
            try:
                return _run(ctx, _fetch, [(addresses, digest.hex, str(r)) for r in roots])
            finally:
                _drop(roots)

        scenarios: list[tuple[str, Callable[[], tuple[float, list[Any]]]]] = [
            ("plain copy x1", lambda: copies(1)),
            ("copy+sha256 x1", lambda: copies(1, verify=True)),
            ("fetch 1<-1", lambda: fetches(1, [a0])),
            ("fetch 1<-2", lambda: fetches(1, [a0, a1])),
            (f"plain copy x{n}", lambda: copies(n)),
            (f"fetch {n}<-1", lambda: fetches(n, [a0])),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in scenarios}
        split: list[Any] = []
        copies(1)  # warm the page cache and the processes' first-run costs
        for _ in range(args.repeat):
            for name, scenario in scenarios:
                wall, outs = scenario()
                times[name].append(wall)
                if name == "fetch 1<-2":
                    split.append(outs[0])
        for s in servers:
            s.terminate()

    med = {k: statistics.median(v) for k, v in times.items()}
    mb = size / 1e6
    print(f"{args.size_mb} MB, {args.chunk_mb} MiB chunks, {os.cpu_count()} cores, "
          f"repeat {args.repeat} (median wall time, and the fastest run)")
    print(f"{'scenario':<18} {'wall s':>8} {'min s':>8} {'MB/s per node':>14}")
    for name, values in times.items():
        print(f"{name:<18} {med[name]:8.2f} {min(values):8.2f} {mb / med[name]:14.0f}")
    print()
    print(f"fetch 1<-1 / plain copy x1      = {med['fetch 1<-1'] / med['plain copy x1']:.2f}")
    print(f"fetch 1<-1 / copy+sha256 x1     = {med['fetch 1<-1'] / med['copy+sha256 x1']:.2f}")
    print(f"fetch {n}<-1 / plain copy x{n}      = {med[f'fetch {n}<-1'] / med[f'plain copy x{n}']:.2f}")
    print(f"fetch 1<-2 / fetch 1<-1         = {med['fetch 1<-2'] / med['fetch 1<-1']:.2f}")
    shares = [", ".join(f"{v / size:.0%}" for v in sorted(s.values(), reverse=True)) for s in split]
    print(f"bytes per source, 1<-2 runs     : {' | '.join(shares)}")


if __name__ == "__main__":
    main()
