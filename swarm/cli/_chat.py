"""`swarm chat MODEL`: an interactive terminal chat with a generative model.

Each line typed is a user message; the reply streams as the model writes it, and the
conversation so far goes with every message. `/reset` starts over; an empty line,
`/quit` or end of input (Ctrl-D) ends it. With `--message TEXT` it answers once and
exits (scripts, tests). Without --node or --bootstrap it talks to 127.0.0.1:7070.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client (grpc, numpy, libp2p) is imported only to run: --help stays light
    from swarm.client import AsyncClient

__all__ = ["add_parser", "run"]

DEFAULT_NODE = "127.0.0.1:7070"


def add_parser(sub: Any) -> None:
    chat = sub.add_parser("chat", help="chat with a generative model (e.g. builtin/smollm2)")
    chat.add_argument("model", help="model name, e.g. builtin/smollm2")
    chat.add_argument("--node", help=f"a node's address HOST:PORT (default {DEFAULT_NODE} "
                                     "unless --bootstrap)")
    chat.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                      help="join the swarm through this peer and let the scheduler route")
    chat.add_argument("--system", help="a system message to start the conversation with")
    chat.add_argument("--message", help="send this one message, print the reply, exit")
    chat.add_argument("--max-tokens", type=int, default=256, help="tokens per reply")
    chat.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    chat.add_argument("--timeout", type=float, default=120.0, help="seconds per reply")


async def _reply(client: AsyncClient, args: argparse.Namespace,
                 messages: list[dict[str, str]]) -> str:
    parts = []
    async for text in client.chat(args.model, messages, max_tokens=args.max_tokens,
                                  temperature=args.temperature, timeout=args.timeout):
        parts.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


async def _chat(args: argparse.Namespace) -> int:
    from swarm._errors import ConfigError
    from swarm.client import AsyncClient

    if args.node and args.bootstrap:
        raise ConfigError("give --node HOST:PORT or --bootstrap MULTIADDR, not both")
    client = (AsyncClient(bootstrap=args.bootstrap, timeout=args.timeout) if args.bootstrap
              else AsyncClient(args.node or DEFAULT_NODE, timeout=args.timeout))
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    async with client:
        if args.message is not None:
            await _reply(client, args, [*messages, {"role": "user", "content": args.message}])
            return 0
        loop = asyncio.get_running_loop()
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = await loop.run_in_executor(None, sys.stdin.readline)
            text = line.strip()
            if not text or text == "/quit":
                return 0
            if text == "/reset":
                messages = list(start)
                continue
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": await _reply(client, args, messages)})


def run(args: argparse.Namespace) -> int:
    from swarm._errors import SwarmError

    try:
        return asyncio.run(_chat(args))
    except (SwarmError, OSError) as exc:
        print(f"swarm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
