"""The `swarm` command: one parser, each subcommand's module imported only to run it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from swarm import __version__

__all__ = ["main"]

# Subcommand -> the module that defines and runs it (`add_parser(s)` and `run`).
_MODULES = {
    "infer": "swarm.cli._client",
    "served": "swarm.cli._client",
    "models": "swarm.cli._client",  # the old name of `served`
    "peers": "swarm.cli._client",
    "model": "swarm.cli._registry",
    "simnet": "swarm.cli._simnet",
    "chat": "swarm.cli._chat",
    "stake": "swarm.cli._stake",
    "ledger": "swarm.cli._stake",
}


def _parser() -> argparse.ArgumentParser:
    from swarm.cli import _chat, _client, _registry, _simnet, _stake

    parser = argparse.ArgumentParser(prog="swarm", description="Use a Swarm inference network.")
    parser.add_argument("--version", action="version", version=f"swarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _client.add_parsers(sub)
    _chat.add_parser(sub)
    _simnet.add_parser(sub)
    _registry.add_parser(sub)
    _stake.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from swarm._logging import configure_logging

    configure_logging(os.environ.get("SWARM_LOG_LEVEL", "warning"))
    module = importlib.import_module(_MODULES[args.command])
    status: int = module.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
