"""Client: the blocking SDK, running an AsyncClient on a private event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from swarm._errors import ClosedError
from swarm.client._async import DEFAULT_EMBED_MODEL, AsyncClient, Inputs
from swarm.client._types import ModelInfo
from swarm.client._verify import DEFAULT_VERIFY_FRACTION
from swarm.protocol import ResponseSignature

__all__ = ["Client"]


async def _next(iterator: AsyncIterator[str]) -> str:
    return await anext(iterator)

T = TypeVar("T")


class Client:
    """Blocking client: `Client("127.0.0.1:7070").embed(["hello world"])`.

    Use it as a context manager or call close(); it owns one background thread.
    """

    def __init__(self, address: str | None = None, *, bootstrap: Sequence[str] = (),
                 timeout: float | None = 30.0, max_price: float | None = None,
                 preference: str | float = "latency", hedge: bool = True,
                 allowlist: Mapping[str, Iterable[bytes | str]] | None = None,
                 expect_peer: str | None = None, verify: bool = False,
                 verify_fraction: float = DEFAULT_VERIFY_FRACTION,
                 min_stake: int = 0, wallet: Any = None, deposit: int = 100_000) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="swarm-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(address, bootstrap=bootstrap, timeout=timeout,
                               max_price=max_price, preference=preference, hedge=hedge,
                               allowlist=allowlist, expect_peer=expect_peer,
                               verify=verify, verify_fraction=verify_fraction,
                               min_stake=min_stake, wallet=wallet, deposit=deposit)

        try:
            self._client = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def last_signature(self) -> ResponseSignature | None:
        """The last verified response signature (verify=True)."""
        return self._client.last_signature

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClosedError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._client.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def infer(self, model: str, inputs: Inputs, *, version: str = "",
              outputs: Sequence[str] = (), timeout: float | None = None,
              max_price: float | None = None, preference: str | float | None = None,
              min_stake: int | None = None,
              ) -> np.ndarray | dict[str, np.ndarray]:
        return self._run(self._client.infer(model, inputs, version=version, outputs=outputs,
                                            timeout=timeout, max_price=max_price,
                                            preference=preference, min_stake=min_stake))

    def map(self, model: str, inputs: Iterable[Inputs], *, concurrency: int = 32,
            timeout: float | None = None, max_price: float | None = None,
            preference: str | float | None = None,
            progress: Callable[[int], None] | None = None, min_stake: int | None = None,
            ) -> list[np.ndarray | dict[str, np.ndarray]]:
        return self._run(self._client.map(model, inputs, concurrency=concurrency,
                                          timeout=timeout, max_price=max_price,
                                          preference=preference, progress=progress,
                                          min_stake=min_stake))

    def generate(self, model: str, prompt: str, **options: Any) -> Iterator[str]:
        """`AsyncClient.generate`, blocking: an iterator of text chunks."""
        return self._iterate(self._client.generate(model, prompt, **options))

    def chat(self, model: str, messages: Sequence[Mapping[str, str]],
             **options: Any) -> Iterator[str]:
        """`AsyncClient.chat`, blocking: an iterator of text chunks."""
        return self._iterate(self._client.chat(model, messages, **options))

    def _iterate(self, chunks: AsyncIterator[str]) -> Iterator[str]:
        iterator = aiter(chunks)
        try:
            while True:
                try:
                    yield self._run(_next(iterator))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                close = getattr(iterator, "aclose", None)
                if close is not None:
                    self._run(close())

    def embed(self, texts: Sequence[str], *, model: str = DEFAULT_EMBED_MODEL,
              timeout: float | None = None, max_price: float | None = None,
              preference: str | float | None = None) -> np.ndarray:
        return self._run(self._client.embed(texts, model=model, timeout=timeout,
                                            max_price=max_price, preference=preference))

    def models(self) -> list[ModelInfo]:
        return self._run(self._client.models())

    def metadata(self, model: str, *, version: str = "") -> ModelInfo:
        return self._run(self._client.metadata(model, version=version))
