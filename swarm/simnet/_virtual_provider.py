"""Simulated providers and the simulated wire the clients' real Routers call through.

`Wire.caller(...)` is a `swarm.routing` Caller: the client's Router hands it a
candidate, the OIP request and the time left; the request travels with the pair's
one-way latency to the provider (or is lost in a partition), and the answer travels
back the same way. The Router sees what it sees in production: a response carrying
the provider's queue and compute time, or an InferenceError with its gRPC code
(UNAVAILABLE when a crash resets the connection, RESOURCE_EXHAUSTED from a full
queue, NOT_FOUND for a model the provider does not serve, DEADLINE_EXCEEDED when the
time left runs out).

`VirtualProvider` runs the real `Membership` (signed adverts from its live state) and
a simulated model server: per model a bounded queue batched by the node's own policy,
`swarm.node.decide`, re-decided at every arrival and completion and when a Wait
expires, with the same arrival-gap and execution-time EWMAs as the node's Batcher. A
batch of n items takes (base + per_item x n) x the provider's slowness x a lognormal
factor, in virtual time.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from swarm import __version__
from swarm._clock import Clock
from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._types import Digest, PeerId
from swarm.node import ARRIVAL_GAP_WEIGHT, TIMING_WEIGHT, BatchPolicy, Dispatch, QueueView, decide
from swarm.protocol import (
    Advert,
    Hardware,
    Identity,
    Membership,
    MembershipConfig,
    ModelOffer,
    Price,
)
from swarm.protocol.testing import MemoryGossip, MemoryNetwork
from swarm.scheduler import AdmissionPolicy, Candidate, admits
from swarm.simnet._latency import Latency
from swarm.simnet._scenario import NodeSpec, VirtualSettings

__all__ = ["ProviderContext", "VirtualProvider", "Wire", "batch_policy"]

_HARDWARE = Hardware("gpu", 1, 24 << 30, "simulated")

Outcome = pb.ModelInferResponse | InferenceError


def batch_policy(settings: VirtualSettings) -> BatchPolicy:
    """The node's batching policy, configured as the scenario's providers are."""
    return BatchPolicy(max_batch_size=settings.max_batch,
                       max_queue_delay=settings.max_queue_delay_ms / 1000,
                       max_queue_size=settings.max_queue, enabled=settings.batching)


class _Call:
    """One attempt of a client's Router, from send to answer."""

    __slots__ = ("admissible", "client", "deadline", "enqueued", "future", "items", "node",
                 "request", "timer")

    def __init__(self, future: asyncio.Future[pb.ModelInferResponse],
                 request: pb.ModelInferRequest, client: PeerId, node: int,
                 deadline: float) -> None:
        self.future = future
        self.request = request
        self.client = client
        self.node = node  # the client's latency index
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.enqueued = 0.0
        self.items = 1
        self.admissible = False  # the Router allows an admission refusal


def _expire(call: _Call) -> None:
    """The call's own timeout (gRPC's deadline): the Router gets DEADLINE_EXCEEDED."""
    if not call.future.done():
        call.future.set_exception(DeadlineExceededError("deadline exceeded"))


def _deliver(call: _Call, outcome: Outcome) -> None:
    future = call.future
    if future.done():  # timed out, or the Router cancelled it (a hedge that lost)
        return
    if call.timer is not None:
        call.timer.cancel()
    if isinstance(outcome, InferenceError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Wire:
    """Requests from clients to providers and answers back, at each pair's latency.

    `providers` maps a provider's peer id to the provider; requests are never lost,
    except across a partition (the MemoryNetwork's), where they vanish silently and the
    caller's deadline ends them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, network: MemoryNetwork,
                 latency: Latency, rng: random.Random) -> None:
        self.loop = loop
        self.network = network
        self.latency = latency
        self.rng = rng
        self.providers: dict[PeerId, VirtualProvider] = {}

    def caller(self, client: PeerId, node: int) -> Callable[
            [Candidate, pb.ModelInferRequest, float], asyncio.Future[pb.ModelInferResponse]]:
        """The Caller of the client `client` (latency index `node`) for its Router."""
        loop, network, providers = self.loop, self.network, self.providers

        def call(candidate: Candidate, request: pb.ModelInferRequest,
                 timeout: float) -> asyncio.Future[pb.ModelInferResponse]:
            future: asyncio.Future[pb.ModelInferResponse] = loop.create_future()
            provider = providers[candidate.peer]
            sent = _Call(future, request, client, node, loop.time() + timeout)
            sent.admissible = candidate.admissible
            sent.timer = loop.call_later(timeout, _expire, sent)
            if network.reachable(client, provider.peer_id):  # else lost in the cut
                delay = self.latency.one_way(node, provider.index, self.rng)
                loop.call_later(delay, provider.arrive, sent)
            return future

        return call

    def reply(self, provider: VirtualProvider, call: _Call, outcome: Outcome) -> None:
        """`provider` answers `call` (lost when a partition cuts them, or no one waits)."""
        if call.future.done() or not self.network.reachable(provider.peer_id, call.client):
            return
        delay = self.latency.one_way(provider.index, call.node, self.rng)
        self.loop.call_later(delay, _deliver, call, outcome)


@dataclass(slots=True)
class ProviderContext:
    """What every provider of one run shares."""

    loop: asyncio.AbstractEventLoop
    clock: Clock
    network: MemoryNetwork
    wire: Wire
    settings: VirtualSettings
    policy: BatchPolicy
    membership: MembershipConfig
    # Runs a provider's background coroutine in the run's TaskGroup.
    spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
    # Model name of each digest the scenario serves.
    names: dict[Digest, str]
    # Autoscaling runs in this swarm: adverts carry the demand signal (measured over
    # `demand_window` seconds) and the versions providers store (registry holders).
    autoscale: bool = False
    demand_window: float = 60.0
    # Admission, as the node applies it (VirtualSettings.admission_wait).
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)


class _Queue:
    """One model's queue at one provider, with what `decide` needs to know of it."""

    __slots__ = ("arrival_gap", "arrived", "batch", "busy", "demand", "digest", "done",
                 "execution_time", "free_since", "items_per_second", "last_arrival", "mark",
                 "name", "pending", "started", "wait", "waited", "waits")

    def __init__(self, digest: Digest, name: str) -> None:
        self.digest = digest
        self.name = name
        self.pending: deque[_Call] = deque()
        # The batch executing, and the timer that ends it.
        self.batch: list[_Call] | None = None
        self.started = 0.0  # when it began
        self.done: asyncio.TimerHandle | None = None
        # A Wait(seconds) running out.
        self.wait: asyncio.TimerHandle | None = None
        self.last_arrival: float | None = None
        # EWMAs as the node's Batcher keeps them (None: nothing seen yet).
        self.arrival_gap: float | None = None
        self.execution_time: float | None = None
        self.items_per_second: float | None = None
        # When the model last finished a batch (free again), as the Batcher keeps it.
        self.free_since = -math.inf
        # The demand signal's counters (as the node's DemandMeter reads its statistics):
        # items arrived, seconds queued over `waits` requests, seconds executing.
        self.arrived = 0
        self.waited = 0.0
        self.waits = 0
        self.busy = 0.0
        # The counters at the last measurement (time first), and what it measured.
        self.mark: tuple[float, int, float, int, float] | None = None
        self.demand: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def measure(self, now: float, window: float) -> bool:
        """Recompute (arrival rate, queue wait, utilization) once `window` has passed."""
        mark = self.mark
        if mark is not None and now - mark[0] < window:
            return False
        self.mark = (now, self.arrived, self.waited, self.waits, self.busy)
        if mark is None:
            return False
        dt = now - mark[0]
        waits = self.waits - mark[3]
        self.demand = ((self.arrived - mark[1]) / dt,
                       (self.waited - mark[2]) / waits if waits else 0.0,
                       min(1.0, (self.busy - mark[4]) / dt))
        return True

    def purge(self) -> None:
        """Forget calls whose client gave up (as the Batcher skips cancelled futures)."""
        pending = self.pending
        if any(c.future.done() for c in pending):
            self.pending = deque(c for c in pending if not c.future.done())


def _ewma(old: float | None, value: float, weight: float = TIMING_WEIGHT) -> float:
    """The node's Batcher's EWMA (`swarm.node`'s weights)."""
    return value if old is None else old + weight * (value - old)


class VirtualProvider:
    """A simulated provider: real Membership, a simulated model server batching by `decide`."""

    UP, DRAINING, DOWN = "up", "draining", "down"

    def __init__(self, ctx: ProviderContext, index: int, spec: NodeSpec, group: int,
                 slowness: float, identity: Identity, rng: random.Random) -> None:
        self.ctx = ctx
        self.index = index
        self.spec = spec
        self.group = group
        self.slowness = slowness
        self.identity = identity
        self.peer_id = identity.peer_id
        self.endpoint = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:8001"
        self.price = Price(spec.price_per_request, spec.price_per_1k_items)
        self.queues = self._new_queues()
        self.state = self.DOWN
        self.slowdown = 1.0
        self.rng = rng
        self.host: MemoryGossip | None = None
        self.membership: Membership | None = None
        self.task: asyncio.Task[None] | None = None
        self.published = 0
        self.gossip: list[tuple[int, int]] = []  # (messages, bytes) of hosts it has left
        # Batches executed, by items per batch.
        self.batch_sizes: dict[int, int] = {}
        self._advert: Advert | None = None
        # Autoscaling: versions its autoscaler loaded, and those being released.
        self.autoscaled: set[Digest] = set()
        self.releasing: set[Digest] = set()

    def _new_queues(self) -> dict[str, _Queue]:
        """Empty queues, keyed as requests name their model (`model_version`: the digest)."""
        digest_of = {name: d for d, name in self.ctx.names.items()}
        return {str(digest_of[name]): _Queue(digest_of[name], name) for name in self.spec.models}

    # ------------------------------------------------------------------ advert

    def advert(self) -> Advert:
        """What the provider offers now (Membership adds sequence, timestamp and TTL)."""
        ctx = self.ctx
        if ctx.autoscale:
            now = ctx.loop.time()
            for q in self.queues.values():
                if q.measure(now, ctx.demand_window):
                    self._advert = None
        if self._advert is None:
            served = [q for q in self.queues.values() if q.digest not in self.releasing]
            offers = tuple(ModelOffer(
                digest=q.digest, name=q.name, max_batch_size=self.ctx.policy.max_batch_size,
                items_per_second=round(q.items_per_second or 0.0, 1),
                queue_depth=len(q.pending),
                arrival_rate=q.demand[0], queue_wait=q.demand[1], utilization=q.demand[2],
                autoscaled=q.digest in self.autoscaled) for q in served)
            self._advert = Advert(
                peer_id=self.peer_id, endpoints=(self.endpoint,), models=offers,
                sequence=0, timestamp=0.0, ttl=0.0,
                queue_depth=sum(o.queue_depth for o in offers), hardware=_HARDWARE,
                price=self.price, region=self.spec.region, software_version=__version__,
                draining=self.state is not self.UP,
                stored=tuple(q.digest for q in served) if ctx.autoscale else ())
        return self._advert

    # ------------------------------------------------------------------ autoscaling

    def add_model(self, digest: Digest) -> None:
        """Serve a version loaded by the autoscaler (advertised from now on)."""
        self.queues[str(digest)] = _Queue(digest, self.ctx.names[digest])
        self.autoscaled.add(digest)
        self._changed()

    def release(self, digest: Digest) -> None:
        """Stop advertising a version (the first step of an unload)."""
        self.releasing.add(digest)
        self._changed()

    def remove_model(self, digest: Digest) -> None:
        """Take the version out: new requests for it are refused (clients retry elsewhere);
        what it has queued still executes (the queue object lives on in its timers)."""
        self.queues.pop(str(digest), None)
        self.releasing.discard(digest)
        self.autoscaled.discard(digest)
        self._changed()

    def _changed(self) -> None:
        self._advert = None
        if self.membership is not None:
            self.membership.notify_change()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        ctx = self.ctx
        self.state = self.UP
        self.slowdown = 1.0
        self.queues = self._new_queues()  # a (re)started node's batchers start afresh
        self._advert = None
        self.host = ctx.network.join(self.peer_id)
        self.membership = Membership(
            self.host, identity=self.identity, source=self.advert, clock=ctx.clock,
            rng=random.Random(self.rng.getrandbits(64)), config=ctx.membership)
        self.task = ctx.spawn(self.membership.run(), f"provider-{self.index}")

    def stop_gossip(self) -> None:
        """Leave the gossip network, keeping the host's counters."""
        if self.task is not None:
            self.task.cancel()
        if self.membership is not None:
            self.published += self.membership.counters["published"]
        if self.host is not None:
            s = self.host.stats()
            self.gossip.append((s.messages_sent + s.messages_received,
                                s.bytes_sent + s.bytes_received))
        self.task = self.membership = self.host = None

    def kill(self) -> None:
        """Crash: the process dies; its connections reset (clients see UNAVAILABLE)."""
        self.ctx.network.kill(self.peer_id)
        self.stop_gossip()
        self.state = self.DOWN
        reset = f"{self.endpoint}: connection reset"
        for q in self.queues.values():
            calls = [*(q.batch or ()), *q.pending]
            for timer in (q.done, q.wait):
                if timer is not None:
                    timer.cancel()
            q.pending, q.batch, q.done, q.wait = deque(), None, None, None
            for call in calls:
                self.ctx.wire.reply(self, call, UnavailableError(reset))

    async def leave(self) -> None:
        """Graceful: advertise draining, refuse new work, finish the queue, then go."""
        self.state = self.DRAINING
        self._advert = None
        if self.membership is not None:  # tell clients first, as the node does
            await self.membership.publish_now()
        if self._idle():
            await self._close()

    def _idle(self) -> bool:
        for q in self.queues.values():
            q.purge()
            if q.pending or q.batch is not None:
                return False
        return True

    async def _close(self) -> None:
        host = self.host
        self.stop_gossip()
        self.state = self.DOWN
        if host is not None:
            await host.close()

    # ------------------------------------------------------------------ serving

    def arrive(self, call: _Call) -> None:
        """A request reached the provider (a loop callback); as the node's servicer and
        Batcher.submit take it."""
        wire = self.ctx.wire
        if self.state is not self.UP:  # refused (down) or UNAVAILABLE (draining)
            wire.reply(self, call, UnavailableError(f"{self.endpoint}: not serving"))
            return
        request = call.request
        q = self.queues.get(request.model_version)
        if q is None:
            wire.reply(self, call, ModelNotFoundError(
                f"{self.endpoint}: {request.model_name}@{request.model_version} is not served"))
            return
        if len(q.pending) >= self.ctx.policy.max_queue_size:
            q.purge()  # clients that gave up must not hold slots
            if len(q.pending) >= self.ctx.policy.max_queue_size:
                wire.reply(self, call, OverloadedError(f"{self.endpoint}: queue full"))
                return
        now = self.ctx.loop.time()
        if call.admissible and not self._admits(q, now):
            depth = len(q.pending)
            wire.reply(self, call, OverloadedError(
                f"{self.endpoint}: {depth} queued, past the admission bound", queue_depth=depth))
            return
        # A call past its deadline is not answered: its client's own timer, set for the
        # same instant, has ended it already.
        if call.deadline <= now:
            return
        call.items = request.inputs[0].shape[0] if request.inputs else 1
        call.enqueued = now
        q.arrived += call.items
        if q.last_arrival is not None:
            q.arrival_gap = _ewma(q.arrival_gap, now - q.last_arrival, ARRIVAL_GAP_WEIGHT)
        q.last_arrival = now
        q.pending.append(call)
        self._advert = None
        self._decide(q)

    def _admits(self, q: _Queue, now: float) -> bool:
        """The node's admission rule (swarm.scheduler.admits) on what its Batcher knows."""
        q.purge()
        executing = 0.0 if q.batch is None else max(
            0.0, (q.execution_time or 0.0) - (now - q.started))
        return admits(self.ctx.admission, sum(c.items for c in q.pending),
                      q.items_per_second or 0.0, self.ctx.policy.max_batch_size, executing)

    def _decide(self, q: _Queue) -> None:
        """Apply `decide` to the queue until it says Wait (as Batcher.run loops)."""
        loop = self.ctx.loop
        if q.wait is not None:
            q.wait.cancel()
            q.wait = None
        while True:
            now = loop.time()
            pending = q.pending
            while pending and pending[0].future.done():  # clients that gave up
                pending.popleft()
            view = QueueView(
                sizes=tuple(c.items for c in pending if not c.future.done()),
                oldest_wait=now - pending[0].enqueued if pending else 0.0,
                busy=q.batch is not None,
                arrival_gap=math.inf if q.arrival_gap is None else q.arrival_gap,
                execution_time=q.execution_time or 0.0,
                free_for=now - q.free_since)
            decision = decide(self.ctx.policy, view)
            if not isinstance(decision, Dispatch):
                if decision.seconds is not None:
                    q.wait = loop.call_later(decision.seconds, self._decide, q)
                elif self.state is self.DRAINING and self._idle():
                    self.ctx.spawn(self._close(), f"provider-{self.index}-close")
                return
            batch = self._take(q, decision.requests, now)
            if batch:
                self._execute(q, batch, now)

    @staticmethod
    def _take(q: _Queue, count: int, now: float) -> list[_Call]:
        batch: list[_Call] = []
        pending = q.pending
        while pending and len(batch) < count:
            call = pending.popleft()
            # Past its deadline: the node fails it unexecuted (its client has timed out).
            if call.future.done() or call.deadline <= now:
                continue
            batch.append(call)
        return batch

    def _execute(self, q: _Queue, batch: list[_Call], started: float) -> None:
        s = self.ctx.settings
        items = sum(c.items for c in batch)
        service = ((s.base_ms + s.per_item_ms * items) / 1000 * self.slowness * self.slowdown
                   * self.rng.lognormvariate(0.0, s.service_sigma))
        q.batch = batch
        q.started = started
        self._advert = None
        self.batch_sizes[items] = self.batch_sizes.get(items, 0) + 1
        q.busy += service
        q.waits += len(batch)
        q.waited += sum(started - c.enqueued for c in batch)
        q.done = self.ctx.loop.call_later(service, self._done, q, started, service, items)

    def _done(self, q: _Queue, started: float, service: float, items: int) -> None:
        batch, q.batch, q.done = q.batch or [], None, None
        q.free_since = self.ctx.loop.time()
        q.execution_time = _ewma(q.execution_time, service)
        q.items_per_second = _ewma(q.items_per_second, items / service if service > 0 else 0.0)
        wire = self.ctx.wire
        for call in batch:
            wire.reply(self, call, _response(q, started - call.enqueued, service, items))
        self._advert = None
        self._decide(q)


def _response(q: _Queue, queued: float, compute: float, items: int) -> pb.ModelInferResponse:
    """What the node's servicer answers, less the outputs: the timing parameters the
    Router feeds into its observations."""
    response = pb.ModelInferResponse(model_name=q.name, model_version=str(q.digest))
    params = response.parameters
    params["swarm_queue_us"].int64_param = round(queued * 1e6)
    params["swarm_compute_us"].int64_param = round(compute * 1e6)
    params["swarm_batch_items"].int64_param = items
    params["swarm_queue_depth"].int64_param = len(q.pending)  # as the node: waiting now
    return response
