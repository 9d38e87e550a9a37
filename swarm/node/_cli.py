"""`swarm-node`: run the provider agent, or print its identity."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from swarm import __version__
from swarm._errors import ConfigError, ModelLoadError, SwarmError
from swarm._logging import configure_logging
from swarm.node._config import ModelOptions, NodeConfig, load_config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm-node", description="The Swarm provider agent.")
    parser.add_argument("--version", action="version", version=f"swarm-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve models until SIGTERM")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument("--data-dir", type=Path, help="identity and state directory")
    run.add_argument("--serve", action="append", metavar="MODEL",
                     help="model to serve (repeatable): builtin/minilm, builtin/mlp, FILE.pt2")
    run.add_argument("--grpc-port", type=int, help="gRPC port (0 = any free port)")
    run.add_argument("--metrics-port", type=int, help="metrics/health port (0 = any, -1 = off)")
    run.add_argument("--http-port", type=int,
                     help="OpenAI-compatible HTTP API port (0 = any free port, -1 = off)")
    run.add_argument("--listen-host", help="interface to bind (default 127.0.0.1)")
    run.add_argument("--advertise-host", help="host clients use to reach this node")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p2p = run.add_argument_group("peer-to-peer")
    p2p.add_argument("--p2p-port", type=int, help="libp2p port (0 = any free port, -1 = off)")
    p2p.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                     help="peer to join through (repeatable)")
    p2p.add_argument("--mdns", action="store_true", default=None, help="find peers on the LAN")
    p2p.add_argument("--advert-interval", type=float, help="seconds between capacity adverts")
    p2p.add_argument("--price-per-request", type=int, help="micro-units per request")
    p2p.add_argument("--price-per-1k-items", type=int, help="micro-units per 1,000 items")
    p2p.add_argument("--region", help="region label, e.g. eu-west")
    run.add_argument("--drain-timeout", type=float, help="seconds to finish in-flight work")
    run.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    run.add_argument("--max-message-bytes", type=int, help="largest gRPC message")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["text", "json"])
    batch = run.add_argument_group("batching (applies to every model; per model: config file)")
    batch.add_argument("--max-batch-size", type=int)
    batch.add_argument("--max-queue-delay-ms", type=float)
    batch.add_argument("--max-queue-size", type=int)
    batch.add_argument("--no-batching", action="store_true", help="execute requests one by one")
    batch.add_argument("--cache", action="store_true", help="cache responses")

    ident = sub.add_parser("id", help="print this node's peer id (and addresses while it runs)")
    ident.add_argument("--data-dir", type=Path, required=True)
    return parser


def _config(args: argparse.Namespace) -> NodeConfig:
    flags: dict[str, Any] = {
        "data_dir": args.data_dir, "serve": tuple(args.serve or ()),
        "grpc_port": args.grpc_port, "metrics_port": args.metrics_port,
        "http_port": args.http_port,
        "listen_host": args.listen_host, "advertise_host": args.advertise_host,
        "device": args.device, "drain_timeout": args.drain_timeout,
        "p2p_port": args.p2p_port, "bootstrap": tuple(args.bootstrap or ()), "mdns": args.mdns,
        "advert_interval": args.advert_interval, "price_per_request": args.price_per_request,
        "price_per_1k_items": args.price_per_1k_items, "region": args.region,
        "torch_threads": args.torch_threads, "max_message_bytes": args.max_message_bytes,
        "log_level": args.log_level, "log_format": args.log_format,
    }
    config = load_config(args.config, flags=flags)
    overrides: dict[str, Any] = {}
    if args.max_batch_size is not None:
        overrides["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_ms is not None:
        overrides["max_queue_delay"] = args.max_queue_delay_ms / 1000
    if args.max_queue_size is not None:
        overrides["max_queue_size"] = args.max_queue_size
    if args.no_batching:
        overrides["batching"] = False
    if args.cache:
        overrides["cache"] = True
    if overrides:
        import dataclasses

        models = {name: dataclasses.replace(opts, **overrides)
                  for name, opts in config.models.items()}
        models["*"] = dataclasses.replace(config.models.get("*", ModelOptions()), **overrides)
        config = dataclasses.replace(config, models=models)
    return config


async def _run(config: NodeConfig) -> None:
    from swarm.node._node import Node

    node = Node(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    await node.start()
    lines = [f"swarm-node {__version__} serving", f"  peer id  {node.peer_id}",
             f"  grpc     {node.grpc_address}"]
    if node.metrics_port:
        lines.append(f"  metrics  http://{config.advertise_host}:{node.metrics_port}/metrics")
    lines += [f"  model    {served.name}  {served.digest}" for served in node.table]
    if node.http_port:
        lines.append(f"  openai   http://{config.advertise_host}:{node.http_port}/v1")
    lines += [f"  p2p      {addr}" for addr in node.multiaddrs]
    # One write: with stdout and stderr on one file (simnet, systemd), a log line from
    # another thread must not land inside a banner line that tools parse. print() writes
    # the text and the newline separately.
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
    await node.wait_stopped()


def _identity(data_dir: Path) -> int:
    from swarm.protocol import Identity

    config = NodeConfig(data_dir=data_dir.expanduser())
    print(Identity.load_or_create(config.key_path).peer_id)
    state = config.data_dir / "node.json"
    if state.exists():
        info = json.loads(state.read_text())
        print(f"grpc {info['grpc']}")
        for addr in info.get("multiaddrs", []):
            print(addr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "id":
            return _identity(args.data_dir)
        config = _config(args)
        configure_logging(config.log_level, config.log_format)
        asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"swarm-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"swarm-node: cannot load model: {exc}", file=sys.stderr)
        return 1
    except SwarmError as exc:
        print(f"swarm-node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
