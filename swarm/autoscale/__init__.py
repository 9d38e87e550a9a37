"""Autoscaling: every node decides on its own, from its peer view, what to load and unload.

_demand.py  supply and demand per model from the view's adverts (arrival rate, queue
            wait, utilization, throughput, price, holders, candidates): `supply_and_demand`
_decide.py  the pure decision `decide(view, self_state, config, rng) -> Decision`
            (Knative KPA-style desired replicas with a panic mode, Ray Serve-style
            up/down delays, a lottery so that the expected new replicas match the
            deficit, provider bounds) and `AutoscaleConfig`
_local.py   the pure `decide_local(load, trend, config)`: more or fewer instances of one
            model on this node's devices (local replicas sharing the model's queue)

The node's driver (swarm/node/_autoscaler.py) runs `decide` every interval and
carries its actions out through the registry's pull and the zero-downtime load path.
"""

from swarm.autoscale._decide import (
    Action,
    ActionKind,
    AutoscaleConfig,
    Decision,
    Direction,
    SelfState,
    Trend,
    allowed,
    decide,
)
from swarm.autoscale._demand import ModelDemand, replica_load, supply_and_demand
from swarm.autoscale._local import LocalConfig, LocalDecision, LocalLoad, LocalTrend, decide_local

__all__ = [
    "Action",
    "ActionKind",
    "AutoscaleConfig",
    "Decision",
    "Direction",
    "LocalConfig",
    "LocalDecision",
    "LocalLoad",
    "LocalTrend",
    "ModelDemand",
    "SelfState",
    "Trend",
    "allowed",
    "decide",
    "decide_local",
    "replica_load",
    "supply_and_demand",
]
