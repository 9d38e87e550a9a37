"""Multi-node simulation: many virtual nodes in one process, on virtual time.

_vloop.py  VirtualTimeLoop (asyncio loop whose clock jumps to the next timer),
           run_virtual, VirtualClock (the injected Clock reading it)

The in-memory gossip network the simulated nodes talk over lives in
swarm.protocol.testing (MemoryNetwork).

A whole swarm in one process, in virtual time (`swarm simnet virtual`):

_virtual.py           run_virtual_swarm(scenario): providers and clients with the real
                      Membership, gossip (topic meshes) and Router (scheduler, retries,
                      hedging); the workload and fault timeline; VirtualResult,
                      default_virtual_scenario, write_virtual_report
_virtual_provider.py  simulated providers (queues batched by the node's `decide`, simulated
                      compute) and the Wire: the Caller the clients' Routers call through
_latency.py           one-way latency per pair of peers, for requests and gossip
_virtual_stats.py     VirtualStats (gossip, views, load spread, hedges, batch sizes), gini
_virtual_cheater.py   the cheater scenario (`swarm simnet cheater`): providers that return
                      wrong results, the SDK's verification, evidence into a real Ledger,
                      exclusion by `eligible`; run_cheater, CheaterSettings, cheater_table

Real processes on this machine (`swarm simnet up`):

_scenario.py   Scenario files (TOML) -> frozen Scenario (its [virtual] table: VirtualSettings);
               send_times / plan_requests (pure, seeded); shipped ones in scenarios/*.toml
_cluster.py    start_cluster: N swarm-node processes, one process group each;
               faults kill / leave / rejoin / set_slowdown (SIGSTOP duty cycle)
_workload.py   Router protocol, RoundRobinRouter (failover), drive: open-loop requests
_report.py     summaries and promise checks (pure), LiveView (rich), the report folder
               of both commands (report.json, summary.md, latency.png, load.png)
_run.py        run_scenario: cluster + workload + fault timeline + report
_netns.py      --netns: one network namespace per node, bridge, tc netem (root)
_child.py      how a node is run: dies with simnet (PR_SET_PDEATHSIG), then swarm-node
_testing.py    start_swarm(n): real node processes for the test suite
"""

from swarm.simnet._cluster import Cluster, ClusterConfig, NodeHandle, NodeStatus, start_cluster
from swarm.simnet._report import render_summary
from swarm.simnet._run import RunOptions, RunResult, run_scenario
from swarm.simnet._scenario import (
    Scenario,
    VirtualSettings,
    load_scenario,
    parse_scenario,
    validate,
)
from swarm.simnet._virtual import (
    VirtualResult,
    default_virtual_scenario,
    run_virtual_swarm,
    write_virtual_report,
)
from swarm.simnet._virtual_cheater import (
    CheaterResult,
    CheaterSettings,
    cheater_table,
    run_cheater,
)
from swarm.simnet._vloop import (
    DeadlockError,
    VirtualClock,
    VirtualTimeError,
    VirtualTimeLoop,
    run_virtual,
)
from swarm.simnet._workload import RoundRobinRouter, RoutedResult, Router

__all__ = [
    "CheaterResult",
    "CheaterSettings",
    "Cluster",
    "ClusterConfig",
    "DeadlockError",
    "NodeHandle",
    "NodeStatus",
    "RoundRobinRouter",
    "RoutedResult",
    "Router",
    "RunOptions",
    "RunResult",
    "Scenario",
    "VirtualClock",
    "VirtualResult",
    "VirtualSettings",
    "VirtualTimeError",
    "VirtualTimeLoop",
    "cheater_table",
    "default_virtual_scenario",
    "load_scenario",
    "parse_scenario",
    "render_summary",
    "run_cheater",
    "run_scenario",
    "run_virtual",
    "run_virtual_swarm",
    "start_cluster",
    "validate",
    "write_virtual_report",
]
