"""Dynamic batching: a pure policy (`decide`) and the asyncio `Batcher` that applies it.

The policy sees a frozen `QueueView` and answers Dispatch(n) or Wait(seconds).
Batching only pays when requests arrive faster than one unbatched execution
takes; otherwise a request goes straight to an idle model, so a lone request
never waits out the delay. Under load the batcher holds requests until the batch
is full, reaches a preferred size, or its oldest request has waited the delay:
`max_queue_delay`, or `max_queue_delay_fraction` of one execution when that is
longer (a fuller batch of a slow model is worth more), counted from when the model
was free to take it. While a batch executes, the next one forms.

A Batcher may hold several instances of its model (local replicas, one per device:
`add_instance`): they share the one queue, and a batch goes to whichever instance is
free; the policy sees the queue as busy only while every instance is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    OverloadedError,
    SwarmError,
    UnavailableError,
)

if TYPE_CHECKING:
    from swarm.node._runtime import Model

__all__ = [
    "ARRIVAL_GAP_WEIGHT",
    "TIMING_WEIGHT",
    "BatchPolicy",
    "BatchResult",
    "Batcher",
    "Dispatch",
    "LoadSample",
    "QueueView",
    "Wait",
    "decide",
]

# EWMA weights of what the policy sees (the simulator's providers keep the same). Arrival
# gaps over ~20 arrivals: closed-loop clients arrive in bursts (a batch's answers come
# back together), and a faster average would swing with each burst's long pause.
ARRIVAL_GAP_WEIGHT = 0.05
# Execution time and items/s of recent batches.
TIMING_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    # Most items in one forward pass (requests are never split across batches).
    max_batch_size: int = 64
    # Longest a request waits for a fuller batch while requests keep arriving...
    max_queue_delay: float = 0.002
    # ...or this fraction of one execution's time, when that is longer: a slow model's
    # fuller batch is worth a longer wait (a lone request still never waits: `decide`).
    max_queue_delay_fraction: float = 0.2
    # Batch sizes (in items) to dispatch at once when reached; () = only full batches.
    preferred_batch_sizes: tuple[int, ...] = ()
    # Requests waiting per model before new ones get RESOURCE_EXHAUSTED.
    max_queue_size: int = 1024
    # False: every request executes alone (for comparison and for models that cannot batch).
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_queue_delay < 0:
            raise ValueError("max_queue_delay must be >= 0")
        if not 0 <= self.max_queue_delay_fraction <= 1:
            raise ValueError("max_queue_delay_fraction must be in [0, 1]")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size must be >= 1")
        if any(not 1 <= p <= self.max_batch_size for p in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must lie in [1, max_batch_size]")


@dataclass(frozen=True, slots=True)
class QueueView:
    """What the policy sees: queued request sizes (oldest first) and recent timing."""

    sizes: tuple[int, ...]
    # Seconds the oldest queued request has waited.
    oldest_wait: float
    # An execution is in flight.
    busy: bool
    # EWMA of the gap between request arrivals (seconds; inf when unknown).
    arrival_gap: float
    # EWMA of one execution's duration (seconds; 0 when unknown).
    execution_time: float
    # Seconds since an instance last became free (inf: none has run yet).
    free_for: float = math.inf


@dataclass(frozen=True, slots=True)
class Dispatch:
    requests: int


@dataclass(frozen=True, slots=True)
class Wait:
    # Re-decide after this many seconds, or at the next arrival/completion (None: only then).
    seconds: float | None


def decide(policy: BatchPolicy, view: QueueView) -> Dispatch | Wait:
    """Next step for one model's queue."""
    if not view.sizes or view.busy:
        return Wait(None)
    if not policy.enabled:
        return Dispatch(1)
    count, items = 0, 0
    for size in view.sizes:
        if items + size > policy.max_batch_size and count > 0:
            break
        count += 1
        items += size
    if count < len(view.sizes) or items >= policy.max_batch_size:
        return Dispatch(count)
    if items in policy.preferred_batch_sizes:
        return Dispatch(count)
    # The wait for company counts from when the model could first have taken the oldest
    # request: one that queued behind a running batch has not waited for a fuller one yet.
    delay = max(policy.max_queue_delay, policy.max_queue_delay_fraction * view.execution_time)
    remaining = delay - min(view.oldest_wait, view.free_for)
    if remaining <= 0:
        return Dispatch(count)
    # Waiting helps only when arrivals outpace unbatched execution (and one is due in time).
    if view.arrival_gap >= max(view.execution_time, 1e-9) or view.arrival_gap > remaining:
        return Dispatch(count)
    return Wait(remaining)


@dataclass(slots=True)
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass(slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    items: int
    enqueued: float
    deadline: float | None
    future: asyncio.Future[BatchResult]


@dataclass(slots=True)
class BatchTiming:
    batch_size: int
    requests: int
    input_seconds: float
    infer_seconds: float
    output_seconds: float


@dataclass(slots=True)
class _Ewma:
    alpha: float
    value: float | None = None

    def update(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


@dataclass
class BatcherHooks:
    """Observers the node wires to metrics (kept out of the batching logic)."""

    on_batch: Callable[[BatchTiming], None] = lambda timing: None
    on_expired: Callable[[int], None] = lambda count: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


@dataclass(eq=False)
class _Instance:
    """One instance of the model (one device) and the thread that executes on it."""

    model: Model
    executor: ThreadPoolExecutor
    busy: bool = False
    busy_since: float = 0.0
    batches: int = 0
    # Taken out (remove_instance): finishes what it runs, then gets nothing more.
    retired: bool = False
    # Set once the instance is out of the batcher (nothing runs on it any more).
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """A Batcher's cumulative load counters at one moment (`Batcher.load_sample`); the
    difference of two is the load over the time between them."""

    at: float
    # Requests taken from the queue into a batch, and the seconds they waited there.
    started: int
    waited: float
    # Seconds the instances executed, together (a running execution counts until now).
    busy: float
    # Instance-seconds: the instances' number integrated over time.
    capacity: float
    # Requests waiting now, and how long the oldest has.
    queued: int
    oldest_wait: float


class Batcher:
    """Queues requests for one model version and executes them in batches off the loop.

    `clock` times the queue (arrival gaps, waits, deadlines: a request's `deadline`
    is on its `monotonic()`) and the policy's Wait is a sleep on it. `model` is the first
    instance; `add_instance` adds more (local replicas), which share the queue.
    """

    def __init__(self, model: Model, policy: BatchPolicy, *, clock: Clock = SYSTEM_CLOCK,
                 hooks: BatcherHooks | None = None) -> None:
        self.model = model
        self.policy = policy
        self._clock = clock
        self._hooks = hooks or BatcherHooks()
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._instances: list[_Instance] = []
        self._closed = False
        self._last_arrival: float | None = None
        self._arrival_gap = _Ewma(ARRIVAL_GAP_WEIGHT)
        self._execution_time = _Ewma(TIMING_WEIGHT)
        self._free_since = -math.inf
        self._items_per_second = _Ewma(TIMING_WEIGHT)
        # Cumulative load counters (LoadSample): requests started and their queue waits,
        # finished executions' seconds, instance-seconds up to `_capacity_since`.
        self._started = 0
        self._waited = 0.0
        self._busy_seconds = 0.0
        self._capacity_seconds = 0.0
        self._capacity_since = clock.monotonic()
        self.add_instance(model)
        self._idle = asyncio.Event()
        self._idle.set()

    def add_instance(self, model: Model) -> None:
        """Serve the queue with one more instance of the model (e.g. on another device):
        batches go to whichever instance is free. It must compute what `self.model` does."""
        if model.spec != self.model.spec:
            raise ValueError(f"an instance of {model.name} must have the same spec")
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"exec-{model.name}",
                                      initializer=model.prepare_thread)
        self._count_capacity()
        self._instances.append(_Instance(model, executor))
        self._wakeup.set()

    def remove_instance(self) -> Model | None:
        """Take the most recently added instance out (never the last one): it finishes the
        batch it runs and gets no more. Returns its model (to release), None when one is left."""
        live = [i for i in self._instances if not i.retired]
        if len(live) <= 1:
            return None
        instance = live[-1]
        instance.retired = True
        if not instance.busy:
            self._drop(instance)
        return instance.model

    def _drop(self, instance: _Instance) -> None:
        self._count_capacity()
        self._instances.remove(instance)
        instance.executor.shutdown(wait=False)
        instance.dropped.set()

    async def wait_dropped(self, model: Model) -> None:
        """Wait until the instance of `model` (taken out by remove_instance) has finished
        the batch it ran and left: its model may be closed then."""
        instance = next((i for i in self._instances if i.model is model), None)
        if instance is not None:
            await instance.dropped.wait()

    def _count_capacity(self) -> None:
        now = self._clock.monotonic()
        self._capacity_seconds += len(self._instances) * (now - self._capacity_since)
        self._capacity_since = now

    def load_sample(self) -> LoadSample:
        """The cumulative load counters now (for measuring the load over a window)."""
        now = self._clock.monotonic()
        running = sum(now - i.busy_since for i in self._instances if i.busy)
        capacity = self._capacity_seconds + len(self._instances) * (now - self._capacity_since)
        waiting = [p for p in self._queue if not p.future.done()]
        return LoadSample(now, self._started, self._waited, self._busy_seconds + running,
                          capacity, len(waiting), now - waiting[0].enqueued if waiting else 0.0)

    @property
    def instances(self) -> list[Model]:
        """The model instances serving the queue (first: `model`)."""
        return [i.model for i in self._instances if not i.retired]

    @property
    def batches_per_instance(self) -> list[int]:
        """Batches each serving instance has executed, in `instances` order."""
        return [i.batches for i in self._instances if not i.retired]

    def _free(self) -> _Instance | None:
        return next((i for i in self._instances if not i.busy and not i.retired), None)

    @property
    def _busy(self) -> bool:
        """No instance is free (what the policy calls busy)."""
        return self._free() is None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_items(self) -> int:
        """Items of the requests waiting (not executing); what admission weighs."""
        return sum(p.items for p in self._queue if not p.future.done())

    @property
    def executing_left(self) -> float:
        """Seconds until an instance is expected to be free (an execution's EWMA less what
        has passed; 0 when one is free): what admission adds to the queued work."""
        if not self._busy:
            return 0.0
        now = self._clock.monotonic()
        expected = self._execution_time.value or 0.0
        return max(0.0, min(expected - (now - i.busy_since) for i in self._instances))

    @property
    def items_per_second(self) -> float:
        """Items per second the instances execute together (each one's EWMA, times their
        number)."""
        return (self._items_per_second.value or 0.0) * len(self.instances)

    async def submit(self, inputs: Mapping[str, np.ndarray], items: int,
                     deadline: float | None = None) -> BatchResult:
        """Queue one request of `items` rows; resolves when its batch has executed."""
        if self._closed:
            raise UnavailableError(f"{self.model.name} is shutting down")
        if items > self.policy.max_batch_size:
            raise InvalidInputError(
                f"batch of {items} exceeds {self.model.name}'s max batch size "
                f"{self.policy.max_batch_size}"
            )
        if len(self._queue) >= self.policy.max_queue_size:
            # Requests whose clients gave up (cancelled futures) must not hold slots.
            self._queue = deque(p for p in self._queue if not p.future.done())
        if len(self._queue) >= self.policy.max_queue_size:
            raise OverloadedError(
                f"{self.model.name}: queue full ({self.policy.max_queue_size} requests)"
            )
        now = self._clock.monotonic()
        if deadline is not None and deadline <= now:
            self._hooks.on_expired(1)
            raise DeadlineExceededError("deadline passed before the request was queued")
        if self._last_arrival is not None:
            self._arrival_gap.update(now - self._last_arrival)
        self._last_arrival = now
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, items, now, deadline, future))
        self._idle.clear()
        self._hooks.on_queue_depth(len(self._queue))
        self._wakeup.set()
        return await future

    def _view(self, now: float) -> QueueView:
        while self._queue and self._queue[0].future.done():  # cancelled by the client
            self._queue.popleft()
        return QueueView(
            sizes=tuple(p.items for p in self._queue if not p.future.done()),
            oldest_wait=now - self._queue[0].enqueued if self._queue else 0.0,
            busy=self._busy,
            arrival_gap=self._arrival_gap.value if self._arrival_gap.value is not None else math.inf,
            execution_time=self._execution_time.value or 0.0,
            free_for=now - self._free_since,
        )

    def _take(self, count: int, now: float) -> list[_Pending]:
        batch: list[_Pending] = []
        expired = 0
        while self._queue and len(batch) < count:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceededError("deadline passed while the request was queued")
                )
                expired += 1
                continue
            batch.append(pending)
            self._started += 1
            self._waited += now - pending.enqueued
        if expired:
            self._hooks.on_expired(expired)
        self._hooks.on_queue_depth(len(self._queue))
        return batch

    async def run(self) -> None:
        """Serve the queue until cancelled; cancellation fails what is still queued.

        With one instance a batch executes inline; with several, each batch runs in a task
        of this method's TaskGroup, and the loop goes on forming the next batch for the
        next free instance.
        """
        try:
            async with asyncio.TaskGroup() as executions:
                while True:
                    now = self._clock.monotonic()
                    decision = decide(self.policy, self._view(now))
                    if isinstance(decision, Wait):
                        if not self._queue and not any(i.busy for i in self._instances):
                            self._idle.set()
                        self._wakeup.clear()
                        await wait_within(self._clock, self._wakeup.wait(), decision.seconds)
                        continue
                    instance = self._free()
                    batch = self._take(decision.requests, now) if instance is not None else []
                    if instance is None or not batch:  # (the policy dispatches only when one is free)
                        continue
                    if len(self._instances) == 1:
                        await self._execute(batch, now, instance)
                    else:
                        # Busy before the task starts: the next decision must see it.
                        instance.busy, instance.busy_since = True, now
                        executions.create_task(self._execute(batch, now, instance))
        finally:
            self._closed = True
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(UnavailableError("node is shutting down"))
            self._queue.clear()
            self._idle.set()
            for instance in self._instances:
                instance.executor.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Refuse new requests and wait until everything queued has executed."""
        self._closed = True
        await self._idle.wait()

    async def _execute(self, batch: list[_Pending], started: float, instance: _Instance) -> None:
        instance.busy = True
        instance.busy_since = started
        instance.batches += 1
        loop = asyncio.get_running_loop()
        try:
            outputs, timing = await loop.run_in_executor(
                instance.executor, self._run_batch, batch, instance.model)
        except Exception as exc:  # the model failed: every request in the batch fails
            error = exc if isinstance(exc, SwarmError) else InferenceError(
                f"{self.model.name} failed to execute: {type(exc).__name__}: {exc}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        except asyncio.CancelledError:
            for pending in batch:  # the node is stopping mid-batch
                if not pending.future.done():
                    pending.future.set_exception(UnavailableError("node is shutting down"))
            raise
        finally:
            instance.busy = False
            self._free_since = self._clock.monotonic()
            self._busy_seconds += self._free_since - started
            if instance.retired:
                self._drop(instance)
            self._wakeup.set()  # an instance is free: the next batch may go
        elapsed = self._clock.monotonic() - started
        self._execution_time.update(elapsed)
        if elapsed > 0:
            self._items_per_second.update(timing.batch_size / elapsed)
        compute = timing.input_seconds + timing.infer_seconds + timing.output_seconds
        for pending, result in zip(batch, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result(
                    BatchResult(result, started - pending.enqueued, compute, timing.batch_size)
                )
        self._hooks.on_batch(timing)

    def _run_batch(self, batch: Sequence[_Pending],
                   model: Model) -> tuple[list[dict[str, np.ndarray]], BatchTiming]:
        """Executor thread: concatenate, execute, split."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            inputs = dict(batch[0].inputs)
        else:
            inputs = {
                spec.name: np.concatenate([p.inputs[spec.name] for p in batch])
                for spec in model.spec.inputs
            }
        t1 = time.perf_counter()
        outputs = model.execute(inputs)
        t2 = time.perf_counter()
        results: list[dict[str, np.ndarray]] = []
        offset = 0
        for pending in batch:
            results.append({k: v[offset : offset + pending.items] for k, v in outputs.items()})
            offset += pending.items
        t3 = time.perf_counter()
        return results, BatchTiming(offset, len(batch), t1 - t0, t2 - t1, t3 - t2)
