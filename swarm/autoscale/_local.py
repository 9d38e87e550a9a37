"""`decide_local(load, trend, config) -> LocalDecision`: instances of one model on this node.

A node with several accelerators may run one instance of a model per device, all
serving the model's one queue (swarm.node's Batcher: a batch goes to whichever instance
is free). Whether it should is a local question, decided from the model's own queue:

- Up: the queue's mean wait stays above `target_queue_wait` while the instances are
  busy (`utilization >= busy_utilization`) for `up_delay` seconds, and a device is free:
  one more instance. A wait with idle instances is batching, not a shortage.
- Down: with more than one instance, the instances' utilization would stay below
  `busy_utilization` on one instance fewer, with the wait within the target, for
  `down_delay` seconds (the longer cool-down): one instance fewer. Never below one.
- One step per call; the delay starts afresh after each step, so each instance's effect
  is measured before the next.

Pure: time comes in `LocalLoad.now`; what must be remembered between calls (since
when the model is hot or cold) goes out in `LocalDecision.trend` and comes back in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarm._errors import ConfigError

__all__ = ["LocalConfig", "LocalDecision", "LocalLoad", "LocalTrend", "decide_local"]


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """Local replicas of a node (the `[replicas]` table of the node config; the node's
    driver uses `mode`, `interval`, the backoff and `history`, the rule the rest)."""

    # "auto": instances as load requires, up to one per device of the node's `devices`
    # (which on a node with one device, a CPU-only one say, is one: nothing changes);
    # "off": one instance per model, whatever the devices.
    mode: str = "auto"
    # Seconds between decisions (each measures the load over the last interval).
    interval: float = 2.0
    # Mean queue wait (seconds) above which the model wants another local instance.
    target_queue_wait: float = 0.05
    # Utilization (busy share of the instances together, 0..1) at which they count as busy.
    busy_utilization: float = 0.8
    # Seconds the model must stay hot before an instance is added, cold before one goes.
    up_delay: float = 10.0
    down_delay: float = 60.0
    # After a failed instance load, no other is tried for this long, doubling to backoff_max.
    backoff_initial: float = 30.0
    backoff_max: float = 600.0
    # Decisions kept for `swarm-node status` and the status RPC.
    history: int = 32

    def __post_init__(self) -> None:
        if not (0 <= self.target_queue_wait < math.inf and 0 < self.busy_utilization <= 1
                and 0 <= self.up_delay < math.inf and 0 <= self.down_delay < math.inf):
            raise ConfigError(
                "need target_queue_wait and the delays finite and >= 0, busy_utilization in "
                f"(0, 1]: got {self.target_queue_wait}, {self.up_delay}, {self.down_delay}, "
                f"{self.busy_utilization}")
        if self.mode not in ("auto", "off"):
            raise ConfigError(f"replicas mode must be 'auto' or 'off', not {self.mode!r}")
        if not 0 < self.interval < math.inf:
            raise ConfigError(f"replicas interval must be finite and > 0, not {self.interval}")
        if not 0 < self.backoff_initial <= self.backoff_max < math.inf:
            raise ConfigError("replicas need 0 < backoff_initial <= backoff_max (finite): got "
                              f"{self.backoff_initial}, {self.backoff_max}")
        if not 1 <= self.history <= 10_000:
            raise ConfigError(f"replicas history must be in 1..10000, not {self.history}")


@dataclass(frozen=True, slots=True)
class LocalLoad:
    """One model on this node, measured over the last window."""

    now: float
    # Instances serving the model's queue now, and devices that could hold one each.
    instances: int
    devices: int
    # Mean seconds a request waited in the queue.
    queue_wait: float
    # Share of the window the instances executed, together (1: all busy all the time).
    utilization: float


@dataclass(frozen=True, slots=True)
class LocalTrend:
    """Since when the model has wanted one instance more (+1) or fewer (-1)."""

    direction: int = 0
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class LocalDecision:
    # +1: add an instance on a free device; -1: release one; 0: keep them.
    step: int
    trend: LocalTrend
    why: str


def decide_local(load: LocalLoad, trend: LocalTrend, config: LocalConfig) -> LocalDecision:
    """The step for one model's local instances (module docstring)."""
    n = max(1, load.instances)
    busy = load.utilization >= config.busy_utilization
    if load.queue_wait > config.target_queue_wait and busy and n < load.devices:
        wanted, delay = 1, config.up_delay
        why = (f"queue wait {load.queue_wait:.3g} s > {config.target_queue_wait:g} s with "
               f"{n} instance(s) {load.utilization:.0%} busy")
    elif (n > 1 and load.queue_wait <= config.target_queue_wait
          and load.utilization * n / (n - 1) < config.busy_utilization):
        wanted, delay = -1, config.down_delay
        why = (f"{n} instance(s) {load.utilization:.0%} busy: {n - 1} would do")
    else:
        return LocalDecision(0, LocalTrend(), "steady")
    if trend.direction != wanted:
        return LocalDecision(0, LocalTrend(wanted, load.now), why + " (delay starts)")
    if load.now - trend.since < delay:
        return LocalDecision(0, trend, why + f" for {load.now - trend.since:.0f}/{delay:g} s")
    return LocalDecision(wanted, LocalTrend(), why)
