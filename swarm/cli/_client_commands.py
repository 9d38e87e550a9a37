"""The `swarm infer`, `served` and `peers` commands themselves (the parser is in _client.py,
which imports this module only to run one)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from swarm._errors import ConfigError, InvalidInputError, SwarmError, first_failure
from swarm.cli._client import DEFAULT_NODE
from swarm.client import AsyncClient, TensorInfo
from swarm.protocol import PeerView

__all__ = ["COMMANDS"]


def _load_input(path: Path) -> Any:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".json":
        return _parse_json(path.read_text(), str(path))
    raise InvalidInputError(f"{path}: inputs come as .npy or .json")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: not JSON: {exc.msg}") from exc


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v
                for v in value.reshape(-1)]
    return value.tolist()


def _client(args: argparse.Namespace) -> AsyncClient:
    if args.node and args.bootstrap:
        raise ConfigError("give --node HOST:PORT, or --bootstrap MULTIADDR to use the swarm, "
                          "not both")
    if not args.bootstrap:
        if args.max_price is not None or args.preference is not None:
            raise ConfigError("--max-price and --preference need --bootstrap (routing in the "
                              "swarm)")
        return AsyncClient(args.node or DEFAULT_NODE, timeout=args.timeout)
    return AsyncClient(bootstrap=args.bootstrap, timeout=args.timeout, max_price=args.max_price,
                       preference=args.preference or "latency")


def _as_inputs(value: Any) -> Any:
    """One JSON value -> model inputs: text(s), a numeric array, or named arrays."""
    if isinstance(value, str):
        return np.array([value.encode()], dtype=object)
    if isinstance(value, dict):
        return {k: _as_inputs(v) for k, v in value.items()}
    array = np.asarray(value)
    if array.dtype.kind == "U":
        return np.array([s.encode() for s in array.reshape(-1)], dtype=object).reshape(array.shape)
    return array.astype(np.float32) if array.dtype.kind in "fiu" else array


def _read_lines(path: Path) -> list[Any]:
    items = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            items.append(_as_inputs(_parse_json(line, f"{path}:{number}")))
    if not items:
        raise InvalidInputError(f"{path} holds no inputs (one JSON value per line)")
    return items


def _print_outputs(outputs: dict[str, np.ndarray]) -> None:
    """One JSON line, keyed by the model's output names (the same for every input flag)."""
    print(json.dumps({name: _jsonable(v) for name, v in outputs.items()}))


async def _infer_file(args: argparse.Namespace, client: AsyncClient) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    items = _read_lines(args.file)
    results: list[dict[str, np.ndarray]] = [{} for _ in items]
    gate = asyncio.Semaphore(args.concurrency)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(args.model, total=len(items))

        async def one(i: int, inputs: Any) -> None:
            async with gate:
                results[i] = await client.infer_raw(args.model, inputs)
            bar.advance(task, 1)

        try:
            async with asyncio.TaskGroup() as tg:
                for i, inputs in enumerate(items):
                    tg.create_task(one(i, inputs))
        except* SwarmError as group:  # the first failure cancels the rest: report it as itself
            raise first_failure(group) from None
    for outputs in results:
        _print_outputs(outputs)
    return 0


async def _infer(args: argparse.Namespace) -> int:
    given = sum(x is not None for x in (args.text, args.input, args.json, args.file))
    if given != 1:
        raise ConfigError("give the input as --text (repeatable), --input FILE, --json VALUE "
                          "or --file FILE.jsonl")
    async with _client(args) as client:
        if args.file is not None:
            return await _infer_file(args, client)
        if args.text is not None:
            inputs: Any = np.array([t.encode() for t in args.text], dtype=object)
        elif args.input is not None:
            inputs = _load_input(args.input)
            inputs = inputs if isinstance(inputs, np.ndarray) else _as_inputs(inputs)
        else:
            inputs = _as_inputs(_parse_json(args.json, "--json"))
        outputs = await client.infer_raw(args.model, inputs)
    _print_outputs(outputs)
    return 0


async def _served(args: argparse.Namespace) -> int:
    if args.command == "models":
        print("swarm: `swarm models` is now `swarm served` (the old name will go away)",
              file=sys.stderr)
    args.max_price = args.preference = None
    async with _client(args) as client:
        models = await client.models()
        where = client.address or "the swarm"
    if args.json:
        print(json.dumps([{
            "name": m.name, "versions": list(m.versions), "platform": m.platform,
            "max_batch_size": m.max_batch_size,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                       for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                        for t in m.outputs],
        } for m in models], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    def fmt(tensors: tuple[TensorInfo, ...]) -> str:
        return ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in tensors)

    # A terminal gets short digests; a pipe or file the whole of every cell.
    tty = sys.stdout.isatty()
    table = Table("model", "version", "inputs", "outputs", "max batch",
                  title=f"models served by {where}")
    for m in models:
        version = m.versions[0] if m.versions else ""
        table.add_row(m.name, version[:19] if tty else version, fmt(m.inputs),
                      fmt(m.outputs), str(m.max_batch_size))
    Console(width=None if tty else 100_000).print(table)
    return 0


def _peer_rows(view: PeerView, now: float) -> list[dict[str, Any]]:
    rows = []
    for entry in sorted(view, key=lambda e: e.peer_id.value):
        a = entry.advert
        rows.append({
            "peer_id": a.peer_id.value,
            "grpc": list(a.endpoints),
            "models": [{"name": m.name, "digest": str(m.digest), "tags": list(m.tags),
                        "items_per_second": m.items_per_second, "queue_depth": m.queue_depth,
                        "max_batch_size": m.max_batch_size, "arrival_rate": m.arrival_rate,
                        "queue_wait_s": m.queue_wait, "utilization": m.utilization}
                       for m in a.models],
            "queue_depth": a.queue_depth,
            "items_per_second": round(sum(m.items_per_second for m in a.models), 1),
            "price": {"per_request_micros": a.price.per_request_micros,
                      "per_1k_items_micros": a.price.per_1k_items_micros},
            "hardware": {"device_kind": a.hardware.device_kind, "count": a.hardware.device_count,
                         "memory_bytes": a.hardware.memory_bytes, "name": a.hardware.device_name},
            "region": a.region,
            "version": a.software_version,
            "draining": a.draining,
            "advert_age_s": round(entry.age(now), 2),
        })
    return rows


def _replica_rows(view: PeerView) -> list[dict[str, Any]]:
    """Replicas and demand per model version (what autoscaling sees), most replicas first."""
    from swarm.autoscale import supply_and_demand

    demand = sorted(supply_and_demand(view, None).values(),
                    key=lambda d: (-d.replicas, d.name, d.digest.hex))
    return [{"name": d.name, "digest": str(d.digest), "replicas": d.replicas,
             "load": round(d.load, 2), "arrival_rate": round(d.arrival_rate, 2),
             "throughput": round(d.throughput, 1), "queue_wait_s": round(d.queue_wait, 4),
             "holders": d.holders} for d in demand]


def _model_cell(model: dict[str, Any]) -> str:
    """`acme/classifier:stable,v2 3085ca515f8c`: name, the tags naming it, short digest."""
    tags = ":" + ",".join(model["tags"]) if model["tags"] else ""
    return f"{model['name']}{tags} {model['digest'].removeprefix('sha256:')[:12]}"


async def _peers(args: argparse.Namespace) -> int:
    from swarm.protocol import LightPeer

    async with LightPeer.libp2p(args.bootstrap) as peer:
        view = await peer.settle(args.wait)
        rows = _peer_rows(view, asyncio.get_running_loop().time())
        replicas = _replica_rows(view)
    if args.json:
        print(json.dumps(replicas if args.models else rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Prices are in micro-units of the swarm's settlement currency (proto/swarm/v1/node.proto).
    table = Table("peer", "grpc", "models", "queue", "items/s", "µ/request", "µ/1k items",
                  "hardware", "region", "age")
    for r in rows:
        hw = r["hardware"]
        mem = hw["memory_bytes"] / 2**30
        table.add_row(
            r["peer_id"][-12:], ", ".join(r["grpc"]),
            "\n".join(_model_cell(m) for m in r["models"]),
            str(r["queue_depth"]), f"{r['items_per_second']:.0f}",
            str(r["price"]["per_request_micros"]), str(r["price"]["per_1k_items_micros"]),
            f"{hw['count']}x {hw['device_kind']} {mem:.0f}GiB", r["region"] or "-",
            f"{r['advert_age_s']:.1f}s" + (" draining" if r["draining"] else ""))
    console = Console(width=None if sys.stdout.isatty() else 200)
    if not args.models:
        console.print(table)
    # Load: replicas' worth of busy work (1.0 = one replica saturated), as autoscaling sees it.
    models = Table("model", "version", "replicas", "load", "items/s in", "items/s capacity",
                   "queue wait", "stored by")
    for m in replicas:
        models.add_row(m["name"], m["digest"].removeprefix("sha256:")[:12], str(m["replicas"]),
                       f"{m['load']:.2f}", f"{m['arrival_rate']:.1f}", f"{m['throughput']:.0f}",
                       f"{m['queue_wait_s'] * 1000:.0f} ms", str(m["holders"]))
    console.print(models)
    if not rows:
        print("no peers seen (is the bootstrap address right?)", file=sys.stderr)
        return 1
    return 0



COMMANDS = {"infer": _infer, "served": _served, "models": _served, "peers": _peers}
