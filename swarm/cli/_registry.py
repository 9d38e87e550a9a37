"""`swarm model ...`: push, ls, tag, rollback, pull, key.

Every command acts through one node: `--node HOST:PORT`, or `--bootstrap
MULTIADDR` to join the swarm as a light peer and use a node from its view (a
pull then fetches from every peer that stores the version); `ls` names the node
that answered. A pull keeps what it fetched, as `docker pull` keeps the image: in
the registry store of swarm-node's default data dir (`$SWARM_DATA_DIR/registry`,
else `~/.local/share/swarm-node/registry`), where a node started with that data
dir finds it; `--store DIR` keeps it elsewhere, `--no-store` only verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from swarm._errors import SwarmError

__all__ = ["add_parser", "run"]


def _reach(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", metavar="HOST:PORT", help="act through this node")
    where.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                       help="join the swarm through this peer (repeatable) and use a node it knows")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--wait", type=float, default=8.0,
                        help="with --bootstrap: longest time to listen for nodes (seconds)")


def _key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="publisher key (default: ~/.config/swarm/publisher.key, "
                             "created on first use)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `model` and its subcommands to the `swarm` CLI's subparsers."""
    model = subparsers.add_parser("model", help="publish, tag, roll back and pull model versions")
    sub = model.add_subparsers(dest="model_command", required=True)

    p = sub.add_parser("push", help="publish a torch.export program (.pt2) as a new version")
    p.add_argument("file", type=Path, help="the .pt2 file")
    p.add_argument("--name", required=True, help="namespace/name, e.g. acme/classifier")
    p.add_argument("--tag", help="tag to point at the new version, e.g. v1")
    p.add_argument("--version", help="version label in the manifest (default: the tag)")
    p.add_argument("--chunk-size", type=int,
                   help="bytes per verified chunk (default: the registry's, 4 MiB)")
    _key(p)
    _reach(p)

    p = sub.add_parser("ls", help="list tags and the versions a node stores (and which node)")
    p.add_argument("name", nargs="?", help="only this namespace/name")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (with the answering node as \"node\")")
    _reach(p)

    p = sub.add_parser("tag", help="point a tag at a version: tag NAME:TAG TARGET")
    p.add_argument("tag", help="the tag to move, e.g. acme/classifier:stable")
    p.add_argument("target", help="a tag (acme/classifier:v1) or digest (sha256:...)")
    _key(p)
    _reach(p)

    p = sub.add_parser("rollback", help="move a tag back to the version it pointed at before")
    p.add_argument("tag", help="e.g. acme/classifier:stable")
    _key(p)
    _reach(p)

    p = sub.add_parser("pull", help="fetch, verify and keep a version (with a progress bar)")
    p.add_argument("ref", help="acme/classifier:stable, acme/classifier@sha256:... or sha256:...")
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="the registry store to keep the version in (default: swarm-node's, "
                        "$SWARM_DATA_DIR/registry or ~/.local/share/swarm-node/registry)")
    p.add_argument("--no-store", action="store_true", help="verify only; keep nothing")
    p.add_argument("--output", type=Path, metavar="DIR", help="also write its files here")
    _reach(p)

    p = sub.add_parser("key", help="print the publisher's public key (hex), for allowlists")
    _key(p)
    return model  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    """Run a parsed `swarm model ...` command; returns the exit status."""
    from swarm.cli._registry_commands import COMMANDS

    try:
        return asyncio.run(COMMANDS[args.model_command](args))
    except (SwarmError, OSError, ValueError) as exc:  # ValueError: Manifest refusing a flag
        print(f"swarm: {exc}", file=sys.stderr)
        return 1
