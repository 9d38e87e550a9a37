"""Rollout over the node's real ModelTable and Batchers, under continuous requests.

`TableDeployment` is the adapter the node needs (the report's node patch holds the
same code): batchers run in a TaskGroup, ModelTable.add(default=True) is the
atomic switch, ModelTable.remove withdraws a version before it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TypeVar

import numpy as np
import pytest
import torch

from swarm._clock import FakeClock
from swarm._errors import ModelLoadError, ModelNotFoundError, SwarmError, UnavailableError
from swarm._types import Digest
from swarm.node._batching import Batcher
from swarm.node._config import ModelOptions
from swarm.node._models import ModelTable, ServedModel, policy_for
from swarm.node._runtime import Model, ModelSpec, TensorSpec
from swarm.registry import Rollout, RolloutConfig
from tests.waiting import wait_until

NAME = "acme/classifier"
LINGER = 5.0  # on a FakeClock: tests move it past the linger, nobody waits for real
T = TypeVar("T")
V1, V2, V3 = (Digest.of(b"version %d" % i) for i in (1, 2, 3))
FACTOR = {V1: 1.0, V2: 2.0, V3: 3.0}


class VersionModel(Model):
    """out = x * factor-of-its-version, so each response says which version served it."""

    def __init__(self, digest: Digest, *, fail_warmup: bool = False) -> None:
        self.name = NAME
        self.digest = digest
        self.spec = ModelSpec((TensorSpec("x", "FP32", (-1, 2)),),
                              (TensorSpec("out", "FP32", (-1, 2)),), 8, "test")
        self.device = torch.device("cpu")
        self.fail_warmup = fail_warmup
        self.closed = False

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise RuntimeError("executed after close")
        return {"out": inputs["x"] * FACTOR[self.digest]}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"x": np.ones((batch_size, 2), np.float32)}

    def warmup(self) -> None:
        if self.fail_warmup:
            raise RuntimeError("CUDA out of memory (pretend)")
        super().warmup()

    def close(self) -> None:
        self.closed = True


class _Retiring:
    def __init__(self, served: ServedModel, task: asyncio.Task[None]) -> None:
        self.served = served
        self.task = task

    async def drain(self) -> None:
        await self.served.batcher.drain()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.served.model.close()


class TableDeployment:
    """The node side of Rollout: ModelTable + one running Batcher per version."""

    def __init__(self, table: ModelTable, tg: asyncio.TaskGroup) -> None:
        self.table = table
        self._tg = tg
        self._tasks: dict[Digest, asyncio.Task[None]] = {}

    def current(self, name: str) -> Digest | None:
        try:
            return self.table.resolve(name).digest
        except ModelNotFoundError:
            return None

    def has(self, name: str, digest: Digest) -> bool:
        return any(s.digest == digest for s in self.table.versions(name))

    async def add(self, model: Model, *, default: bool) -> None:
        options = ModelOptions()
        batcher = Batcher(model, policy_for(model, options))
        self._tasks[model.digest] = self._tg.create_task(batcher.run())
        self.table.add(ServedModel(model, batcher, options), default=default)

    def set_default(self, name: str, digest: Digest) -> None:
        self.table.add(self.table.resolve(name, digest.hex), default=True)

    def withdraw(self, name: str, digest: Digest) -> _Retiring | None:
        served = self.table.remove(name, digest)
        if served is None:
            return None
        return _Retiring(served, self._tasks.pop(digest))


class Loader:
    def __init__(self, failing: frozenset[Digest] = frozenset()) -> None:
        self.failing = failing
        self.loads: list[Digest] = []
        self.models: dict[Digest, list[VersionModel]] = {}

    def __call__(self, digest: Digest) -> VersionModel:
        self.loads.append(digest)
        model = VersionModel(digest, fail_warmup=digest in self.failing)
        model.warmup()
        self.models.setdefault(digest, []).append(model)
        return model


class Clients:
    """Requests by name, back to back, from several tasks; records versions and failures."""

    def __init__(self, table: ModelTable, *, by_digest: Digest | None = None) -> None:
        self.table = table
        self.by_digest = by_digest
        self.served: list[float] = []
        self.failures: list[BaseException] = []
        self.running = True

    async def one(self) -> None:
        x = np.ones((1, 2), np.float32)
        while self.running:
            try:
                # Resolve and submit with no await between, as the OIP service does.
                served = self.table.resolve(NAME, self.by_digest.hex if self.by_digest else "")
                result = await served.batcher.submit({"x": x}, 1)
                self.served.append(float(result.outputs["out"][0, 0]))
            except SwarmError as exc:
                self.failures.append(exc)
            await asyncio.sleep(0)  # back to back, but let the other clients in


@contextlib.asynccontextmanager
async def serving(loader: Loader, config: RolloutConfig, clock: FakeClock, clients: int = 6
                  ) -> AsyncIterator[tuple[Rollout[VersionModel], Clients, TableDeployment]]:
    """V1 served under load from `clients` tasks; lingering and retries wait on `clock`."""
    table = ModelTable()
    async with asyncio.TaskGroup() as tg:
        deployment = TableDeployment(table, tg)
        rollout: Rollout[VersionModel] = Rollout(deployment, loader, config=config, clock=clock)
        assert await rollout.rollout(NAME, V1) is None  # nothing served before
        load = Clients(table)
        tasks = [tg.create_task(load.one()) for _ in range(clients)]
        await served_more(load, "requests served by V1")
        try:
            yield rollout, load, deployment
        finally:
            load.running = False
            await asyncio.gather(*tasks)
            for digest in list(deployment._tasks):
                retiring = deployment.withdraw(NAME, digest)
                assert retiring is not None
                await retiring.close()


async def served_more(load: Clients, what: str, than: int | None = None) -> None:
    """Wait until the clients got a few more answers (than `than`, default: now)."""
    base = len(load.served) if than is None else than
    await wait_until(lambda: len(load.served) >= base + 12, what=what)


async def after_linger(clock: FakeClock, switching: Awaitable[T]) -> T:
    """Run `switching` (a switch or a retire); once it lingers, move the clock past that."""
    task = asyncio.ensure_future(switching)
    await wait_until(lambda: clock.sleepers > 0 or task.done(), what="the linger to start")
    assert clock.jump() == LINGER
    await wait_until(task, what="the switch to finish after the linger")
    return task.result()


async def test_rollout_and_rollback_under_load_fail_no_request() -> None:
    loader = Loader()
    clock = FakeClock()
    async with serving(loader, RolloutConfig(linger=LINGER), clock) as (
            rollout, load, deployment):
        switch = asyncio.ensure_future(rollout.switch(NAME, V2))
        await wait_until(lambda: clock.sleepers == 1, what="V1 to linger")
        switched_at = len(load.served)
        assert deployment.current(NAME) == V2
        assert deployment.has(NAME, V1)  # lingering: still served by digest
        assert clock.jump() == LINGER
        await wait_until(switch, what="V1 retired")
        assert deployment.current(NAME) == V2
        assert not deployment.has(NAME, V1)
        assert loader.models[V1][0].closed  # drained, then unloaded
        await served_more(load, "requests served by V2")
        await after_linger(clock, rollout.switch(NAME, V1))  # rollback: V1 loads again
        await served_more(load, "requests served after the rollback")
    assert load.failures == []
    assert 1.0 in load.served[:switched_at]
    assert 2.0 in load.served[switched_at:]
    assert load.served[-1] == 1.0
    assert loader.loads == [V1, V2, V1]
    assert rollout.counters["rollouts"] == 3
    assert rollout.counters["versions_retired"] == 2


async def test_old_version_answers_by_digest_while_it_lingers_and_rollback_reuses_it() -> None:
    loader = Loader()
    clock = FakeClock()
    async with serving(loader, RolloutConfig(linger=LINGER), clock) as (
            rollout, load, deployment):
        by_digest = Clients(load.table, by_digest=V1)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(by_digest.one())
            assert await rollout.rollout(NAME, V2) == V1
            await served_more(by_digest, "requests by digest served after the switch")
            by_digest.running = False
        await task
        assert by_digest.failures == []
        assert set(by_digest.served) == {1.0}
        assert deployment.has(NAME, V1)  # lingering
        # Rolled back before V1 was unloaded: no load, just the default flips back.
        assert await rollout.rollout(NAME, V1) == V2
        assert loader.loads == [V1, V2]
        assert await after_linger(clock, rollout.retire(NAME, V1)) is False  # serving again
        assert await after_linger(clock, rollout.retire(NAME, V2)) is True
        assert loader.models[V2][0].closed
        assert not loader.models[V1][0].closed
    assert load.failures == []


async def test_failed_warmup_keeps_the_old_version_serving() -> None:
    loader = Loader(failing=frozenset({V3}))
    clock = FakeClock()
    async with serving(loader, RolloutConfig(linger=0.0), clock) as (rollout, load, deployment):
        with pytest.raises(ModelLoadError, match="out of memory"):
            await rollout.switch(NAME, V3)
        await served_more(load, "requests served after the failed switch")
        assert deployment.current(NAME) == V1
        assert not deployment.has(NAME, V3)
    assert load.failures == []
    assert set(load.served) == {1.0}
    assert rollout.counters["rollouts_failed"] == 1


async def test_follow_tracks_a_tag_retries_fetches_and_skips_unloadable_versions() -> None:
    loader = Loader(failing=frozenset({V3}))
    targets: asyncio.Queue[Digest | None] = asyncio.Queue()
    prepared: list[Digest] = []
    flaky = {V2: 1}  # the first fetch of V2 fails

    async def prepare(digest: Digest) -> None:
        prepared.append(digest)
        if flaky.get(digest, 0) > 0:
            flaky[digest] -= 1
            raise UnavailableError("no holder reachable")

    async def watch() -> AsyncIterator[Digest]:
        while (digest := await targets.get()) is not None:
            yield digest

    config = RolloutConfig(linger=0.0, retry_initial=5.0, retry_max=60.0)
    clock = FakeClock()
    async with serving(loader, config, clock) as (rollout, load, deployment), \
            asyncio.TaskGroup() as tg:
        tg.create_task(rollout.follow(NAME, watch(), prepare))
        targets.put_nowait(V2)
        await wait_until(lambda: clock.sleepers == 1, what="the retry after a failed fetch")
        assert clock.jump() == 5.0  # retry_initial
        await wait_until(lambda: deployment.current(NAME) == V2, what="V2 followed")
        assert prepared == [V2, V2]  # retried after the failed fetch
        await wait_until(lambda: loader.models[V1][0].closed, what="V1 retired")
        targets.put_nowait(V3)  # fails to warm up: V2 keeps serving, no retry loop
        await wait_until(lambda: rollout.counters["rollouts_failed"] == 1, what="V3 failed")
        assert clock.sleepers == 0  # no retry scheduled for a version that failed to load
        targets.put_nowait(V1)  # the tag moves on: followed
        await wait_until(lambda: deployment.current(NAME) == V1, what="V1 followed")
        await wait_until(lambda: loader.models[V2][0].closed, what="V2 retired")
        assert not deployment.has(NAME, V2)
        assert loader.loads.count(V3) == 1
        targets.put_nowait(None)  # the watch ends: follow returns
    assert load.failures == []
