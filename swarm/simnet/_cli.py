"""`swarm simnet up`: the command line of simnet.

The `swarm` CLI hooks it in with `add_simnet_parser(subparsers)` and dispatches
`args.command == "simnet"` to `run_simnet(args)`. Until then it also runs as
`python -m swarm.simnet._cli up ...`.

Exit codes: 0 every promise kept, 1 a promise broken or the swarm failed,
2 a bad scenario or bad flags, 128+N stopped by signal N (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from swarm._errors import ConfigError, SwarmError

__all__ = ["add_simnet_parser", "main", "run_simnet"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_simnet_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `simnet` (with its `up` subcommand) to an argparse subparsers object."""
    simnet: argparse.ArgumentParser = subparsers.add_parser(
        "simnet", help="run a whole swarm on this machine: workload, faults, report",
        description="Simulate a swarm with real swarm-node processes on this machine.")
    sub = simnet.add_subparsers(dest="simnet_command", required=True)
    up = sub.add_parser(
        "up", help="start a local swarm, drive a workload through it and report",
        description="Start N swarm-node processes on loopback, drive the scenario's workload "
                    "and faults through the SDK, show a live view and write a report. "
                    "Flags override the scenario.")
    up.add_argument("--scenario", metavar="FILE|NAME", default="default",
                    help="scenario file (TOML) or a built-in name: default, failover, "
                         "heterogeneous, churn, rollout (default: default)")
    up.add_argument("--nodes", type=_positive_int, metavar="N", help="number of nodes")
    up.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                    help="seconds of workload")
    up.add_argument("--rate", type=_nonnegative_float, metavar="R",
                    help="requests per second (scales ramp and burst shapes)")
    up.add_argument("--seed", type=int, metavar="N", help="random seed of the workload")
    up.add_argument("--report", type=Path, metavar="DIR",
                    help="report folder (default: ./reports/simnet-<timestamp>/)")
    up.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace with tc netem links (root)")
    up.add_argument("--no-live", dest="live", action="store_false", default=None,
                    help="print a status line every few seconds instead of the live view")
    up.add_argument("--no-p2p", dest="p2p", action="store_false",
                    help="start the nodes without peer-to-peer discovery")
    up.add_argument("--router", choices=["scheduler", "round-robin"], default="scheduler",
                    help="how the workload picks nodes: the SDK's scheduler (default) or "
                         "round-robin over fixed addresses (a baseline)")
    return simnet


def _interrupt_handlers(stop: asyncio.Event, started: asyncio.Event, main: asyncio.Task[Any],
                        caught: list[int]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        caught.append(signum)
        if len(caught) == 1 and started.is_set():
            print(f"\nsimnet: {signal.Signals(signum).name}: stopping the swarm and writing "
                  "the report (again to stop at once)", file=sys.stderr, flush=True)
            stop.set()
        else:
            # Still starting, or asked twice: cancel. Teardown stops every node (SIGTERM,
            # and SIGKILL for any left when cancelled again).
            print(f"\nsimnet: {signal.Signals(signum).name}: stopping the swarm",
                  file=sys.stderr, flush=True)
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


async def _up(args: argparse.Namespace, scenario: Any) -> int:
    from swarm.simnet._run import RunOptions, run_scenario

    stop = asyncio.Event()
    started = asyncio.Event()
    caught: list[int] = []
    main = asyncio.current_task()
    assert main is not None
    _interrupt_handlers(stop, started, main, caught)
    report = args.report or Path("reports") / f"simnet-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(report_dir=report, live=args.live, netns=args.netns, p2p=args.p2p,
                         router=args.router)
    try:
        result = await run_scenario(scenario, options, stop=stop, started=started)
    except asyncio.CancelledError:
        if caught:
            return 128 + caught[0]
        raise
    finally:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if caught:
        return 128 + caught[0]
    return 0 if result.summary.kept else 1


def run_simnet(args: argparse.Namespace) -> int:
    """Run `swarm simnet <command>` for parsed arguments; returns the exit code."""
    from swarm.simnet._scenario import load_scenario

    if args.simnet_command != "up":
        raise SwarmError(f"unknown simnet command {args.simnet_command!r}")
    try:
        scenario = load_scenario(args.scenario).with_overrides(
            nodes=args.nodes, duration=args.duration, rate=args.rate, seed=args.seed)
    except ConfigError as exc:
        print(f"swarm simnet: {exc}", file=sys.stderr)
        return 2
    if args.netns and os.geteuid() != 0:
        print("swarm simnet: --netns creates network namespaces and needs root "
              "(run it with sudo, or leave out --netns)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_up(args, scenario))
    except SwarmError as exc:
        print(f"swarm simnet: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm")
    add_simnet_parser(parser.add_subparsers(dest="command", required=True))
    return run_simnet(parser.parse_args(["simnet", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
