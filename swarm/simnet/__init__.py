"""Multi-node simulation: many virtual nodes in one process, on virtual time.

_vloop.py  VirtualTimeLoop (asyncio loop whose clock jumps to the next timer),
           run_virtual, VirtualClock (the injected Clock reading it)

The in-memory gossip network the simulated nodes talk over lives in
swarm.protocol.testing (MemoryNetwork).

A whole swarm in one process, in virtual time (`swarm simnet model`):

_model.py  run_model(scenario): providers and clients with the real Membership,
           gossip (topic meshes) and scheduler; simulated batching servers,
           latency, workload and faults; ModelResult, write_model_report

Real processes on this machine (`swarm simnet up`):

_scenario.py   Scenario files (TOML) -> frozen Scenario (its [model] table: ModelSettings);
               send_times / plan_requests (pure, seeded); shipped ones in scenarios/*.toml
_cluster.py    start_cluster: N swarm-node processes, one process group each;
               faults kill / leave / rejoin / set_slowdown (SIGSTOP duty cycle)
_workload.py   Router protocol, RoundRobinRouter (failover), drive: open-loop requests
_report.py     summaries and promise checks (pure), LiveView (rich), write_report
               (report.json, summary.md, latency.png, load.png)
_run.py        run_scenario: cluster + workload + fault timeline + report
_netns.py      --netns: one network namespace per node, bridge, tc netem (root)
_child.py      how a node is run: dies with simnet (PR_SET_PDEATHSIG), then swarm-node
_testing.py    start_swarm(n): real node processes for the test suite
"""

from swarm.simnet._cluster import Cluster, ClusterConfig, NodeHandle, NodeStatus, start_cluster
from swarm.simnet._model import ModelResult, default_model_scenario, run_model, write_model_report
from swarm.simnet._report import render_summary
from swarm.simnet._run import RunOptions, RunResult, run_scenario
from swarm.simnet._scenario import ModelSettings, Scenario, load_scenario, parse_scenario, validate
from swarm.simnet._vloop import (
    DeadlockError,
    VirtualClock,
    VirtualTimeError,
    VirtualTimeLoop,
    run_virtual,
)
from swarm.simnet._workload import RoundRobinRouter, RoutedResult, Router

__all__ = [
    "Cluster",
    "ClusterConfig",
    "DeadlockError",
    "ModelResult",
    "ModelSettings",
    "NodeHandle",
    "NodeStatus",
    "RoundRobinRouter",
    "RoutedResult",
    "Router",
    "RunOptions",
    "RunResult",
    "Scenario",
    "VirtualClock",
    "VirtualTimeError",
    "VirtualTimeLoop",
    "default_model_scenario",
    "load_scenario",
    "parse_scenario",
    "render_summary",
    "run_model",
    "run_scenario",
    "run_virtual",
    "start_cluster",
    "validate",
    "write_model_report",
]
