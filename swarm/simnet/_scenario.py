"""Scenario files (TOML): the swarm, its workload, a fault timeline and the run's promises.

    name = "failover"
    description = "a node is killed mid-run; no request may be lost"
    duration = 20                       # seconds of workload
    seed = 1

    [nodes]
    count = 3                           # optional when groups are given: their sum
    [[nodes.group]]
    count = 3
    models = ["builtin/mlp"]            # what each node of the group serves
    price_per_request = 10              # micro-units, advertised by the node
    price_per_1k_items = 0
    region = "local"
    slowdown = 1.0                      # >= 1: the process runs 1/slowdown of the time

    [workload]
    shape = "poisson"                   # constant | poisson | ramp | burst | steps
    rate = 20                           # requests/s (ramp: at the start; burst: the base)
    end_rate = 40                       # ramp only: rate at the end
    burst_rate = 80                     # burst only: rate inside each burst
    bursts = [{at = 5, length = 2}]     # burst only
    steps = [{at = 0, rate = 2}, {at = 10, rate = 60}]  # steps only: the rate from `at` on
    items = 1                           # items per request
    timeout = 5                         # per-request deadline, seconds
    max_in_flight = 256                 # open loop, but bounded: beyond it requests are shed
    [[workload.model]]
    name = "builtin/mlp"
    weight = 1
    inputs = "vector"                   # text | vector (inferred for the built-in models)
    [[workload.chat]]                   # chat traffic, streamed (AsyncClient.chat_chunks),
    model = "builtin/smollm2"           #   a Poisson stream of its own next to the above
    rate = 0.5                          # chats/s (`rate` above and --rate leave it alone)
    max_tokens = 32
    temperature = 0.0                   # 0: greedy
    timeout = 60                        # per-chat deadline, seconds from its send time
    max_in_flight = 16                  # chats due beyond it are shed (counted as lost)
    prompts = ["Say hi."]               # optional; default: a few short prompts in code

    [[fault]]
    at = 8
    kind = "kill"                       # kill | slow | partition | leave | rejoin | rollout | rollback
    node = 1                            # or (simnet virtual only) fraction = 0.1 of the swarm

    [promises]
    max_lost_requests = 0
    p99_ms = 1500
    max_lost_chats = 0                  # chats ([[workload.chat]]) that ended without their
    ttft_p99_ms = 20000                 #   answer; 99th percentile of time to first token
    scale_up_replicas = 3               # autoscaling: this many replicas of the workload's
    scale_up_within_s = 30              #   model within this long after its rate first rises
    max_loads = 4                       #   at most this many loads in the run (no oscillation)
    released_to = 1                     #   at most this many replicas at the end

    [autoscale]                         # swarm.autoscale.AutoscaleConfig for the groups
    up_delay = 4                        # with `autoscale = true` (swarm-node --autoscale)

    [staking]                           # a genesis for the run: every node bonded, a paying,
    stake = 1000                        #   verifying client (see Staking); a group with
    verify_fraction = 0.2               #   perturb_outputs = 0.2 cheats on that share

    [virtual]                           # read only by `swarm simnet virtual` (VirtualSettings)
    clients = 50                        # (an older name of the table, [model], is accepted)

Everything here is pure: parsing, validation (ConfigError naming the file and
the field), CLI overrides, and the request plan computed from a seeded RNG.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import random
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from swarm._errors import ConfigError
from swarm.scheduler import Preference

__all__ = [
    "Burst",
    "ChatMix",
    "Fault",
    "FaultKind",
    "ModelMix",
    "Network",
    "NodeGroup",
    "NodeSpec",
    "PlannedChat",
    "PlannedRequest",
    "Promises",
    "Scenario",
    "Shape",
    "Staking",
    "Step",
    "VirtualSettings",
    "Workload",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
    "plan_chats",
    "plan_requests",
    "rate_at",
    "send_times",
]

BUILTIN_MODELS = ("builtin/minilm", "builtin/mlp")
# Built-in models that generate text (chat traffic); the others take tensors.
GENERATIVE_MODELS = ("builtin/smollm2",)
# Every model a release ships (served without the registry).
SHIPPED_MODELS = BUILTIN_MODELS + GENERATIVE_MODELS
MLP_DIM = 512
# A run is bounded: plans beyond this many requests are refused at validation.
MAX_REQUESTS = 1_000_000
# Chats keep every inter-token gap: fewer of them, and of bounded length.
MAX_CHATS = 10_000
MAX_CHAT_TOKENS = 1024
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 2000


class Shape(enum.StrEnum):
    CONSTANT = "constant"  # evenly spaced arrivals
    POISSON = "poisson"    # exponential inter-arrival times
    RAMP = "ramp"          # Poisson, rate moving linearly from `rate` to `end_rate`
    BURST = "burst"        # Poisson at `rate`, at `burst_rate` inside each burst window
    STEPS = "steps"        # Poisson at each step's rate from its `at` on


class FaultKind(enum.StrEnum):
    KILL = "kill"            # SIGKILL the node
    SLOW = "slow"            # stop it most of the time (SIGSTOP/SIGCONT duty cycle)
    PARTITION = "partition"  # cut its links (--netns only)
    LEAVE = "leave"          # SIGTERM: graceful drain, then exit
    REJOIN = "rejoin"        # start it again with the same data dir (same identity)
    ROLLOUT = "rollout"      # publish a new version of a model (needs the registry)
    ROLLBACK = "rollback"    # return a model to its previous version (needs the registry)


_NODE_FAULTS = {FaultKind.KILL, FaultKind.SLOW, FaultKind.PARTITION, FaultKind.LEAVE,
                FaultKind.REJOIN}
_MODEL_FAULTS = {FaultKind.ROLLOUT, FaultKind.ROLLBACK}


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """Nodes that share a configuration (a `[[nodes.group]]` table)."""

    # How many nodes of this kind.
    count: int = 1
    # Models each node serves (`--serve`).
    models: tuple[str, ...] = BUILTIN_MODELS
    # Advertised prices, micro-units.
    price_per_request: int = 0
    price_per_1k_items: int = 0
    # Region label the node advertises.
    region: str = ""
    # >= 1. The whole process runs 1/slowdown of the time (SIGSTOP/SIGCONT duty cycle).
    slowdown: float = 1.0
    # Run the autoscaler (`--autoscale`, with the scenario's [autoscale] settings).
    autoscale: bool = False
    # A cheater (test-only `--test-perturb-outputs`): this share of its answers is wrong.
    perturb_outputs: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the swarm: its position and its group's settings."""

    index: int
    models: tuple[str, ...] = BUILTIN_MODELS
    price_per_request: int = 0
    price_per_1k_items: int = 0
    region: str = ""
    slowdown: float = 1.0
    autoscale: bool = False
    perturb_outputs: float = 0.0

    def price_of(self, items: int) -> float:
        """Micro-units one request of `items` items costs at this node."""
        return self.price_per_request + self.price_per_1k_items * items / 1000


@dataclass(frozen=True, slots=True)
class Burst:
    # Seconds from the start of the workload.
    at: float
    # Seconds the burst lasts.
    length: float


@dataclass(frozen=True, slots=True)
class Step:
    # Seconds from the start of the workload.
    at: float
    # Requests per second from then on (until the next step).
    rate: float


@dataclass(frozen=True, slots=True)
class ModelMix:
    """One model of the workload and its share of the requests."""

    name: str
    weight: float = 1.0
    # "text" (sentences, for MiniLM) or "vector" (random FP32 rows of `dim` values).
    inputs: str = "vector"
    dim: int = MLP_DIM


@dataclass(frozen=True, slots=True)
class ChatMix:
    """Chat traffic for one generative model (a `[[workload.chat]]` table): a Poisson
    stream of chats, each one user message, its answer streamed token by token."""

    model: str
    # Chats per second.
    rate: float = 0.5
    # Tokens each answer may have (its max_tokens).
    max_tokens: int = 32
    # Sampling temperature (0: greedy).
    temperature: float = 0.0
    # Deadline of each chat, seconds from its scheduled send time.
    timeout: float = 60.0
    # Chats in flight at once (for this table); a chat due beyond that is shed.
    max_in_flight: int = 16
    # User messages picked at random; empty: the short prompts shipped in
    # swarm/simnet/_workload.py (CHAT_PROMPTS).
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Workload:
    shape: Shape = Shape.POISSON
    # Requests per second (ramp: at the start; burst: outside bursts).
    rate: float = 20.0
    # Ramp: requests per second at the end.
    end_rate: float | None = None
    # Burst: requests per second inside a burst.
    burst_rate: float | None = None
    bursts: tuple[Burst, ...] = ()
    # Steps: the rate from each step's time on (before the first: `rate`).
    steps: tuple[Step, ...] = ()
    models: tuple[ModelMix, ...] = (ModelMix("builtin/minilm", inputs="text"),
                                    ModelMix("builtin/mlp"))
    # Items (texts or vectors) per request.
    items: int = 1
    # Deadline of each request, seconds from its scheduled send time.
    timeout: float = 5.0
    # Requests in flight at once; a request due beyond that is shed (counted as lost).
    max_in_flight: int = 256
    # Chat traffic next to the requests above (its rates are its own: `scaled_to` and
    # --rate leave them alone).
    chats: tuple[ChatMix, ...] = ()

    def scaled_to(self, rate: float) -> Workload:
        """The same shape with every rate scaled so that the base rate is `rate` (chat
        rates stay as they are)."""
        factor = rate / self.rate if self.rate > 0 else 0.0
        return dataclasses.replace(
            self, rate=rate,
            end_rate=None if self.end_rate is None else self.end_rate * factor,
            burst_rate=None if self.burst_rate is None else self.burst_rate * factor,
            steps=tuple(Step(s.at, s.rate * factor) for s in self.steps))


@dataclass(frozen=True, slots=True)
class Fault:
    """One event of the fault timeline (a `[[fault]]` table)."""

    # Seconds from the start of the workload.
    at: float
    kind: FaultKind
    # Node index (kill, slow, partition, leave, rejoin).
    node: int | None = None
    # Instead of `node` (simnet virtual only): this fraction of the swarm's nodes, picked
    # at random among those up (kill, slow, partition, leave) or down (rejoin).
    fraction: float | None = None
    # slow, partition: seconds until undone (None: until the end of the run).
    duration: float | None = None
    # slow: the node runs 1/slowdown of the time.
    slowdown: float = 5.0
    # rollout, rollback: which model; rollout: the version (tag or digest) rolled out.
    model: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.kind in _MODEL_FAULTS:
            return f"{self.kind} {self.model}" + (f" to {self.version}" if self.version else "")
        text = (f"{self.kind} node {self.node}" if self.fraction is None
                else f"{self.kind} {self.fraction:.0%} of the nodes")
        if self.kind is FaultKind.SLOW:
            text += f" x{self.slowdown:g}"
        if self.duration is not None:
            text += f" for {self.duration:g}s"
        return text


@dataclass(frozen=True, slots=True)
class Network:
    """Link properties of --netns runs (tc netem on every node's link)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class Promises:
    # Requests that may end without a result (errors, deadlines, shed).
    max_lost_requests: int = 0
    # Bound on the 99th percentile latency of successful requests (None: no bound).
    p99_ms: float | None = None
    # Chats ([[workload.chat]]) that may end without their whole answer (errors, deadlines,
    # shed), and a bound on the 99th percentile time to first token of the others, from
    # each chat's scheduled send time (None: no bound). Judged only when chats were sent.
    max_lost_chats: int = 0
    ttft_p99_ms: float | None = None
    # Autoscaling (None: not promised): `scale_up_replicas` replicas of the workload's first
    # model within `scale_up_within_s` seconds of its rate first rising; at most `max_loads`
    # loads in the run; at most `released_to` replicas at its end.
    scale_up_replicas: int | None = None
    scale_up_within_s: float | None = None
    max_loads: int | None = None
    released_to: int | None = None
    # Staking ([staking] table): every cheater slashed and ineligible on every honest
    # node's ledger, and answering no request sent `exclusion_grace_s` after the client
    # reported it; every provider's claims equal to the receipts the client signed it.
    cheaters_excluded: bool = False
    exclusion_grace_s: float = 5.0
    honest_paid: bool = False


@dataclass(frozen=True, slots=True)
class Staking:
    """The `[staking]` table: a genesis for the run (swarm.staking) and the client's side."""

    # Bonded stake of every node at genesis, and its spendable balance.
    stake: int = 1000
    balance: int = 0
    # The network's minimum stake (routing) and epoch length (ticks by node 0).
    min_stake: int = 500
    epoch_seconds: int = 2
    unbonding_epochs: int = 1
    # Share of a cheater's bond burned per proven wrong result (ppm).
    wrong_result_ppm: int = 100_000
    # The workload's client: its wallet's balance, what it deposits per provider at a
    # time, and the share of its requests it also sends to a second provider.
    client_balance: int = 1_000_000
    deposit: int = 10_000
    verify_fraction: float = 0.02


@dataclass(frozen=True, slots=True)
class VirtualSettings:
    """The `[virtual]` table: what only the virtual-time simulator (`swarm simnet virtual`)
    reads. Files may still call it `[model]`, its name before the simulator was renamed.

    Defaults describe a swarm at internet scale; swarm/simnet/_virtual.py says why.
    The advert interval is `nodes.advert_interval` (the simulator's default: 60 s).
    """

    # Clients: light peers, each with its own peer view, observations and scheduler.
    clients: int = 50
    # One-way latency between two peers, ms: lognormal across pairs with this median and
    # sigma (drawn once per pair), times a per-message lognormal factor of sigma `jitter`.
    latency_ms: float = 30.0
    latency_sigma: float = 0.6
    jitter: float = 0.1
    # Fraction of gossip transmissions lost (requests ride TCP: late, never lost).
    loss: float = 0.0
    # Gossip mesh degree (GossipSub D).
    degree: int = 6
    # Providers' Membership: seconds between checks for a significant change, and the
    # least seconds between two adverts.
    check_interval: float = 5.0
    min_interval: float = 5.0
    # One batch of n items takes (base_ms + per_item_ms * n) at the fastest provider; each
    # provider is slower by a factor drawn log-uniformly in [1, speed_spread], times its
    # group's slowdown; each batch varies by a lognormal factor of sigma service_sigma.
    base_ms: float = 750.0
    per_item_ms: float = 400.0
    speed_spread: float = 4.0
    service_sigma: float = 0.1
    # The providers' batching policy (swarm.node.BatchPolicy, applied by swarm.node.decide):
    # most items per batch; requests waiting per model before RESOURCE_EXHAUSTED; the
    # longest a request waits for a fuller batch (the node's default: 2 ms); false: every
    # request executes alone.
    max_batch: int = 8
    max_queue: int = 64
    max_queue_delay_ms: float = 2.0
    batching: bool = True
    # Providers join at uniform times in [0, join_window); the workload starts at warmup.
    join_window: float = 5.0
    warmup: float = 10.0
    # Clients' scheduler: providers estimated per request (SchedulerConfig.max_considered;
    # 0: all), the price cap per request in micros, and "latency", "price" or a weight.
    max_considered: int = 16
    max_price: float | None = None
    # Share of first attempts that explore (SchedulerConfig.explore; 0: never).
    explore: float = 0.05
    preference: str = "latency"
    # Clients' retries: hedge slow attempts, and most providers tried per request.
    hedge: bool = True
    max_attempts: int = 4
    # Providers' admission (swarm.scheduler.AdmissionPolicy.target_wait, the node's
    # `admission_wait`): seconds of queued work past which a Router's attempt is refused;
    # 0: off. Clients' refusals per request before the last attempt must queue
    # (SchedulerConfig.max_refusals).
    admission_wait: float = 0.05
    max_refusals: int = 2
    # Autoscaling groups: virtual seconds a provider takes to pull, load and warm up a model.
    model_load_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    # Seconds during which requests are sent.
    duration: float
    seed: int
    groups: tuple[NodeGroup, ...]
    # Number of nodes; node i gets group expanded[i % len(expanded)] (see node_specs).
    node_count: int
    workload: Workload
    faults: tuple[Fault, ...] = ()
    promises: Promises = Promises()
    network: Network = Network()
    # Seconds between capacity adverts (None: the node's default).
    advert_interval: float | None = None
    # Settings of `swarm simnet virtual` (the `[virtual]` table).
    virtual: VirtualSettings = VirtualSettings()
    # The `[autoscale]` table: AutoscaleConfig settings of the nodes that autoscale.
    autoscale: tuple[tuple[str, Any], ...] = ()
    # The `[staking]` table (None: no genesis, staking off).
    staking: Staking | None = None
    # Where it came from: a path or "builtin:NAME".
    source: str = ""

    def node_specs(self) -> tuple[NodeSpec, ...]:
        """One spec per node. Groups are expanded in order and repeated when --nodes asks
        for more nodes than they hold (or cut when it asks for fewer)."""
        expanded = [g for g in self.groups for _ in range(g.count)]
        return tuple(
            NodeSpec(index=i, models=g.models, price_per_request=g.price_per_request,
                     price_per_1k_items=g.price_per_1k_items, region=g.region,
                     slowdown=g.slowdown, autoscale=g.autoscale,
                     perturb_outputs=g.perturb_outputs)
            for i, g in ((i, expanded[i % len(expanded)]) for i in range(self.node_count)))

    def with_overrides(self, *, nodes: int | None = None, duration: float | None = None,
                       rate: float | None = None, seed: int | None = None) -> Scenario:
        """Apply command-line overrides and validate the result again."""
        changed = self
        if nodes is not None:
            changed = dataclasses.replace(changed, node_count=nodes)
        if duration is not None:
            changed = dataclasses.replace(changed, duration=duration)
        if rate is not None:
            changed = dataclasses.replace(changed, workload=changed.workload.scaled_to(rate))
        if seed is not None:
            changed = dataclasses.replace(changed, seed=seed)
        validate(changed, where=f"{self.source or self.name} (with command-line overrides)")
        return changed


# --------------------------------------------------------------------------- loading


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped in swarm/simnet/scenarios/."""
    folder = resources.files("swarm.simnet") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_scenario(ref: str | Path) -> Scenario:
    """A scenario from a file path, or by name from the shipped scenarios."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read scenario {path}: {exc.strerror or exc}") from exc
        return parse_scenario(text, source=str(path))
    name = str(ref)
    if name not in builtin_scenarios():
        raise ConfigError(f"no scenario file or built-in scenario named {name!r} "
                          f"(built-in: {', '.join(builtin_scenarios())})")
    text = (resources.files("swarm.simnet") / "scenarios" / f"{name}.toml").read_text()
    return parse_scenario(text, source=f"builtin:{name}")


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Parse and validate a scenario; every problem is a ConfigError naming the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    r = _Reader(raw, source, "")
    r.known({"name", "description", "duration", "seed", "nodes", "workload", "fault",
             "promises", "network", "virtual", "model", "autoscale", "staking"})
    if r.has("virtual") and r.has("model"):
        raise ConfigError(f"{source}: [model] is the old name of [virtual]; give one of them")
    nodes = r.table("nodes")
    nodes.known({"count", "group", "advert_interval"})
    groups = tuple(_group(g) for g in nodes.tables("group")) or (NodeGroup(count=1),)
    count = nodes.integer("count", None)
    if count is None:
        count = sum(g.count for g in groups)
    elif nodes.has("group") and count != sum(g.count for g in groups):
        raise ConfigError(f"{source}: nodes.count is {count} but the groups hold "
                          f"{sum(g.count for g in groups)} nodes")
    elif not nodes.has("group"):
        groups = (NodeGroup(count=count),)
    scenario = Scenario(
        name=r.string("name", Path(source.removeprefix("builtin:")).stem),
        description=r.string("description", ""),
        duration=r.number("duration", 30.0),
        seed=r.integer("seed", 0) or 0,
        groups=groups,
        node_count=count,
        workload=_workload(r.table("workload")),
        faults=tuple(_fault(f) for f in r.tables("fault")),
        promises=_promises(r.table("promises")),
        network=_network(r.table("network")),
        advert_interval=nodes.optional_number("advert_interval"),
        virtual=_virtual(r.table("model" if r.has("model") else "virtual")),
        autoscale=_autoscale(r.table("autoscale")),
        staking=_staking(r.table("staking")) if r.has("staking") else None,
        source=source,
    )
    validate(scenario, where=source)
    return scenario


class _Reader:
    """Typed access to one TOML table, with errors that name file and field."""

    def __init__(self, raw: Any, source: str, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: {path or 'the file'} must be a table")
        self.raw = raw
        self.source = source
        self.path = path

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def where(self, key: str) -> str:
        return f"{self.source}: {self.sub(key)}"

    def has(self, key: str) -> bool:
        return key in self.raw

    def known(self, keys: set[str]) -> None:
        unknown = sorted(set(self.raw) - keys)
        if unknown:
            table = f"[{self.path}]" if self.path else "the top level"
            raise ConfigError(f"{self.source}: unknown key {unknown[0]!r} in {table} "
                              f"(known: {', '.join(sorted(keys))})")

    def _get(self, key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.raw[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{self.where(key)} must be {what}, got {value!r}")
        return value

    def string(self, key: str, default: str) -> str:
        return str(self._get(key, (str,), "a string")) if key in self.raw else default

    def number(self, key: str, default: float) -> float:
        return float(self._get(key, (int, float), "a number")) if key in self.raw else default

    def optional_number(self, key: str) -> float | None:
        return float(self._get(key, (int, float), "a number")) if key in self.raw else None

    def integer(self, key: str, default: int | None) -> int | None:
        return int(self._get(key, (int,), "an integer")) if key in self.raw else default

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._get(key, (bool,), "true or false")) if key in self.raw else default

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if key not in self.raw:
            return default
        value = self._get(key, (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where(key)} must be a list of strings, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> _Reader:
        return _Reader(self.raw.get(key, {}), self.source, self.sub(key))

    def tables(self, key: str) -> list[_Reader]:
        value = self.raw.get(key, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.where(key)} must be an array of tables ([[{key}]])")
        return [_Reader(v, self.source, f"{self.sub(key)}[{i}]") for i, v in enumerate(value)]


def _group(r: _Reader) -> NodeGroup:
    r.known({f.name for f in dataclasses.fields(NodeGroup)})
    return NodeGroup(
        count=r.integer("count", 1) or 0,
        models=r.strings("models", BUILTIN_MODELS),
        price_per_request=r.integer("price_per_request", 0) or 0,
        price_per_1k_items=r.integer("price_per_1k_items", 0) or 0,
        region=r.string("region", ""),
        slowdown=r.number("slowdown", 1.0),
        autoscale=r.boolean("autoscale", False),
        perturb_outputs=r.number("perturb_outputs", 0.0),
    )


def _model_mix(r: _Reader) -> ModelMix:
    r.known({"name", "weight", "inputs", "dim"})
    if not r.has("name"):
        raise ConfigError(f"{r.where('name')} is required")
    name = r.string("name", "")
    default_inputs = "text" if name == "builtin/minilm" else "vector"
    if name not in BUILTIN_MODELS and not r.has("inputs"):
        raise ConfigError(f"{r.where('inputs')}: say which inputs {name!r} takes "
                          f"(\"text\" or \"vector\")")
    return ModelMix(name=name, weight=r.number("weight", 1.0),
                    inputs=r.string("inputs", default_inputs), dim=r.integer("dim", MLP_DIM) or 0)


def _workload(r: _Reader) -> Workload:
    r.known({"shape", "rate", "end_rate", "burst_rate", "bursts", "steps", "model", "chat",
             "items", "timeout", "max_in_flight"})
    shape_text = r.string("shape", "poisson")
    try:
        shape = Shape(shape_text)
    except ValueError:
        raise ConfigError(f"{r.where('shape')}: unknown shape {shape_text!r} "
                          f"(one of: {', '.join(s.value for s in Shape)})") from None
    bursts = []
    for b in r.tables("bursts"):
        b.known({"at", "length"})
        if not (b.has("at") and b.has("length")):
            raise ConfigError(f"{b.where('at')}: a burst needs `at` and `length`")
        bursts.append(Burst(at=b.number("at", 0.0), length=b.number("length", 0.0)))
    steps = []
    for s in r.tables("steps"):
        s.known({"at", "rate"})
        if not (s.has("at") and s.has("rate")):
            raise ConfigError(f"{s.where('at')}: a step needs `at` and `rate`")
        steps.append(Step(at=s.number("at", 0.0), rate=s.number("rate", 0.0)))
    models = tuple(_model_mix(m) for m in r.tables("model")) or Workload().models
    chats = tuple(_chat_mix(c) for c in r.tables("chat"))
    return Workload(
        shape=shape,
        rate=r.number("rate", 20.0),
        end_rate=r.optional_number("end_rate"),
        burst_rate=r.optional_number("burst_rate"),
        bursts=tuple(bursts),
        steps=tuple(steps),
        models=models,
        items=r.integer("items", 1) or 0,
        timeout=r.number("timeout", 5.0),
        max_in_flight=r.integer("max_in_flight", 256) or 0,
        chats=chats,
    )


def _chat_mix(r: _Reader) -> ChatMix:
    r.known({f.name for f in dataclasses.fields(ChatMix)})
    if not r.has("model"):
        raise ConfigError(f"{r.where('model')} is required (a generative model, e.g. "
                          f"\"builtin/smollm2\")")
    d = ChatMix(model="")
    return ChatMix(model=r.string("model", ""), rate=r.number("rate", d.rate),
                   max_tokens=r.integer("max_tokens", d.max_tokens) or 0,
                   temperature=r.number("temperature", d.temperature),
                   timeout=r.number("timeout", d.timeout),
                   max_in_flight=r.integer("max_in_flight", d.max_in_flight) or 0,
                   prompts=r.strings("prompts", d.prompts))


def _fault(r: _Reader) -> Fault:
    r.known({f.name for f in dataclasses.fields(Fault)})
    for key in ("at", "kind"):
        if not r.has(key):
            raise ConfigError(f"{r.where(key)} is required")
    kind_text = r.string("kind", "")
    try:
        kind = FaultKind(kind_text)
    except ValueError:
        raise ConfigError(f"{r.where('kind')}: unknown fault kind {kind_text!r} "
                          f"(one of: {', '.join(k.value for k in FaultKind)})") from None
    allowed = {"at", "kind"}
    if kind in _NODE_FAULTS:
        allowed |= {"node", "fraction"}
        if not r.has("node") and not r.has("fraction"):
            raise ConfigError(f"{r.where('node')} is required for a {kind} fault (or, in "
                              f"simnet virtual only, a `fraction` of the nodes)")
        if r.has("node") and r.has("fraction"):
            raise ConfigError(f"{r.where('fraction')}: a {kind} fault takes `node` or "
                              f"`fraction`, not both")
    if kind in (FaultKind.SLOW, FaultKind.PARTITION):
        allowed.add("duration")
    if kind is FaultKind.SLOW:
        allowed.add("slowdown")
    if kind in _MODEL_FAULTS:
        allowed |= {"model", "version"}
        if not r.has("model"):
            raise ConfigError(f"{r.where('model')} is required for a {kind} fault")
    for key in sorted(set(r.raw) - allowed):
        raise ConfigError(f"{r.where(key)} does not apply to a {kind} fault")
    return Fault(at=r.number("at", 0.0), kind=kind, node=r.integer("node", None),
                 fraction=r.optional_number("fraction"), duration=r.optional_number("duration"),
                 slowdown=r.number("slowdown", 5.0),
                 model=r.string("model", "") or None, version=r.string("version", "") or None)


def _promises(r: _Reader) -> Promises:
    r.known({"max_lost_requests", "p99_ms", "max_lost_chats", "ttft_p99_ms",
             "scale_up_replicas", "scale_up_within_s", "max_loads", "released_to",
             "cheaters_excluded", "exclusion_grace_s", "honest_paid"})
    return Promises(max_lost_requests=r.integer("max_lost_requests", 0) or 0,
                    p99_ms=r.optional_number("p99_ms"),
                    max_lost_chats=r.integer("max_lost_chats", 0) or 0,
                    ttft_p99_ms=r.optional_number("ttft_p99_ms"),
                    scale_up_replicas=r.integer("scale_up_replicas", None),
                    scale_up_within_s=r.optional_number("scale_up_within_s"),
                    max_loads=r.integer("max_loads", None),
                    released_to=r.integer("released_to", None),
                    cheaters_excluded=r.boolean("cheaters_excluded", False),
                    exclusion_grace_s=r.number("exclusion_grace_s", 5.0),
                    honest_paid=r.boolean("honest_paid", False))


def _staking(r: _Reader) -> Staking:
    r.known({f.name for f in dataclasses.fields(Staking)})
    d = Staking()
    return Staking(
        stake=r.integer("stake", d.stake) or 0, balance=r.integer("balance", d.balance) or 0,
        min_stake=r.integer("min_stake", d.min_stake) or 0,
        epoch_seconds=r.integer("epoch_seconds", d.epoch_seconds) or 0,
        unbonding_epochs=r.integer("unbonding_epochs", d.unbonding_epochs) or 0,
        wrong_result_ppm=r.integer("wrong_result_ppm", d.wrong_result_ppm) or 0,
        client_balance=r.integer("client_balance", d.client_balance) or 0,
        deposit=r.integer("deposit", d.deposit) or 0,
        verify_fraction=r.number("verify_fraction", d.verify_fraction))


def _autoscale(r: _Reader) -> tuple[tuple[str, Any], ...]:
    """The [autoscale] table, checked by building the node's AutoscaleConfig from it."""
    from swarm.autoscale import AutoscaleConfig

    fields = {f.name for f in dataclasses.fields(AutoscaleConfig)} - {"enabled"}
    r.known(fields)
    values = dict(r.raw)
    try:
        AutoscaleConfig(**values)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{r.source}: [autoscale]: {exc}") from None
    return tuple(sorted(values.items()))


def _virtual(r: _Reader) -> VirtualSettings:
    fields = {f.name: f for f in dataclasses.fields(VirtualSettings)}
    r.known(set(fields))
    values: dict[str, Any] = {}
    for name in fields:
        if not r.has(name):
            continue
        default = getattr(VirtualSettings(), name)
        if isinstance(default, bool):
            values[name] = r.boolean(name, default)
        elif isinstance(default, int):
            values[name] = r.integer(name, default)
        elif isinstance(default, str):
            values[name] = r.string(name, default)
        else:
            values[name] = r.optional_number(name)
    return VirtualSettings(**values)


def _network(r: _Reader) -> Network:
    r.known({"latency_ms", "jitter_ms", "loss_percent"})
    return Network(latency_ms=r.number("latency_ms", 0.0), jitter_ms=r.number("jitter_ms", 0.0),
                   loss_percent=r.number("loss_percent", 0.0))


# --------------------------------------------------------------------------- validation


def validate(s: Scenario, *, where: str) -> None:
    """Raise ConfigError for the first problem found (values, then the fault timeline)."""

    def bad(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    if not s.duration > 0 or not math.isfinite(s.duration):
        raise bad(f"duration must be a positive number of seconds, got {s.duration}")
    if s.node_count < 1:
        raise bad(f"the swarm needs at least one node, got {s.node_count}")
    if s.advert_interval is not None and not s.advert_interval > 0:
        raise bad("nodes.advert_interval must be positive")
    for i, g in enumerate(s.groups):
        at = f"nodes.group[{i}]"
        if g.count < 1:
            raise bad(f"{at}.count must be at least 1, got {g.count}")
        if not g.models and not g.autoscale:
            raise bad(f"{at}.models must name at least one model (or the group autoscales)")
        if g.price_per_request < 0 or g.price_per_1k_items < 0:
            raise bad(f"{at}: prices cannot be negative")
        if not (g.slowdown >= 1 and math.isfinite(g.slowdown)):
            raise bad(f"{at}.slowdown must be >= 1 (1 = full speed, 4 = a quarter), "
                      f"got {g.slowdown}")
        if not 0 <= g.perturb_outputs <= 1:
            raise bad(f"{at}.perturb_outputs must be a share in 0..1, got {g.perturb_outputs}")
        if g.perturb_outputs and s.staking is None:
            raise bad(f"{at}.perturb_outputs needs a [staking] table (who would catch it?)")
    _validate_workload(s.workload, s.duration, bad)
    served = {m for spec in s.node_specs() for m in spec.models}
    for m in s.workload.models:
        if m.name not in served:
            raise bad(f"workload.model {m.name!r} is served by no node "
                      f"(served: {', '.join(sorted(served))})")
    for i, c in enumerate(s.workload.chats):
        if c.model not in served:
            raise bad(f"workload.chat[{i}].model {c.model!r} is served by no node "
                      f"(served: {', '.join(sorted(served))})")
    if s.promises.max_lost_requests < 0:
        raise bad("promises.max_lost_requests cannot be negative")
    if s.promises.p99_ms is not None and not s.promises.p99_ms > 0:
        raise bad("promises.p99_ms must be positive")
    if s.promises.max_lost_chats < 0:
        raise bad("promises.max_lost_chats cannot be negative")
    if s.promises.ttft_p99_ms is not None and not (s.promises.ttft_p99_ms > 0
                                                    and math.isfinite(s.promises.ttft_p99_ms)):
        raise bad("promises.ttft_p99_ms must be a positive number of milliseconds")
    if (s.promises.ttft_p99_ms is not None or s.promises.max_lost_chats) and \
            not s.workload.chats:
        raise bad("chat promises (max_lost_chats, ttft_p99_ms) need a [[workload.chat]]")
    p = s.promises
    if (p.scale_up_replicas is None) != (p.scale_up_within_s is None):
        raise bad("promises.scale_up_replicas and promises.scale_up_within_s go together")
    for name in ("scale_up_replicas", "max_loads", "released_to"):
        if (getattr(p, name) or 0) < 0:
            raise bad(f"promises.{name} cannot be negative")
    if any(v is not None for v in (p.scale_up_replicas, p.max_loads, p.released_to)) and not any(
            spec.autoscale for spec in s.node_specs()):
        raise bad("autoscaling promises need a node group with autoscale = true")
    if (p.cheaters_excluded or p.honest_paid) and s.staking is None:
        raise bad("staking promises need a [staking] table")
    if not p.exclusion_grace_s >= 0:
        raise bad("promises.exclusion_grace_s cannot be negative")
    if s.staking is not None:
        k = s.staking
        if min(k.stake, k.balance, k.min_stake, k.unbonding_epochs, k.wrong_result_ppm,
               k.client_balance) < 0:
            raise bad("staking: amounts cannot be negative")
        if not 1 <= k.epoch_seconds <= 3600:
            raise bad(f"staking.epoch_seconds must be in 1..3600, got {k.epoch_seconds}")
        if not 0 <= k.verify_fraction <= 1:
            raise bad(f"staking.verify_fraction must be in 0..1, got {k.verify_fraction}")
        if k.wrong_result_ppm > 1_000_000:
            raise bad("staking.wrong_result_ppm is parts per million: at most 1000000")
        if k.deposit < 1:
            raise bad("staking.deposit must be at least 1")
    n = s.network
    if n.latency_ms < 0 or n.jitter_ms < 0 or not 0 <= n.loss_percent <= 100:
        raise bad("network: latency and jitter must be >= 0 and loss_percent in 0..100")
    _validate_virtual(s.virtual, s.workload, bad)
    _validate_timeline(s, bad)


def _validate_virtual(m: VirtualSettings, w: Workload,
                      bad: Callable[[str], ConfigError]) -> None:
    def finite(value: float) -> bool:
        return math.isfinite(value)

    if m.clients < 1:
        raise bad(f"virtual.clients must be at least 1, got {m.clients}")
    if not (m.latency_ms > 0 and finite(m.latency_ms)):
        raise bad(f"virtual.latency_ms must be positive, got {m.latency_ms}")
    for name in ("latency_sigma", "jitter", "service_sigma"):
        value = getattr(m, name)
        if not (0 <= value <= 3):
            raise bad(f"virtual.{name} must be in 0..3, got {value}")
    if not 0 <= m.loss < 1:
        raise bad(f"virtual.loss is a fraction of transmissions in [0, 1), got {m.loss}")
    if not 1 <= m.degree <= 64:
        raise bad(f"virtual.degree must be in 1..64, got {m.degree}")
    if not (m.check_interval > 0 and m.min_interval >= 0 and finite(m.check_interval)
            and finite(m.min_interval)):
        raise bad("virtual.check_interval must be positive and virtual.min_interval >= 0")
    if not (m.base_ms >= 0 and m.per_item_ms >= 0 and m.base_ms + m.per_item_ms > 0
            and finite(m.base_ms + m.per_item_ms)):
        raise bad("virtual.base_ms and virtual.per_item_ms must be >= 0, and not both 0")
    if not (m.speed_spread >= 1 and finite(m.speed_spread)):
        raise bad(f"virtual.speed_spread must be >= 1 (1: all equal), got {m.speed_spread}")
    if m.max_batch < w.items:
        raise bad(f"virtual.max_batch ({m.max_batch}) must hold a request of workload.items "
                  f"({w.items})")
    if m.max_queue < 1:
        raise bad(f"virtual.max_queue must be at least 1, got {m.max_queue}")
    if not (m.max_queue_delay_ms >= 0 and finite(m.max_queue_delay_ms)):
        raise bad(f"virtual.max_queue_delay_ms must be >= 0, got {m.max_queue_delay_ms}")
    if not (0 <= m.join_window <= m.warmup and finite(m.warmup)):
        raise bad("virtual: need 0 <= join_window <= warmup (providers join before the workload)")
    if m.max_considered < 0 or m.max_considered == 1:
        raise bad(f"virtual.max_considered must be 0 (all) or at least 2, got {m.max_considered}")
    if not 0 <= m.explore <= 1:
        raise bad(f"virtual.explore must be in [0, 1], got {m.explore}")
    if not 0 <= m.admission_wait < math.inf or m.max_refusals < 0:
        raise bad(f"virtual.admission_wait must be finite and >= 0 and virtual.max_refusals "
                  f">= 0, got {m.admission_wait}, {m.max_refusals}")
    if m.max_price is not None and not m.max_price >= 0:
        raise bad(f"virtual.max_price must be >= 0, got {m.max_price}")
    try:
        Preference.parse(m.preference)
    except ValueError as exc:
        raise bad(f"virtual.{exc}") from None
    if m.max_attempts < 1:
        raise bad(f"virtual.max_attempts must be at least 1, got {m.max_attempts}")
    if not (m.model_load_s >= 0 and finite(m.model_load_s)):
        raise bad(f"virtual.model_load_s must be >= 0, got {m.model_load_s}")


def _validate_workload(w: Workload, duration: float, bad: Callable[[str], ConfigError]) -> None:
    if not w.rate >= 0 or not math.isfinite(w.rate):
        raise bad(f"workload.rate must be >= 0 requests/s, got {w.rate}")
    if w.shape is Shape.RAMP:
        if w.end_rate is None or not w.end_rate >= 0:
            raise bad("workload.end_rate (>= 0) is required for shape = \"ramp\"")
    elif w.end_rate is not None:
        raise bad("workload.end_rate applies only to shape = \"ramp\"")
    if w.shape is Shape.BURST:
        if w.burst_rate is None or not w.burst_rate >= 0:
            raise bad("workload.burst_rate (>= 0) is required for shape = \"burst\"")
        if not w.bursts:
            raise bad("workload.bursts is required for shape = \"burst\", "
                      "e.g. bursts = [{at = 5, length = 2}]")
        for i, b in enumerate(w.bursts):
            if b.at < 0 or b.length <= 0 or b.at >= duration:
                raise bad(f"workload.bursts[{i}] must start within the run (0 <= at < "
                          f"{duration:g}) and last > 0 s")
    elif w.burst_rate is not None or w.bursts:
        raise bad("workload.burst_rate and workload.bursts apply only to shape = \"burst\"")
    if w.shape is Shape.STEPS:
        if not w.steps:
            raise bad("workload.steps is required for shape = \"steps\", "
                      "e.g. steps = [{at = 0, rate = 2}, {at = 10, rate = 60}]")
        for i, s in enumerate(w.steps):
            if not (0 <= s.at < duration and s.rate >= 0 and math.isfinite(s.rate)):
                raise bad(f"workload.steps[{i}] must start within the run (0 <= at < "
                          f"{duration:g}) at a rate >= 0")
            if i and s.at <= w.steps[i - 1].at:
                raise bad(f"workload.steps[{i}]: steps must be in increasing `at` order")
    elif w.steps:
        raise bad("workload.steps applies only to shape = \"steps\"")
    if not w.models:
        raise bad("workload needs at least one [[workload.model]]")
    for i, m in enumerate(w.models):
        if not m.weight > 0:
            raise bad(f"workload.model[{i}].weight must be positive")
        if m.name in GENERATIVE_MODELS:
            raise bad(f"workload.model[{i}]: {m.name!r} generates text: send it chats with "
                      f"a [[workload.chat]] table")
        if m.inputs not in ("text", "vector"):
            raise bad(f"workload.model[{i}].inputs must be \"text\" or \"vector\", got "
                      f"{m.inputs!r}")
        if m.dim < 1:
            raise bad(f"workload.model[{i}].dim must be positive")
    if w.items < 1:
        raise bad(f"workload.items must be at least 1, got {w.items}")
    if not w.timeout > 0:
        raise bad("workload.timeout must be positive")
    if w.max_in_flight < 1:
        raise bad("workload.max_in_flight must be at least 1")
    expected = _expected_count(w, duration)
    if expected > MAX_REQUESTS:
        raise bad(f"the workload would send about {expected:.0f} requests; the limit is "
                  f"{MAX_REQUESTS}")
    for i, c in enumerate(w.chats):
        _validate_chat(c, f"workload.chat[{i}]", bad)
    chats = sum(c.rate for c in w.chats) * duration
    if chats > MAX_CHATS:
        raise bad(f"the workload would send about {chats:.0f} chats; the limit is {MAX_CHATS}")


def _validate_chat(c: ChatMix, at: str, bad: Callable[[str], ConfigError]) -> None:
    if c.model in BUILTIN_MODELS:
        raise bad(f"{at}.model: {c.model!r} does not generate text (chat needs a generative "
                  f"model such as {GENERATIVE_MODELS[0]!r})")
    if not (c.rate > 0 and math.isfinite(c.rate)):
        raise bad(f"{at}.rate must be a positive number of chats/s, got {c.rate}")
    if not 1 <= c.max_tokens <= MAX_CHAT_TOKENS:
        raise bad(f"{at}.max_tokens must be in 1..{MAX_CHAT_TOKENS}, got {c.max_tokens}")
    if not 0 <= c.temperature <= 2:
        raise bad(f"{at}.temperature must be in 0..2 (0: greedy), got {c.temperature}")
    if not (c.timeout > 0 and math.isfinite(c.timeout)):
        raise bad(f"{at}.timeout must be a positive number of seconds, got {c.timeout}")
    if c.max_in_flight < 1:
        raise bad(f"{at}.max_in_flight must be at least 1, got {c.max_in_flight}")
    if len(c.prompts) > MAX_PROMPTS:
        raise bad(f"{at}.prompts: at most {MAX_PROMPTS} prompts, got {len(c.prompts)}")
    for j, prompt in enumerate(c.prompts):
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise bad(f"{at}.prompts[{j}] must be non-blank text of at most "
                      f"{MAX_PROMPT_CHARS} characters")


def _validate_timeline(s: Scenario, bad: Callable[[str], ConfigError]) -> None:
    down: set[int] = set()
    rolled: dict[str, int] = {}
    served = {m for spec in s.node_specs() for m in spec.models}
    for i, f in sorted(enumerate(s.faults), key=lambda p: (p[1].at, p[0])):
        at = f"fault[{i}] ({f.kind} at {f.at:g}s)"
        if not 0 <= f.at < s.duration:
            raise bad(f"{at}: must happen during the run (0 <= at < duration {s.duration:g})")
        if f.fraction is not None:
            # Which nodes it takes is drawn when it happens: only the fraction is checked.
            if not 0 < f.fraction <= 1:
                raise bad(f"{at}: fraction must be in (0, 1], got {f.fraction}")
        elif f.kind in _NODE_FAULTS:
            if f.node is None or not 0 <= f.node < s.node_count:
                raise bad(f"{at}: node {f.node} is out of range (the swarm has "
                          f"{s.node_count} nodes: 0..{s.node_count - 1})")
            if f.kind is FaultKind.REJOIN:
                if f.node not in down:
                    raise bad(f"{at}: node {f.node} is not down (kill or leave it first)")
                down.discard(f.node)
            elif f.node in down:
                raise bad(f"{at}: node {f.node} is already down")
            elif f.kind in (FaultKind.KILL, FaultKind.LEAVE):
                down.add(f.node)
        if f.duration is not None and not f.duration > 0:
            raise bad(f"{at}: duration must be positive")
        if f.kind is FaultKind.SLOW and not f.slowdown > 1:
            raise bad(f"{at}: slowdown must be > 1")
        if f.kind in _MODEL_FAULTS:
            assert f.model is not None  # parser guarantees it for model faults
            if f.model not in served:
                raise bad(f"{at}: model {f.model!r} is served by no node")
            if f.kind is FaultKind.ROLLOUT:
                rolled[f.model] = rolled.get(f.model, 0) + 1
            elif rolled.get(f.model, 0) == 0:
                raise bad(f"{at}: nothing to roll back for {f.model!r} (no rollout before it)")
            else:
                rolled[f.model] -= 1
    if len(down) == s.node_count and s.faults:
        raise bad("the fault timeline takes every node down and never brings one back")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    index: int
    # Seconds from the start of the workload.
    at: float
    model: str


def rate_at(w: Workload, t: float, duration: float) -> float:
    """Requests per second the workload asks for at time t (0 <= t < duration)."""
    if w.shape is Shape.RAMP:
        assert w.end_rate is not None
        return w.rate + (w.end_rate - w.rate) * min(max(t / duration, 0.0), 1.0)
    if w.shape is Shape.BURST:
        assert w.burst_rate is not None
        if any(b.at <= t < b.at + b.length for b in w.bursts):
            return w.burst_rate
    if w.shape is Shape.STEPS:
        rate = w.rate
        for s in w.steps:
            if s.at <= t:
                rate = s.rate
        return rate
    return w.rate


def _expected_count(w: Workload, duration: float) -> float:
    if w.shape is Shape.RAMP:
        return (w.rate + (w.end_rate or 0.0)) / 2 * duration
    if w.shape is Shape.BURST:
        inside = sum(max(0.0, min(b.at + b.length, duration) - b.at) for b in w.bursts)
        return w.rate * (duration - inside) + (w.burst_rate or 0.0) * inside
    if w.shape is Shape.STEPS:
        edges = [0.0, *(s.at for s in w.steps), duration]
        return sum(rate_at(w, a, duration) * (b - a) for a, b in itertools.pairwise(edges))
    return w.rate * duration


def send_times(w: Workload, duration: float, rng: random.Random) -> tuple[float, ...]:
    """Seconds from the start at which requests are sent, ascending, all in [0, duration).

    constant: every 1/rate seconds from 0. poisson: exponential gaps. ramp and
    burst: a Poisson process whose rate follows `rate_at` (thinning).
    """
    if w.shape is Shape.CONSTANT:
        if w.rate <= 0:
            return ()
        n = math.ceil(duration * w.rate - 1e-9)
        return tuple(k / w.rate for k in range(n) if k / w.rate < duration)
    peak = max(rate_at(w, t, duration) for t in _breakpoints(w, duration))
    if peak <= 0:
        return ()
    times: list[float] = []
    t = rng.expovariate(peak)
    while t < duration:
        if w.shape is Shape.POISSON or rng.random() * peak < rate_at(w, t, duration):
            times.append(t)
        t += rng.expovariate(peak)
    return tuple(times)


def _breakpoints(w: Workload, duration: float) -> list[float]:
    points = [0.0, math.nextafter(duration, 0.0)]
    points += [b.at for b in w.bursts if b.at < duration]
    points += [s.at for s in w.steps if s.at < duration]
    return points


@dataclass(frozen=True, slots=True)
class PlannedChat:
    index: int
    # Seconds from the start of the workload.
    at: float
    # Which [[workload.chat]] table (Workload.chats) it comes from.
    mix: int
    # Which of that table's prompts it sends (an index into them, or the shipped ones).
    prompt: int


def plan_chats(w: Workload, duration: float, rng: random.Random) -> tuple[PlannedChat, ...]:
    """Each chat table's Poisson arrivals, merged in time order; each chat with a prompt
    drawn from 2**16 (taken modulo the prompt count when sent). A separate RNG from
    plan_requests' keeps a scenario's requests the same with or without chats."""
    drawn: list[tuple[float, int, int]] = []
    for i, c in enumerate(w.chats):
        t = rng.expovariate(c.rate)
        while t < duration:
            drawn.append((t, i, rng.randrange(1 << 16)))
            t += rng.expovariate(c.rate)
    drawn.sort()
    return tuple(PlannedChat(k, t, i, p) for k, (t, i, p) in enumerate(drawn))


def plan_requests(w: Workload, duration: float, rng: random.Random) -> tuple[PlannedRequest, ...]:
    """Send times, each with the model it asks for (weighted by the model mix)."""
    times = send_times(w, duration, rng)
    names = [m.name for m in w.models]
    weights = [m.weight for m in w.models]
    models = rng.choices(names, weights=weights, k=len(times))
    return tuple(PlannedRequest(i, t, m) for i, (t, m) in enumerate(zip(times, models, strict=True)))

