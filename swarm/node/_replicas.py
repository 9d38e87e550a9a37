"""Local replicas: the driver that gives a busy model another instance on a free device.

`Replicas.run()` measures, every `config.interval` seconds (the Autoscaler's loop:
`swarm.node._autoscaler.every`), each served tensor model's load from its Batcher over the
last interval (mean queue wait of the requests that started, the instances' busy share,
instances, devices) and applies `swarm.autoscale.decide_local`:

- +1: load the model's files once more onto the next device of `devices` that holds no
  instance of it (through the node's own load path, in a thread: off the event loop),
  then add it to the model's Batcher, where it takes batches from the one queue.
- -1: take the latest instance out of the Batcher (`remove_instance`): it finishes the
  batch it runs and gets no more; once it has left, its model is closed. Nothing queued
  or running is lost.

A failed instance load (any exception: a CUDA device out of memory, a file gone) is
logged, counted and kept in `events` (status RPC, `swarm-node status`), and no other
instance of that model is tried for `backoff_initial` seconds, doubling to
`backoff_max`; the node serves on with the instances it has. Every decision's reason,
"steady" included, is kept per model in `latest`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._types import Digest
from swarm.autoscale import LocalConfig, LocalLoad, LocalTrend, decide_local
from swarm.node._autoscaler import Backoff, Counters, every

if TYPE_CHECKING:  # the driver itself needs no torch (tests run it over fake models)
    from swarm.node._batching import Batcher, LoadSample
    from swarm.node._models import ServedModel
    from swarm.node._node import Node
    from swarm.node._runtime import Model

__all__ = ["ADD", "REMOVE", "NodeReplicaHost", "ReplicaEvent", "ReplicaHost", "Replicas",
           "canonical_device", "measure"]

log = logging.getLogger("swarm.replicas")

ADD = "add_instance"
REMOVE = "remove_instance"


def canonical_device(device: str) -> str:
    """One name per device: "cuda" is the first CUDA device, "cuda:0"."""
    return "cuda:0" if device == "cuda" else device


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """One instance added or removed (or tried), and why."""

    at: float  # unix seconds
    action: str  # ADD or REMOVE
    digest: Digest
    name: str
    device: str
    reason: str
    # "started", "done", "failed".
    outcome: str
    error: str = ""


class ReplicaHost(Protocol):
    """What the driver needs of the node."""

    def models(self) -> Iterable[ServedModel]:
        """The served models whose instances may change (those it can load again)."""
        ...

    def serving(self, served: ServedModel) -> bool:
        """Whether `served` is still served (not withdrawn while an instance loaded)."""
        ...

    async def load_instance(self, served: ServedModel, device: str) -> Model:
        """Load and warm up another instance of `served`'s model on `device` (off the loop);
        raises whatever the load raised."""
        ...

    async def release(self, model: Model) -> None:
        """Close an instance no longer in any batcher (frees its device memory)."""
        ...


def measure(last: LoadSample, now: LoadSample, *, instances: int, devices: int) -> LocalLoad:
    """The load between two samples of a Batcher's counters, as decide_local sees it.

    The queue wait is the mean of the requests that started in between, or the wait of
    the oldest request still queued when longer (every instance stuck in long batches)."""
    started = now.started - last.started
    mean = (now.waited - last.waited) / started if started > 0 else 0.0
    wait = max(mean, now.oldest_wait)
    capacity = now.capacity - last.capacity
    utilization = (now.busy - last.busy) / capacity if capacity > 0 else 0.0
    return LocalLoad(now=now.at, instances=instances, devices=devices, queue_wait=max(0.0, wait),
                     utilization=min(1.0, max(0.0, utilization)))


class Replicas:
    """Runs decide_local every interval for each served model and carries out its step."""

    def __init__(self, host: ReplicaHost, devices: Sequence[str], config: LocalConfig, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._host = host
        self.devices = tuple(canonical_device(d) for d in devices)
        self.config = config
        self._clock = clock
        self._samples: dict[Digest, LoadSample] = {}
        self._trends: dict[Digest, LocalTrend] = {}
        self._backoff: dict[Digest, Backoff] = {}
        # The latest decision's reason per model ("steady", "... (delay starts)", ...).
        self.latest: dict[Digest, str] = {}
        self.events: collections.deque[ReplicaEvent] = collections.deque(maxlen=config.history)
        self.counters = Counters()
        self.decisions = 0

    async def run(self) -> None:
        """Decide and act every interval until cancelled."""
        await every(self._clock, self.config.interval, self.step)

    def _free_device(self, batcher: Batcher) -> str | None:
        """The first device of `devices` that holds no instance of the model (a device
        named n times holds up to n)."""
        taken = collections.Counter(canonical_device(str(m.device)) for m in batcher.instances)
        for device in self.devices:
            if taken[device] > 0:
                taken[device] -= 1
            else:
                return device
        return None

    async def step(self) -> None:
        """One decision per served model, its step carried out (returns once done)."""
        self.decisions += 1
        seen: set[Digest] = set()
        for served in list(self._host.models()):
            digest = served.digest
            seen.add(digest)
            batcher = served.batcher
            sample = batcher.load_sample()
            last = self._samples.get(digest)
            self._samples[digest] = sample
            if last is None:
                continue
            load = measure(last, sample, instances=len(batcher.instances),
                           devices=len(self.devices))
            decision = decide_local(load, self._trends.get(digest, LocalTrend()), self.config)
            self._trends[digest] = decision.trend
            why = decision.why
            if decision.step > 0:
                device = self._free_device(batcher)
                backoff = self._backoff.get(digest)
                if device is None:
                    why += " (no free device)"
                elif backoff is not None and backoff.until > self._clock.monotonic():
                    why += (f" (a load failed: none tried for another "
                            f"{backoff.until - self._clock.monotonic():.0f} s)")
                else:
                    await self._add(served, device, why)
                    self._samples[digest] = batcher.load_sample()  # measure the new state
            elif decision.step < 0:
                await self._remove(served, why)
                self._samples[digest] = batcher.load_sample()
            self.latest[digest] = why
        for gone in set(self._samples) - seen:
            for table in (self._samples, self._trends, self.latest, self._backoff):
                table.pop(gone, None)

    def _event(self, action: str, served: ServedModel, device: str, reason: str, outcome: str,
               error: str = "") -> None:
        self.events.append(ReplicaEvent(self._clock.time(), action, served.digest, served.name,
                                        device, reason, outcome, error))
        self.counters.add(action, outcome)

    async def _add(self, served: ServedModel, device: str, why: str) -> None:
        extra = {"action": ADD, "model": served.name, "digest": served.digest.short,
                 "device": device, "reason": why}
        log.info("replica decision", extra=extra)
        self._event(ADD, served, device, why, "started")
        try:
            model = await self._host.load_instance(served, device)
        except Exception as exc:  # whatever a load raises (CUDA out of memory...), serve on
            self._failed(served, device, why, extra, f"{type(exc).__name__}: {exc}")
            return
        if not self._host.serving(served):
            await self._host.release(model)
            self._event(ADD, served, device, why, "failed", "the version was withdrawn meanwhile")
            return
        try:
            if model.digest != served.digest:  # its file changed since: another model
                raise ValueError(f"the instance loaded is {model.digest.short}, not "
                                 f"{served.digest.short}")
            served.batcher.add_instance(model)
        except ValueError as exc:  # not the same model: never serve it
            await self._host.release(model)
            self._failed(served, device, why, extra, f"{type(exc).__name__}: {exc}")
            return
        self._backoff.pop(served.digest, None)
        log.info("replica added", extra={**extra, "instances": len(served.batcher.instances)})
        self._event(ADD, served, device, why, "done")

    def _failed(self, served: ServedModel, device: str, why: str, extra: dict[str, str],
                error: str) -> None:
        backoff = self._backoff[served.digest] = Backoff.after(
            self._backoff.get(served.digest), self._clock.monotonic(),
            self.config.backoff_initial, self.config.backoff_max)
        error += f" (not tried again for {backoff.delay:g}s)"
        log.warning("replica load failed", extra={**extra, "error": error})
        self._event(ADD, served, device, why, "failed", error)

    async def _remove(self, served: ServedModel, why: str) -> None:
        batcher = served.batcher
        model = batcher.remove_instance()
        if model is None:  # one left: never below it
            return
        device = canonical_device(str(model.device))
        extra = {"action": REMOVE, "model": served.name, "digest": served.digest.short,
                 "device": device, "reason": why}
        log.info("replica decision", extra=extra)
        self._event(REMOVE, served, device, why, "started")
        await batcher.wait_dropped(model)  # the batch it ran has finished
        await self._host.release(model)
        log.info("replica removed", extra={**extra, "instances": len(batcher.instances)})
        self._event(REMOVE, served, device, why, "done")


Source = Callable[[str], "Model"]


class NodeReplicaHost:
    """The node as a ReplicaHost: its tensor models loaded from a reference or a registry
    version (`Node.sources`) may have replicas; instances are the node's to close."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def models(self) -> list[ServedModel]:
        node = self._node
        return [s for s in node.table if s.digest in node.sources and s.digest not in node.releasing]

    def serving(self, served: ServedModel) -> bool:
        return any(s is served for s in self._node.table)

    async def load_instance(self, served: ServedModel, device: str) -> Model:
        load = self._node.sources[served.digest]
        task = asyncio.ensure_future(asyncio.to_thread(load, device))
        try:
            model = await asyncio.shield(task)
        except asyncio.CancelledError:  # the node stops: close it once the thread is done
            task.add_done_callback(_close_loaded)
            raise
        self._node._owned.append(model)  # closed when released, or when the node stops
        return model

    async def release(self, model: Model) -> None:
        owned = self._node._owned
        if model in owned:
            owned.remove(model)
        await asyncio.to_thread(model.close)


def _close_loaded(task: asyncio.Future[Model]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
