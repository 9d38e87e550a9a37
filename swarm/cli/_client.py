"""`swarm infer`, `swarm models`, `swarm peers`: the SDK on the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from swarm._errors import ConfigError, InvalidInputError, SwarmError
from swarm.client import AsyncClient, TensorInfo
from swarm.protocol import PeerView

__all__ = ["add_parsers", "run"]


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
    if bool(args.node) == bool(args.bootstrap):
        raise ConfigError("give --node HOST:PORT, or --bootstrap MULTIADDR to use the swarm")
    if args.node:
        if args.max_price is not None or args.prefer is not None:
            raise ConfigError("--max-price and --prefer need --bootstrap (routing in the swarm)")
        return AsyncClient(args.node, timeout=args.timeout)
    return AsyncClient(bootstrap=args.bootstrap, timeout=args.timeout, max_price=args.max_price,
                       preference=args.prefer or "latency")


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


async def _infer_file(args: argparse.Namespace, client: AsyncClient) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    items = _read_lines(args.file)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(args.model, total=len(items))
        results = await client.map(args.model, items, concurrency=args.concurrency,
                                   progress=lambda n: bar.advance(task, n))
    for result in results:
        outputs = result if isinstance(result, dict) else {"output": result}
        print(json.dumps({k: _jsonable(v) for k, v in outputs.items()}))
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
    print(json.dumps({name: _jsonable(v) for name, v in outputs.items()}))
    return 0


async def _models(args: argparse.Namespace) -> int:
    args.max_price = args.prefer = None
    async with _client(args) as client:
        models = await client.models()
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

    table = Table("model", "version", "inputs", "outputs", "max batch")
    for m in models:
        table.add_row(m.name, m.versions[0][:19] if m.versions else "", fmt(m.inputs),
                      fmt(m.outputs), str(m.max_batch_size))
    Console().print(table)
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
                        "max_batch_size": m.max_batch_size} for m in a.models],
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


def _model_cell(model: dict[str, Any]) -> str:
    """`acme/classifier:stable,v2 3085ca515f8c`: name, the tags naming it, short digest."""
    tags = ":" + ",".join(model["tags"]) if model["tags"] else ""
    return f"{model['name']}{tags} {model['digest'].removeprefix('sha256:')[:12]}"


async def _peers(args: argparse.Namespace) -> int:
    from swarm.protocol import LightPeer

    async with LightPeer.libp2p(args.bootstrap) as peer:
        view = await peer.settle(args.wait)
        rows = _peer_rows(view, asyncio.get_running_loop().time())
    if args.json:
        print(json.dumps(rows, indent=2))
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
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if not rows:
        print("no peers seen (is the bootstrap address right?)", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Any) -> None:
    """Add `infer`, `models` and `peers` to an argparse subparsers object."""

    infer = sub.add_parser("infer", help="run a model on inputs; prints outputs as JSON")
    infer.add_argument("model", help="model name, e.g. builtin/minilm")
    infer.add_argument("--node", help="a node's address HOST:PORT (talk to it directly)")
    infer.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                       help="join the swarm through this peer and let the scheduler route")
    infer.add_argument("--text", action="append", help="a text input (repeatable)")
    infer.add_argument("--input", type=Path, help="inputs from a .npy or .json file")
    infer.add_argument("--json", help="inputs as a JSON value (array, or object of arrays)")
    infer.add_argument("--file", type=Path,
                       help="many inputs, one JSON value per line: spread over providers, "
                            "outputs printed one JSON line each, in order")
    infer.add_argument("--concurrency", type=int, default=32,
                       help="requests in flight at once with --file")
    infer.add_argument("--max-price", type=float,
                       help="highest price per request, micro-units (with --bootstrap)")
    infer.add_argument("--prefer", help="latency, price, or a latency weight in [0, 1]")
    infer.add_argument("--timeout", type=float, default=30.0)

    models = sub.add_parser("models", help="list the models a node (or the swarm) serves")
    models.add_argument("--node", help="node address HOST:PORT")
    models.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                        help="list what the whole swarm serves, joining through this peer")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.add_argument("--timeout", type=float, default=30.0)

    peers = sub.add_parser("peers", help="join the swarm and list the providers it advertises")
    peers.add_argument("--bootstrap", action="append", required=True, metavar="MULTIADDR",
                       help="a peer's multiaddr (repeatable), as printed by swarm-node")
    peers.add_argument("--json", action="store_true", help="machine-readable output")
    peers.add_argument("--wait", type=float, default=8.0,
                       help="longest time to listen for adverts (seconds)")


def run(args: argparse.Namespace) -> int:
    """Run a parsed `infer`, `models` or `peers` command; returns the exit status."""
    handler = {"infer": _infer, "models": _models, "peers": _peers}[args.command]
    try:
        return asyncio.run(handler(args))
    except (SwarmError, OSError, ValueError) as exc:  # ValueError: numpy refusing an input
        print(f"swarm: {exc}", file=sys.stderr)
        return 1
