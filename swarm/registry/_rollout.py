"""Zero-downtime switch between versions of a served model name (rollout and rollback).

`Rollout.rollout(name, digest)`:

1. load the new version and warm it up in a thread (`load(digest)`), while the
   old version keeps serving; a failure here changes nothing: it is logged,
   counted and raised as ModelLoadError;
2. add it to the deployment as the name's default in one step: requests by
   name go to the new version from then on, requests by digest reach both;

`Rollout.retire(name, old)` then, after `linger` seconds (clients whose view
still names the old digest keep being served), withdraws the old version (no
new request finds it), waits for its queued requests to execute, and unloads
it. A rollback that arrives while the old version lingers just makes it the
default again, with no load.

`follow(name, targets, prepare)` keeps a name on the latest digest a watch
yields (RegistryAgent.watch), fetching each with `prepare` first and retrying
failed fetches with backoff; a version that fails to load is not retried until
the tag moves again.

The node is reached through two small protocols, `Deployment` and `Served`, so
this runs (and is tested) without the real node. Lingering and retry backoff are
sleeps on the injected clock (a FakeClock in tests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm._errors import ModelLoadError, SwarmError
from swarm._types import Digest

__all__ = ["Deployment", "Loaded", "Rollout", "RolloutConfig", "Served"]

log = logging.getLogger("swarm.registry")


class Loaded(Protocol):
    """A loaded, warmed-up model version (swarm.node's Model)."""

    @property
    def name(self) -> str: ...

    @property
    def digest(self) -> Digest: ...

    def close(self) -> None:
        """Free the model (its device memory)."""
        ...


class Served(Protocol):
    """A version the deployment has withdrawn, still finishing its queued requests."""

    async def drain(self) -> None:
        """Return once every request it queued has executed (it takes no new ones)."""
        ...

    async def close(self) -> None:
        """Stop its batcher and unload its model."""
        ...


M = TypeVar("M", bound=Loaded)
M_contra = TypeVar("M_contra", bound=Loaded, contravariant=True)


class Deployment(Protocol[M_contra]):
    """The node's table of served versions (ModelTable plus the batchers it runs)."""

    def current(self, name: str) -> Digest | None:
        """The version requests by name go to now."""
        ...

    def has(self, name: str, digest: Digest) -> bool:
        """Whether the version is served (reachable by digest)."""
        ...

    async def add(self, model: M_contra, *, default: bool) -> None:
        """Start serving `model` (batcher running before it is reachable); with `default`,
        the name's default moves to it in the same step."""
        ...

    def set_default(self, name: str, digest: Digest) -> None:
        """Point requests by name at a version already served."""
        ...

    def withdraw(self, name: str, digest: Digest) -> Served | None:
        """Remove a version from the table so that no new request finds it."""
        ...


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    # Seconds an old version stays reachable by digest after a switch (clients whose
    # view still names it are served meanwhile; about one advert interval).
    linger: float = 5.0
    # Longest wait for an old version's queued requests before it is unloaded anyway.
    drain_timeout: float = 30.0
    # After a failed fetch, `follow` retries after this delay, doubling up to retry_max.
    retry_initial: float = 1.0
    retry_max: float = 60.0

    def __post_init__(self) -> None:
        if self.linger < 0 or self.drain_timeout < 0:
            raise ValueError("linger and drain_timeout must be >= 0")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")


class Rollout(Generic[M]):
    """Switches the versions a deployment serves; one switch per name at a time.

    `load(digest)` runs in a thread and returns the version loaded and warmed
    up (raising on failure). `counters` is for the node's metrics. `clock` times
    the linger and the retry backoff.
    """

    def __init__(self, deployment: Deployment[M], load: Callable[[Digest], M], *,
                 config: RolloutConfig = RolloutConfig(),
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._deployment = deployment
        self._load = load
        self.config = config
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.counters: dict[str, int] = {
            "rollouts": 0, "rollouts_failed": 0, "versions_retired": 0, "drain_timeouts": 0}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def rollout(self, name: str, digest: Digest) -> Digest | None:
        """Make `digest` the version `name` serves; returns the version it replaced.

        The replaced version stays served by digest until `retire` (None: there
        was none, or `digest` was already the default). Raises ModelLoadError if
        the new version fails to load or warm up; the old one keeps serving.
        """
        async with self._lock(name):
            old = self._deployment.current(name)
            if old == digest:
                return None
            if self._deployment.has(name, digest):  # still lingering: a rollback needs no load
                self._deployment.set_default(name, digest)
            else:
                model = await self._load_model(name, digest)
                try:
                    await self._deployment.add(model, default=True)
                except BaseException:
                    model.close()
                    raise
            self.counters["rollouts"] += 1
            log.info("version switched", extra={
                "model": name, "digest": digest.short, "replaced": old.short if old else ""})
            return old

    async def _load_model(self, name: str, digest: Digest) -> M:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # A thread of its own, not the default executor: a load takes seconds to minutes.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"load-{digest.short}")
        job = pool.submit(self._load, digest)
        pool.shutdown(wait=False)  # the thread ends after this job
        try:
            model = await asyncio.wrap_future(job, loop=loop)
        except asyncio.CancelledError:
            # The thread cannot be stopped: free what it loads once it is done.
            job.add_done_callback(_close_result)
            raise
        except Exception as exc:
            self.counters["rollouts_failed"] += 1
            log.error("new version failed to load; the old one keeps serving", extra={
                "model": name, "digest": digest.short, "error": f"{type(exc).__name__}: {exc}"})
            raise ModelLoadError(f"{name} {digest.short} failed to load: {exc}") from exc
        if model.name != name or model.digest != digest:
            model.close()
            self.counters["rollouts_failed"] += 1
            raise ModelLoadError(f"{digest.short} loaded as {model.name} {model.digest.short}, "
                                 f"not {name}")
        log.info("version loaded", extra={"model": name, "digest": digest.short,
                                          "seconds": round(time.perf_counter() - started, 2)})
        return model

    async def retire(self, name: str, digest: Digest) -> bool:
        """After `linger`, withdraw a replaced version, drain it and unload it.

        Does nothing (False) if the version became the default again meanwhile.
        """
        await self._clock.sleep(self.config.linger)
        async with self._lock(name):
            if self._deployment.current(name) == digest:
                return False
            served = self._deployment.withdraw(name, digest)
        if served is None:
            return False
        try:
            if not await wait_within(self._clock, served.drain(), self.config.drain_timeout):
                self.counters["drain_timeouts"] += 1
                log.warning("old version did not drain in time; unloading it anyway",
                            extra={"model": name, "digest": digest.short})
        finally:
            await served.close()
        self.counters["versions_retired"] += 1
        log.info("old version unloaded", extra={"model": name, "digest": digest.short})
        return True

    async def switch(self, name: str, digest: Digest) -> None:
        """`rollout`, then `retire` what it replaced (returns once the old version is gone)."""
        old = await self.rollout(name, digest)
        if old is not None:
            await self.retire(name, old)

    async def follow(self, name: str, targets: AsyncIterator[Digest],
                     prepare: Callable[[Digest], Awaitable[object]]) -> None:
        """Serve the latest digest `targets` yields under `name` until `targets` ends.

        `prepare(digest)` makes the version loadable (RegistryAgent.ensure fetches
        it). Failed fetches are retried with backoff; a failed load waits for the
        next target. Old versions retire in the background; those still lingering
        when `targets` ends are left to the node's shutdown.
        """
        latest: Digest | None = None
        ended = False
        wake = asyncio.Event()

        async def read() -> None:
            nonlocal latest, ended
            try:
                async for digest in targets:
                    latest = digest
                    wake.set()
            finally:
                ended = True
                wake.set()

        retiring: set[asyncio.Task[bool]] = set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(read(), name=f"follow:{name}")
            failed: Digest | None = None
            retry_in: float | None = None
            backoff = self.config.retry_initial
            while True:
                await wait_within(self._clock, wake.wait(), retry_in)
                wake.clear()
                retry_in = None
                target = latest
                if ended:
                    break
                if target is None or target == failed or target == self._deployment.current(name):
                    continue
                try:
                    await prepare(target)
                    old = await self.rollout(name, target)
                except ModelLoadError:
                    failed = target  # logged and counted by rollout
                    continue
                except (SwarmError, OSError) as exc:
                    log.warning("could not fetch the version to serve; retrying", extra={
                        "model": name, "digest": target.short, "error": str(exc),
                        "retry_s": backoff})
                    retry_in, backoff = backoff, min(backoff * 2, self.config.retry_max)
                    continue
                failed, backoff = None, self.config.retry_initial
                if old is not None:
                    task = tg.create_task(self.retire(name, old), name=f"retire:{old.short}")
                    retiring.add(task)
                    task.add_done_callback(retiring.discard)
            for task in retiring:
                task.cancel()


def _close_result(job: concurrent.futures.Future[M]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close()
