"""The node's side of autoscaling: its demand signal, and the driver that acts on decide().

`DemandMeter` turns a served model's cumulative statistics into the demand signal
its advert carries (items/s arrived, mean queue wait, utilization), over windows
of at least `window` seconds on the injected clock.

`Autoscaler.run()` calls `swarm.autoscale.decide` every `config.interval` seconds
with the node's view and state, and carries out what it returns through the
`AutoscaleHost` (the node): a load pulls the version with the registry and loads
it through the zero-downtime rollout path; an unload first stops advertising the
version, lets clients' views catch up, then withdraws, drains and unloads it. A
failed load puts the version in backoff (doubling) and is reported in `events`
(the status RPC, `swarm-node status`) and the metrics, as every decision is.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm._errors import ModelLoadError, SwarmError, UnavailableError
from swarm._types import Digest, PeerId
from swarm.autoscale import (
    Action,
    ActionKind,
    AutoscaleConfig,
    Decision,
    ModelDemand,
    SelfState,
    Trend,
    allowed,
    decide,
)
from swarm.protocol import Advert, PeerView

if TYPE_CHECKING:  # not at run time: the simulator runs the driver without torch
    from swarm.node._models import ModelStats, ServedModel
    from swarm.node._node import Node

__all__ = ["AutoscaleHost", "Autoscaler", "Backoff", "Counters", "DemandMeter", "Measured",
           "NodeHost", "ScalingEvent", "every"]

log = logging.getLogger("swarm.autoscale")


@dataclass(frozen=True, slots=True)
class Measured:
    """A model's demand signal over the last window."""

    arrival_rate: float = 0.0
    queue_wait: float = 0.0
    utilization: float = 0.0


@dataclass(frozen=True, slots=True)
class _Sample:
    # The statistics sampled: a version loaded again (a rollback) has new ones, from zero.
    stats: ModelStats
    at: float
    arrived: float
    queued: int
    queue_ns: int
    busy_ns: int
    instances: int


def _sample(served: ServedModel, now: float) -> _Sample:
    stats = served.stats
    busy = sum(b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
               for b in stats.batches.values())
    depth = served.batcher.queue_depth
    # Items that arrived: executed, failed (one item each, near enough), and still queued.
    arrived = stats.inference_count + stats.fail.count + depth
    instances = len(served.batcher.instances)  # local replicas: the busy share is per instance
    return _Sample(stats, now, arrived, stats.queue.count, stats.queue.ns, busy, instances)


class DemandMeter:
    """Per-model demand signal from cumulative statistics (served models as the node has them)."""

    def __init__(self, *, window: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.window = window
        self._clock = clock
        self._last: dict[Digest, _Sample] = {}
        self._measured: dict[Digest, Measured] = {}

    def measure(self, served: Iterable[ServedModel]) -> Mapping[Digest, Measured]:
        """The signal of each served model; recomputed once a window has passed."""
        now = self._clock.monotonic()
        seen = set()
        for model in served:
            digest = model.digest
            seen.add(digest)
            last = self._last.get(digest)
            if last is not None and last.stats is not model.stats:
                # Loaded again since: the old counters are no baseline for the new ones.
                last = None
                self._measured.pop(digest, None)
            if last is not None and now - last.at < self.window:
                continue
            current = _sample(model, now)
            self._last[digest] = current
            if last is None:
                continue
            dt = now - last.at
            waits = current.queued - last.queued
            self._measured[digest] = Measured(
                arrival_rate=max(0.0, current.arrived - last.arrived) / dt,
                queue_wait=(current.queue_ns - last.queue_ns) / 1e9 / waits if waits > 0 else 0.0,
                utilization=min(1.0, max(0.0, (current.busy_ns - last.busy_ns) / 1e9 / dt
                                         / max(1, current.instances))))
        for gone in set(self._last) - seen:
            self._last.pop(gone)
            self._measured.pop(gone, None)
        return dict(self._measured)


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """One decision and what became of it."""

    at: float  # unix seconds
    action: ActionKind
    digest: Digest
    name: str
    reason: str
    # "started", "done", "failed".
    outcome: str
    error: str = ""


class AutoscaleHost(Protocol):
    """What the driver needs of the node."""

    def view(self) -> PeerView: ...

    def own_advert(self) -> Advert | None: ...

    def memory_used(self) -> int: ...

    def counts(self) -> Callable[[PeerId], bool] | None:
        """Whose adverts count for demand (staking: eligible on the node's ledger)."""
        ...

    async def load(self, digest: Digest, name: str) -> None:
        """Pull the version and start serving it (raises SwarmError/OSError on failure)."""
        ...

    async def unload(self, digest: Digest, name: str) -> None:
        """Stop advertising the version, then withdraw, drain and unload it."""
        ...


@dataclass
class Backoff:
    """No other try before `until` (monotonic); `delay` doubles with each failure."""

    until: float
    delay: float

    @staticmethod
    def after(old: Backoff | None, now: float, initial: float, most: float) -> Backoff:
        """The backoff after one more failure: `initial`, then doubling up to `most`."""
        delay = min(old.delay * 2, most) if old is not None else initial
        return Backoff(now + delay, delay)


@dataclass
class Counters:
    """Actions by (action, outcome): what the metrics export."""

    by: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, action: str, outcome: str) -> None:
        self.by[(action, outcome)] = self.by.get((action, outcome), 0) + 1


async def every(clock: Clock, interval: float, step: Callable[[], Awaitable[object]]) -> None:
    """Sleep `interval`, then `await step()`, until cancelled (a driver's loop)."""
    while True:
        await clock.sleep(interval)
        await step()


class Autoscaler:
    """Runs decide() every interval for one node and carries out its actions."""

    def __init__(self, host: AutoscaleHost, config: AutoscaleConfig, *,
                 clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None) -> None:
        self._host = host
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._trends: Mapping[Digest, Trend] = {}
        self._backoff: dict[Digest, Backoff] = {}
        self.managed: set[Digest] = set()
        self.events: collections.deque[ScalingEvent] = collections.deque(maxlen=config.history)
        self.demand: tuple[ModelDemand, ...] = ()
        self.counters = Counters()
        self.decisions = 0

    async def run(self) -> None:
        """Decide and act every interval until cancelled."""
        await every(self._clock, self.config.interval, self.step)

    def state(self) -> SelfState:
        now = self._clock.monotonic()
        return SelfState(
            now=now, advert=self._host.own_advert(), managed=frozenset(self.managed),
            memory_used=self._host.memory_used(),
            backoff_until={d: b.until for d, b in self._backoff.items() if b.until > now},
            trends=self._trends, counts=self._host.counts())

    async def step(self) -> Decision:
        """One decision, and its action carried out (returns once it is done)."""
        decision = decide(self._host.view(), self.state(), self.config, self._rng)
        self._trends = decision.trends
        self.demand = decision.demand
        self.decisions += 1
        for action in decision.actions:
            await self._act(action)
        return decision

    def _event(self, action: Action, outcome: str, error: str = "") -> None:
        self.events.append(ScalingEvent(self._clock.time(), action.kind, action.digest, action.name,
                                        action.reason, outcome, error))
        self.counters.add(action.kind.value, outcome)

    async def _act(self, action: Action) -> None:
        extra = {"action": action.kind.value, "model": action.name,
                 "digest": action.digest.short, "reason": action.reason}
        log.info("autoscale decision", extra=extra)
        self._event(action, "started")
        try:
            if action.kind is ActionKind.LOAD:
                await self._host.load(action.digest, action.name)
                self.managed.add(action.digest)
                self._backoff.pop(action.digest, None)
            else:
                await self._host.unload(action.digest, action.name)
                self.managed.discard(action.digest)
        except (SwarmError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if action.kind is ActionKind.LOAD:
                backoff = self._backoff[action.digest] = Backoff.after(
                    self._backoff.get(action.digest), self._clock.monotonic(),
                    self.config.backoff_initial, self.config.backoff_max)
                error += f" (not tried again for {backoff.delay:g}s)"
            log.warning("autoscale action failed", extra={**extra, "error": error})
            self._event(action, "failed", error)
            return
        log.info("autoscale action done", extra=extra)
        self._event(action, "done")


class NodeHost:
    """The node as an AutoscaleHost: the registry's pull, the rollout's load, a drained unload."""

    def __init__(self, node: Node, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._node = node
        self._clock = clock

    def view(self) -> PeerView:
        return self._node._peer_view()

    def own_advert(self) -> Advert | None:
        node = self._node
        return node.advert() if node.identity is not None else None

    def memory_used(self) -> int:
        return sum(self._node.model_bytes(s.digest) for s in self._node.table)

    def counts(self) -> Callable[[PeerId], bool] | None:
        return self._node.stake_rule()

    async def load(self, digest: Digest, name: str) -> None:
        node = self._node
        if node.registry is None or node.rollout is None:
            raise UnavailableError("autoscaling needs the registry (peer-to-peer on)")
        manifest = await node.registry.ensure(digest)  # pulled from a holder, verified
        # The advert that made this model hot is hostile input: check what it named
        # against the signed manifest before loading anything.
        config = node.config.autoscale
        if manifest.name != name or not allowed(manifest.name, config.allowed):
            raise ModelLoadError(f"version {digest.short} is {manifest.name!r}, not {name!r} "
                                 "(or not allowed here)")
        size = sum(f.size for f in manifest.files)
        if config.memory_budget and self.memory_used() + size > config.memory_budget:
            raise ModelLoadError(f"{name} {digest.short} takes {size} bytes: over the memory "
                                 f"budget ({config.memory_budget}, {self.memory_used()} used)")
        if node.deployment().current(name) is not None:
            raise ModelLoadError(f"{name} is served here already (another version)")
        await node.rollout.rollout(name, digest)

    async def unload(self, digest: Digest, name: str) -> None:
        node = self._node
        node.releasing.add(digest)  # out of the advert first: clients stop choosing it
        try:
            if node.membership is not None:
                node.membership.notify_change()
            linger = node.rollout.config.linger if node.rollout is not None else 0.0
            await self._clock.sleep(linger)
            withdrawn = node.deployment().withdraw(name, digest)
            if withdrawn is None:
                return
            try:
                await wait_within(self._clock, withdrawn.drain(), node.config.drain_timeout)
            finally:
                await withdrawn.close()
        finally:
            node.releasing.discard(digest)
