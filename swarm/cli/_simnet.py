"""`swarm simnet up` and `swarm simnet virtual`: the command line of simnet.

`add_parser(subparsers)` adds the commands; `run(args)` runs one.

Exit codes: 0 every promise kept, 1 a promise broken or the swarm failed,
2 a bad scenario or bad flags, 128+N stopped by signal N (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from swarm._errors import ConfigError, SwarmError

__all__ = ["add_parser", "run"]


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


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `simnet` (with its `up` and `virtual` subcommands) to an argparse subparsers object."""
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
                    help="requests per second (scales ramp and burst shapes; the scenario's "
                         "chat rates stay as they are)")
    up.add_argument("--seed", type=int, metavar="N", help="random seed of the workload")
    up.add_argument("--report", type=Path, metavar="DIR",
                    help="report folder (default: ./reports/simnet-<timestamp>/)")
    up.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace with tc netem links (root)")
    up.add_argument("--mesh", action="store_true",
                    help="with --netns: the nodes join a WireGuard mesh (swarm-node --mesh); "
                         "node-to-node traffic goes over overlay addresses")
    up.add_argument("--no-live", dest="live", action="store_false", default=None,
                    help="print a status line every few seconds instead of the live view")
    up.add_argument("--no-p2p", dest="p2p", action="store_false",
                    help="start the nodes without peer-to-peer discovery")
    up.add_argument("--router", choices=["scheduler", "round-robin"], default="scheduler",
                    help="how the workload picks nodes: the SDK's scheduler (default) or "
                         "round-robin over fixed addresses (a baseline)")
    virtual = sub.add_parser(
        "virtual", help="simulate a large swarm in virtual time, in one process",
        description="Run providers and clients with the real membership, gossip, router "
                    "(scheduler, retries, hedging) and batching policy in virtual time, with "
                    "simulated inference, latency and faults; print a summary and write a "
                    "report. Deterministic for a seed. Flags override the scenario.")
    virtual.add_argument("--scenario", metavar="FILE|NAME",
                         help="scenario file (TOML, with an optional [virtual] table) or a "
                              "built-in name (default: 200 providers serving two models at "
                              "0.1 requests/s each)")
    virtual.add_argument("--nodes", type=_positive_int, metavar="N", help="number of providers")
    virtual.add_argument("--clients", type=_positive_int, metavar="C",
                         help="number of clients (default: 50)")
    virtual.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                         help="virtual seconds of workload (default: 120)")
    virtual.add_argument("--rate", type=_nonnegative_float, metavar="R",
                         help="requests per second (default: 0.1 per provider)")
    virtual.add_argument("--explore", type=_share, metavar="SHARE",
                         help="share of first attempts sent to providers a client has not "
                              "measured lately (default: 0.05; 0: never)")
    virtual.add_argument("--admission-wait", type=_nonnegative_float, metavar="SECONDS",
                         help="providers refuse a Router's attempt past this many seconds of "
                              "queued work (the node's admission_wait; default: 0.05; 0: off)")
    virtual.add_argument("--seed", type=int, metavar="N", help="random seed of the whole run")
    virtual.add_argument("--report", type=Path, metavar="DIR",
                         help="report folder (default: ./reports/simnet-virtual-<timestamp>/)")
    virtual.add_argument("--quiet", action="store_true",
                         help="no progress lines while it runs")
    cheater = sub.add_parser(
        "cheater", help="virtual time: how fast verification excludes providers that cheat",
        description="Providers of which some return wrong results; clients verify a fraction "
                    "of requests with a second (and third) provider and report evidence to a "
                    "ledger, which slashes and excludes the cheaters. Real Router, "
                    "verification, evidence, Ledger and eligible(); simulated compute, "
                    "latency and gossip. Prints one row per verification fraction.")
    cheater.add_argument("--verify-fraction", type=_share, action="append", metavar="SHARE",
                         help="share of requests verified (repeat for several rows; "
                              "default: 0.01, 0.02 and 0.05)")
    cheater.add_argument("--providers", type=_positive_int, default=20, metavar="N")
    cheater.add_argument("--cheaters", type=_positive_int, default=2, metavar="N")
    cheater.add_argument("--cheat-rate", type=_share, default=0.1, metavar="SHARE",
                         help="share of its answers a cheater gets wrong (default: 0.1)")
    cheater.add_argument("--rate", type=_positive_float, default=20.0, metavar="R",
                         help="requests per second, all clients together (default: 20)")
    cheater.add_argument("--max-duration", type=_positive_float, default=3600.0,
                         metavar="SECONDS", help="virtual seconds at most per run; a run "
                         "ends 60 s after its last cheater is excluded (default: 3600)")
    cheater.add_argument("--seeds", type=_positive_int, default=3, metavar="N",
                         help="runs per fraction, seeds 0..N-1 (default: 3)")
    cheater.add_argument("--json", type=Path, metavar="FILE", help="also write every run's row")
    return simnet


def _run_cheater(args: argparse.Namespace) -> int:
    import json

    from swarm.simnet import CheaterSettings, cheater_table, run_cheater

    results = []
    for fraction in args.verify_fraction or [0.01, 0.02, 0.05]:
        for seed in range(args.seeds):
            settings = CheaterSettings(
                providers=args.providers, cheaters=args.cheaters, cheat_rate=args.cheat_rate,
                verify_fraction=fraction, rate=args.rate, duration=args.max_duration, seed=seed)
            result = run_cheater(settings)
            print(f"simnet cheater: fraction {fraction:g} seed {seed}: {result.row()}",
                  file=sys.stderr, flush=True)
            results.append(result)
    print(cheater_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.row() for r in results], indent=1) + "\n")
    return 0


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
    from swarm.simnet import RunOptions, run_scenario

    stop = asyncio.Event()
    started = asyncio.Event()
    caught: list[int] = []
    main = asyncio.current_task()
    assert main is not None
    _interrupt_handlers(stop, started, main, caught)
    report = args.report or Path("reports") / f"simnet-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(report_dir=report, live=args.live, netns=args.netns, p2p=args.p2p,
                         router=args.router, mesh=args.mesh)
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


def _overridden(original: Any, changed: Any) -> Any:
    """`changed` described by what the flags changed: the file's prose describes `original`
    (its "4 nodes serving ..." is wrong for a run with --nodes 2)."""
    changes = [f"{label} {new:g} (not {old:g})" for label, old, new in (
        ("nodes", original.node_count, changed.node_count),
        ("duration s", original.duration, changed.duration),
        ("rate req/s", original.workload.rate, changed.workload.rate),
        ("seed", original.seed, changed.seed)) if old != new]
    if not changes:
        return changed
    return dataclasses.replace(changed, description=f"{original.source or original.name} "
                                                    f"with {', '.join(changes)}")


def _up_scenario(args: argparse.Namespace) -> Any:
    from swarm.simnet import load_scenario

    original = load_scenario(args.scenario)
    return _overridden(original, original.with_overrides(
        nodes=args.nodes, duration=args.duration, rate=args.rate, seed=args.seed))


def _virtual_scenario(args: argparse.Namespace) -> Any:
    from swarm.simnet import default_virtual_scenario, load_scenario, validate

    if args.scenario is None:
        scenario = default_virtual_scenario(args.nodes or 200).with_overrides(
            duration=args.duration, rate=args.rate, seed=args.seed)
    else:
        original = load_scenario(args.scenario)
        scenario = _overridden(original, original.with_overrides(
            nodes=args.nodes, duration=args.duration, rate=args.rate, seed=args.seed))
    settings = {k: v for k, v in (("clients", args.clients), ("explore", args.explore),
                                  ("admission_wait", args.admission_wait)) if v is not None}
    if settings:
        scenario = dataclasses.replace(
            scenario, virtual=dataclasses.replace(scenario.virtual, **settings))
        validate(scenario, where=f"{scenario.source} (with command-line overrides)")
    return scenario


def _run_virtual(args: argparse.Namespace, scenario: Any) -> int:
    from rich.console import Console

    from swarm.simnet import render_summary, run_virtual_swarm, write_virtual_report

    def progress(line: str) -> None:
        print(f"simnet virtual: {line}", file=sys.stderr, flush=True)

    s = scenario
    # "simnet virtual", or "simnet virtual churn" for a named scenario: never a doubled prefix.
    title = "simnet virtual" + ("" if s.name == "virtual" else f" {s.name}")
    print(f"{title}: {s.node_count} providers, {s.virtual.clients} clients, "
          f"{s.duration:g} virtual s of workload at {s.workload.rate:g} requests/s, "
          f"seed {s.seed}", file=sys.stderr, flush=True)
    try:
        result = run_virtual_swarm(s, progress=None if args.quiet else progress)
    except KeyboardInterrupt:
        print("\nsimnet virtual: interrupted", file=sys.stderr)
        return 130
    console = Console()
    summary = result.summary
    if len(summary.node_share) > 10:  # thousands of providers: the busiest few, then spread
        busiest = sorted(summary.node_share.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        summary = dataclasses.replace(summary, node_share=dict(sorted(busiest)))
    console.print(render_summary(summary, title=title, faults=result.faults))
    console.print(_virtual_table(result.stats, busiest=summary is not result.summary))
    report = args.report or Path("reports") / f"simnet-virtual-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_virtual_report(report, result, title=title)
    console.print(f"report: {paths[0].parent}/ ({', '.join(p.name for p in paths)})",
                  highlight=False)
    return 0 if result.summary.kept else 1


def _virtual_table(st: Any, *, busiest: bool) -> Any:
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    load = st.load
    if busiest:
        table.add_row("", "(per node: the 10 busiest providers; all of them in the report)")
    table.add_row("load spread", f"Gini {load.gini:.2f}, busiest {load.max_over_mean:.1f}x the "
                                 f"mean, {load.used}/{st.providers} providers used; fastest "
                                 f"quarter {load.fastest_quarter:.0%}, slowest "
                                 f"{load.slowest_quarter:.0%}")
    table.add_row("views", ("converged " + (f"{st.convergence_s:.2f} s after the last join"
                                           if st.convergence_s is not None else "never"))
                  + f"; lowest completeness {st.min_view_completeness:.1%}, "
                    f"most stale entries {st.max_stale_entries}")
    table.add_row("routing", f"{st.hedges} hedges (a second copy of a slow request), "
                             f"{st.explorations} explorations (a first attempt to a provider "
                             f"not measured lately), {st.refusals} admission refusals")
    table.add_row("batching", f"{sum(st.batch_sizes.values())} batches, "
                              f"{st.mean_batch:.2f} items per batch")
    table.add_row("gossip", f"{st.adverts} adverts; per provider {st.provider_msgs_per_s:.1f} "
                            f"msgs/s {st.provider_bytes_per_s / 1000:.1f} kB/s; per client "
                            f"{st.client_msgs_per_s:.0f} msgs/s "
                            f"{st.client_bytes_per_s / 1000:.0f} kB/s (sent + received)")
    table.add_row("simulation", f"{st.virtual_s:.0f} virtual s in {st.wall_s:.1f} wall s "
                                f"({st.cpu_s:.1f} CPU s), {st.events:,} events, "
                                f"{st.events_per_wall_s:,.0f} events/wall s")
    return table


def run(args: argparse.Namespace) -> int:
    """Run `swarm simnet <command>` for parsed arguments; returns the exit code."""
    if args.simnet_command == "cheater":
        try:
            return _run_cheater(args)
        except ValueError as exc:
            print(f"swarm simnet: {exc}", file=sys.stderr)
            return 2
    if args.simnet_command not in ("up", "virtual"):
        raise ConfigError(f"unknown simnet command {args.simnet_command!r}")
    try:
        scenario = _virtual_scenario(args) if args.simnet_command == "virtual" else _up_scenario(args)
    except ConfigError as exc:
        print(f"swarm simnet: {exc}", file=sys.stderr)
        return 2
    if args.simnet_command == "virtual":
        return _run_virtual(args, scenario)
    if any(f.fraction is not None for f in scenario.faults):
        print("swarm simnet: faults with a `fraction` of the nodes are for `swarm simnet "
              "virtual`; `up` takes a node index", file=sys.stderr)
        return 2
    if getattr(args, "mesh", False) and not args.netns:
        print("swarm simnet: --mesh needs --netns (one network namespace per node)",
              file=sys.stderr)
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
