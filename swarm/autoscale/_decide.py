"""`decide(view, self_state, config, rng) -> Decision`: what this node loads or unloads.

Every node runs it on its own view; no coordinator. The rules:

- Demand (swarm.autoscale._demand): a model's load is the sum of its providers'
  replica loads (utilization, arrivals over throughput, and a backlog beyond
  `target_queue_wait`); it wants `desired = ceil(load / target_load)` replicas
  (Knative's KPA: observed load over the per-replica target), at most
  `max_scale_up_rate` x the replicas it has, never fewer than `min_replicas`.
- Up: a model that wants more replicas than it has for `up_delay` seconds (Ray
  Serve's upscale_delay_s) is a *hot* model; when its load per replica reaches
  `panic_factor` x the target, `panic_delay` is the delay instead (KPA's panic
  mode: a burst is answered within seconds). Each node that could serve it enters
  a lottery: it loads with probability deficit / candidates, so the expected
  number of new replicas in the swarm is the deficit, and idle nodes do not all
  load the same model at once. A node's next lottery for the model waits `settle`
  seconds more (what a load takes plus an advert interval: the replicas a round
  adds must show up in adverts before the next round counts the deficit again),
  and the delay restarts when more replicas show up (not when one is missing from
  the view for a moment: that leaves more work for the others).
- Bounds: only models in `allowed` (names or `namespace/` prefixes; empty: any),
  whose providers' median price is at least `min_price`, with a registry holder to
  pull from, that fit `memory_budget` with what this node already serves (a model
  of unknown size does not, when there is a budget), up to
  `max_models`; a model whose load failed waits for its backoff. Among several hot
  models the one that pays best (median price x unserved items/s) is tried first.
- Down: a model this node loaded itself (never one the operator told it to serve)
  whose desired replicas stay below its replicas for `down_delay` seconds (the
  longer cool-down: Ray Serve's downscale_delay_s) releases the excess: the
  providers whose adverts say their autoscaler loaded it (`ModelOffer.autoscaled`)
  are ranked by a hash of (peer, model), the same ranking on every node, and those
  ranked within the excess unload, so `min_replicas` is kept when views agree.
  Never while the model is in panic. A release round keeps the most replicas
  wanted at any time in its cool-down (Knative's scale-down window) and at least
  1/`max_scale_down_rate` of the replicas it began with, so a dip in the
  measurements while replicas leave (their traffic moves, measured a window later)
  does not release more. The cool-down does not restart as replicas leave (only
  when more come): a round releases its excess at once; then the next round
  measures over a cool-down of its own.
- At most one action per call; none while a load or unload is in progress.

Pure: time comes in `SelfState.now`, randomness from `rng`, and what must be
remembered between calls (since when a model is hot or cold) goes out in
`Decision.trends` and comes back in the next `SelfState`.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from swarm._errors import ConfigError
from swarm._types import Digest, PeerId
from swarm.autoscale._demand import ModelDemand, supply_and_demand
from swarm.protocol import Advert, PeerView

__all__ = ["Action", "ActionKind", "AutoscaleConfig", "Decision", "Direction", "SelfState", "Trend",
           "allowed", "decide"]


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """A provider's autoscaling policy and bounds (the `[autoscale]` table of the node config)."""

    # Run the autoscaler (opt-in: `swarm-node run --autoscale`, or enabled = true).
    enabled: bool = False
    # Seconds between decisions.
    interval: float = 5.0
    # Load per replica to aim at (1.0 = every replica busy all the time).
    target_load: float = 0.7
    # Seconds a model must want more replicas before a node volunteers one.
    up_delay: float = 30.0
    # Load per replica, as a multiple of target_load, from which panic_delay applies.
    panic_factor: float = 2.0
    # The up-scale delay in panic (a burst).
    panic_delay: float = 6.0
    # Seconds between two lotteries of one node for one model: at least what a load takes
    # plus an advert interval, so that the replicas one round adds are seen before the next.
    settle: float = 60.0
    # Seconds a model must want fewer replicas before a node releases its replica.
    down_delay: float = 300.0
    # Replicas of a model the swarm keeps, however quiet it is.
    min_replicas: int = 1
    # Most models this node serves (its own --serve models included).
    max_models: int = 4
    # Bytes of model files this node holds loaded (RAM or VRAM); 0 = no bound.
    memory_budget: int = 0
    # Models this node may load: names ("acme/chat") or namespaces ("acme/"); empty: any.
    allowed: tuple[str, ...] = ()
    # Least median price per request (micro-units) a model's providers must ask.
    min_price: int = 0
    # Largest load one provider's advert may add to a model (hostile adverts).
    max_replica_load: float = 4.0
    # Mean queue wait (s) a replica should not exceed: beyond it the backlog counts as load.
    target_queue_wait: float = 0.5
    # At most this many times the current replicas are wanted at once (Knative's
    # max-scale-up-rate): a backlog says "more", not how many more.
    max_scale_up_rate: float = 4.0
    # One release round keeps at least 1/max_scale_down_rate of the replicas it began with
    # (Knative's max-scale-down-rate): measurements lag while replicas leave.
    max_scale_down_rate: float = 2.0
    # After a failed load, the model is not tried again for this long, doubling to backoff_max.
    backoff_initial: float = 30.0
    backoff_max: float = 600.0
    # Decisions kept for `swarm-node status` and the status RPC.
    history: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.interval < math.inf:
            raise ConfigError(f"autoscale.interval must be > 0, not {self.interval}")
        if not 0 < self.target_load < math.inf:
            raise ConfigError(f"autoscale.target_load must be > 0, not {self.target_load}")
        if not self.panic_factor > 1:
            raise ConfigError(f"autoscale.panic_factor must be > 1, not {self.panic_factor}")
        for name in ("up_delay", "panic_delay", "down_delay", "settle"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ConfigError(f"autoscale.{name} must be finite and >= 0, not {value}")
        if self.down_delay < self.up_delay:
            raise ConfigError(f"autoscale.down_delay ({self.down_delay}) must be at least "
                              f"up_delay ({self.up_delay}): release slower than you add")
        if self.min_replicas < 0 or self.max_models < 0 or self.memory_budget < 0:
            raise ConfigError("autoscale.min_replicas, max_models and memory_budget must be >= 0")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigError("autoscale needs 0 < backoff_initial <= backoff_max")
        if not 0 < self.max_replica_load < math.inf or self.history < 1:
            raise ConfigError("autoscale.max_replica_load must be > 0 and history >= 1")
        if (not 0 <= self.target_queue_wait < math.inf or not self.max_scale_up_rate > 1
                or not self.max_scale_down_rate > 1):
            raise ConfigError("autoscale.target_queue_wait must be >= 0 (0: ignore queue waits) "
                              "and max_scale_up_rate, max_scale_down_rate > 1")


class ActionKind(enum.StrEnum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    digest: Digest
    name: str
    # Why, in words (shown by `swarm-node status` and logged).
    reason: str
    # Bytes the model's files take, as advertised (0 = unknown).
    memory_bytes: int = 0


class Direction(enum.StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Trend:
    """Since when (SelfState.now's clock) a model has wanted more or fewer replicas."""

    direction: Direction
    since: float
    # The replica count when the trend (re)started: a change restarts it (for a
    # cool-down, only more replicas do).
    replicas: int
    # Cool-down: the most replicas wanted since it started (what a release keeps:
    # Knative's scale-down window takes the largest desired count over the window).
    peak: int = 0


@dataclass(frozen=True, slots=True)
class SelfState:
    """What this node knows of itself when it decides."""

    # Monotonic seconds (the injected clock).
    now: float
    # This node's current advert (what it serves; its peer id), if it has one yet.
    advert: Advert | None
    # Versions the autoscaler loaded here (the only ones it may unload).
    managed: frozenset[Digest] = frozenset()
    # Bytes the models served here take (0 when unknown).
    memory_used: int = 0
    # A load or unload is in progress.
    busy: bool = False
    # Versions not to load before this time (after a failed load).
    backoff_until: Mapping[Digest, float] = field(default_factory=dict)
    # The previous Decision's trends.
    trends: Mapping[Digest, Trend] = field(default_factory=dict)
    # Peers whose adverts count for supply and demand (staking: eligible on this node's
    # ledger); None: every peer's.
    counts: Callable[[PeerId], bool] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    # Carried into the next SelfState.
    trends: Mapping[Digest, Trend]
    # Every model's supply and demand as seen now (for status and metrics).
    demand: tuple[ModelDemand, ...] = ()


def allowed(name: str, patterns: tuple[str, ...]) -> bool:
    """Is `name` within the allowed names or `namespace/` prefixes (empty: everything)?"""
    if not patterns:
        return True
    return any(name == p or (p.endswith("/") and name.startswith(p)) for p in patterns)


def _rank(peer: PeerId, digest: Digest) -> bytes:
    return hashlib.sha256(f"{peer.value}\0{digest}".encode()).digest()


def _trend(old: Trend | None, direction: Direction | None, replicas: int, desired: int,
           now: float) -> Trend | None:
    if direction is None:
        return None
    if old is not None and old.direction is direction:
        # A provider missing from the view for a moment (late adverts on a busy host)
        # leaves more work for the others: only more replicas restart the delay.
        if direction is Direction.UP and replicas <= old.replicas:
            return old
        if direction is Direction.DOWN and replicas <= old.replicas:  # a round goes on
            return old if desired <= old.peak else Trend(direction, old.since, old.replicas,
                                                           desired)
    return Trend(direction, now, replicas, desired)


def _pays(d: ModelDemand, config: AutoscaleConfig) -> float:
    """Micro-units per second the unserved demand would pay (the price ranking)."""
    unserved = max(0.0, d.arrival_rate - d.throughput * config.target_load)
    return d.price * max(unserved, d.load)


def decide(view: PeerView, self_state: SelfState, config: AutoscaleConfig,
           rng: random.Random) -> Decision:
    """This node's scaling actions now (at most one), and the trends to carry forward."""
    me = self_state
    own = me.advert
    demand = supply_and_demand(view, own, max_replica_load=config.max_replica_load,
                               target_queue_wait=config.target_queue_wait, counts=me.counts)
    mine = {o.digest for o in own.models} if own is not None else set()
    names = {o.name for o in own.models} if own is not None else set()
    panic_at = config.target_load * config.panic_factor
    trends: dict[Digest, Trend] = {}
    ready_up: list[tuple[ModelDemand, int]] = []
    ready_down: list[tuple[ModelDemand, int]] = []
    for digest, d in demand.items():
        desired = d.desired(config.target_load, config.min_replicas, config.max_scale_up_rate)
        panic = d.per_replica >= panic_at
        direction = (Direction.UP if desired > d.replicas
                     else Direction.DOWN if desired < d.replicas and not panic else None)
        trend = _trend(me.trends.get(digest), direction, d.replicas, desired, me.now)
        if trend is None:
            continue
        trends[digest] = trend
        held = me.now - trend.since
        if direction is Direction.UP and held >= (config.panic_delay if panic else config.up_delay):
            ready_up.append((d, desired - d.replicas))
        elif direction is Direction.DOWN and held >= config.down_delay:
            floor = math.ceil(trend.replicas / config.max_scale_down_rate - 1e-9)
            excess = d.replicas - max(desired, trend.peak, floor)
            if excess > 0:
                ready_down.append((d, excess))
            else:  # this round is done: the next one measures over a cool-down of its own
                trends[digest] = Trend(Direction.DOWN, me.now, d.replicas, desired)
    # A model whose every provider is missing from the view for a moment keeps its trend
    # (for up to a cool-down), rather than starting over when they are back.
    for digest, old in me.trends.items():
        if digest not in demand and me.now - old.since < config.down_delay:
            trends[digest] = old
    result = tuple(sorted(demand.values(), key=lambda d: (d.name, d.digest.hex)))
    if me.busy or own is None or own.draining:  # no advert yet (starting): nothing to offer
        return Decision((), trends, result)

    # Release first: an excess replica here is capacity another model may need.
    for d, excess in sorted(ready_down, key=lambda x: x[0].digest.hex):
        if d.digest not in me.managed:
            continue
        order = sorted(d.releasable, key=lambda p: _rank(p, d.digest))
        if own.peer_id in order[:excess]:
            trends.pop(d.digest, None)
            return Decision((Action(
                ActionKind.UNLOAD, d.digest, d.name,
                f"demand {d.load:.2f} replicas' worth for {d.replicas} replicas wants "
                f"{d.replicas - excess} (target load {config.target_load:g}, min "
                f"{config.min_replicas}) for {config.down_delay:g}s; this node ranks among "
                f"the {excess} of {len(order)} autoscaled replicas to release",
                d.memory_bytes),), trends, result)

    served = len(own.models)
    for d, deficit in sorted(ready_up, key=lambda x: (-_pays(x[0], config), x[0].digest.hex)):
        # One version per name here: another version of a name served here is not a candidate.
        if d.digest in mine or d.name in names or not _eligible(d, me, config, served):
            continue
        # Won or lost, this node's next lottery for the model waits `settle` more seconds.
        trends[d.digest] = Trend(Direction.UP, me.now + config.settle, d.replicas)
        chance = min(1.0, deficit / max(1, d.candidates))
        if rng.random() < chance:
            return Decision((Action(
                ActionKind.LOAD, d.digest, d.name,
                f"demand {d.load:.2f} replicas' worth on {d.replicas} replicas "
                f"({d.per_replica:.2f} each, target {config.target_load:g}) wants {deficit} more; "
                f"won the lottery at p={chance:.3f} among {d.candidates} candidates",
                d.memory_bytes),), trends, result)
    return Decision((), trends, result)


def _eligible(d: ModelDemand, me: SelfState, config: AutoscaleConfig, served: int) -> bool:
    if not allowed(d.name, config.allowed) or d.price < config.min_price:
        return False
    if d.holders == 0 or me.backoff_until.get(d.digest, -math.inf) > me.now:
        return False
    if served >= config.max_models:
        return False
    if config.memory_budget:  # an unknown size cannot be shown to fit
        return 0 < d.memory_bytes <= config.memory_budget - me.memory_used
    return True
