"""`swarm infer`, `swarm served`, `swarm peers`: the SDK on the command line.

`infer` prints one JSON object per input, keyed by the model's output tensor names
(`{"embedding": [[...]]}` for builtin/minilm, `{"output": [[...]]}` for builtin/mlp),
whether the input came from --text, --input, --json or a --file line. Without --node
or --bootstrap, `infer` and `served` talk to the node at 127.0.0.1:7070 (swarm-node's
default gRPC port). `swarm models` is the old name of `swarm served`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from swarm._errors import SwarmError

__all__ = ["DEFAULT_NODE", "add_parsers", "run"]

# Where `infer` and `served` go without --node or --bootstrap: a node on this machine
# at swarm-node's default gRPC port.
DEFAULT_NODE = "127.0.0.1:7070"


def add_parsers(sub: Any) -> None:
    """Add `infer`, `served` (old name: `models`) and `peers` to an argparse subparsers object."""

    infer = sub.add_parser("infer", help="run a model on inputs; prints outputs as JSON")
    infer.add_argument("model", help="model name, e.g. builtin/minilm, acme/clf:stable, "
                                     "local/m@sha256:...")
    infer.add_argument("--node", help="a node's address HOST:PORT (talk to it directly; "
                                      f"default {DEFAULT_NODE} unless --bootstrap)")
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
    # `--prefer` is the old spelling; the SDK's keyword is `preference=` too.
    infer.add_argument("--preference", "--prefer", dest="preference",
                       help="latency, price, or a latency weight in [0, 1] (with --bootstrap)")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds per request")

    served = sub.add_parser("served", aliases=["models"],
                            help="list the models a node (or the swarm) serves")
    served.add_argument("--node", help=f"node address HOST:PORT (default {DEFAULT_NODE} "
                                       "unless --bootstrap)")
    served.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                        help="list what the whole swarm serves, joining through this peer")
    served.add_argument("--json", action="store_true", help="machine-readable output")
    served.add_argument("--timeout", type=float, default=30.0, help="seconds per request")

    peers = sub.add_parser("peers", help="join the swarm and list the providers it advertises")
    peers.add_argument("--bootstrap", action="append", required=True, metavar="MULTIADDR",
                       help="a peer's multiaddr (repeatable), as printed by swarm-node")
    peers.add_argument("--json", action="store_true", help="machine-readable output")
    peers.add_argument("--models", action="store_true",
                       help="only the replicas and demand per model (with --json: those rows)")
    peers.add_argument("--wait", type=float, default=8.0,
                       help="longest time to try (seconds); the list is printed as soon as "
                            "the bootstrap peer's snapshot of the swarm is in")


def run(args: argparse.Namespace) -> int:
    """Run a parsed `infer`, `served` (`models`) or `peers` command; returns the exit status."""
    from swarm.cli._client_commands import COMMANDS

    handler = COMMANDS[args.command]
    try:
        return asyncio.run(handler(args))
    except (SwarmError, OSError, ValueError) as exc:  # ValueError: numpy refusing an input
        print(f"swarm: {exc}", file=sys.stderr)
        return 1
