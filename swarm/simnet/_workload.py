"""The workload: open-loop requests from a plan, sent through a Router, each one recorded.

A `Router` is all the driver needs from a client (a `ChatRouter` for chat traffic):

    class Router(Protocol):
        async def infer(self, model, inputs, *, timeout) -> RoutedResult
    class ChatRouter(Protocol):
        def chat(self, model, messages, *, max_tokens, temperature, timeout)
            -> AsyncIterator[GenerationChunk]

`SchedulerRouter` is the real thing: the SDK's swarm-aware client
(`AsyncClient(bootstrap=[...])`), which learns providers from gossip and routes
by latency, load and price with failover and hedging. `RoundRobinRouter`
spreads requests over fixed node addresses with `swarm.AsyncClient` and retries
on the next node after UNAVAILABLE or RESOURCE_EXHAUSTED: the baseline to
compare with (`swarm simnet up --router round-robin`) and the fallback without
peer-to-peer.

Latency is measured from a request's *scheduled* send time, so a driver or a
client that falls behind shows up in the numbers (no coordinated omission).
`drive_chats` sends the chat plan the same way, through the SDK's streaming path
(`AsyncClient.chat_chunks`), and records per chat the provider that streamed it,
time to first token, the gaps between tokens, tokens and end-to-end latency.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    NoProviderError,
    OverloadedError,
    SwarmError,
    UnavailableError,
)
from swarm.client import AsyncClient, GenerationChunk
from swarm.simnet._scenario import ModelMix, PlannedChat, PlannedRequest, Workload

__all__ = [
    "CHAT_PROMPTS",
    "ChatRecord",
    "ChatRouter",
    "Endpoint",
    "Recorder",
    "RequestRecord",
    "RoundRobinRouter",
    "RoutedResult",
    "Router",
    "drive",
    "drive_chats",
    "make_inputs",
    "outcome_of",
]

OK = "ok"
SHED = "SHED"            # not sent: max_in_flight requests were already waiting
CANCELLED = "CANCELLED"  # the run was interrupted while it was in flight


@dataclass(frozen=True, slots=True)
class RoutedResult:
    # Address ("host:port") of the node that answered.
    node: str
    outputs: Any
    # Nodes tried, this one included.
    attempts: int = 1
    # Micro-units paid, when the router knows (else the node's advertised price is used).
    price: float | None = None


class Router(Protocol):
    """Sends one request to some provider and says which one answered."""

    async def infer(self, model: str, inputs: Any, *, timeout: float) -> RoutedResult:
        """Raise a SwarmError (InferenceError subclasses carry the gRPC code) on failure."""
        ...


class ChatRouter(Protocol):
    """Streams one chat from some provider (chunks name the provider that sent them)."""

    def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int,
             temperature: float, timeout: float) -> AsyncIterator[GenerationChunk]:
        """Raise a SwarmError on failure, before or during the stream."""
        ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A node address and the models it serves."""

    address: str
    models: frozenset[str]


# Errors after which another node may well succeed.
_RETRYABLE = (UnavailableError, OverloadedError)


class SchedulerRouter:
    """The SDK's scheduler-routed client behind the workload's Router protocol."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def client(self) -> AsyncClient:
        return self._client

    async def start(self, providers: int, timeout: float) -> bool:
        """Join the swarm; True once `providers` nodes are in the client's view."""
        await self._client.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._client.router.view) < providers:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def infer(self, model: str, inputs: Any, *, timeout: float) -> RoutedResult:
        outputs, routed = await self._client.infer_routed(model, inputs, timeout=timeout)
        return RoutedResult(routed.endpoint, outputs, routed.attempts, price=routed.price)

    def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int,
             temperature: float, timeout: float) -> AsyncGenerator[GenerationChunk, None]:
        """The SDK's streaming chat: scheduler-picked provider, resumed elsewhere if it
        fails mid-stream."""
        return self._client.chat_chunks(model, messages, max_tokens=max_tokens,
                                        temperature=temperature, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.close()


class RoundRobinRouter:
    """Round-robin over the endpoints that serve the model, failing over within the deadline.

    `endpoints` is called per request, so nodes started later (a rejoin) join the
    rotation. Dead endpoints stay in it, as they would in a static client list:
    every pass over them exercises failover.
    """

    def __init__(self, endpoints: Callable[[], Sequence[Endpoint]]) -> None:
        self._endpoints = endpoints
        self._clients: dict[str, AsyncClient] = {}
        self._counter = itertools.count()

    def _client(self, address: str) -> AsyncClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = AsyncClient(address, timeout=None)
        return client

    def _turns(self, model: str, deadline: float) -> Iterator[tuple[str, float]]:
        """Every node serving `model` once, the next in turn first: (address, seconds left
        until `deadline`, loop time); stops when none are left."""
        loop = asyncio.get_running_loop()
        candidates = [e for e in self._endpoints() if model in e.models]
        if not candidates:
            raise NoProviderError(f"no node serves {model}")
        start = next(self._counter)
        for attempt in range(len(candidates)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            yield candidates[(start + attempt) % len(candidates)].address, remaining

    @staticmethod
    def _gave_up(model: str, timeout: float, deadline: float,
                 error: SwarmError | None) -> SwarmError:
        """What a call raises when no node answered: the last node's error while time was
        left, else the deadline."""
        if error is not None and asyncio.get_running_loop().time() < deadline:
            return error
        return DeadlineExceededError(f"{model}: deadline of {timeout:.2f} s passed "
                                     f"({type(error).__name__ if error else 'no answer'})")

    async def infer(self, model: str, inputs: Any, *, timeout: float) -> RoutedResult:
        """Try the next node in turn, then the others, until one answers or `timeout` passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        error: SwarmError | None = None
        for attempt, (address, remaining) in enumerate(self._turns(model, deadline), 1):
            try:
                outputs = await self._client(address).infer(model, inputs, timeout=remaining)
            except _RETRYABLE as exc:
                error = exc
                continue
            return RoutedResult(address, outputs, attempt)
        raise self._gave_up(model, timeout, deadline, error)

    async def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int,
                   temperature: float, timeout: float) -> AsyncIterator[GenerationChunk]:
        """The next node in turn streams the chat; one that refuses before its first chunk
        is replaced by the next (a stream broken off later is not resumed: an error)."""
        deadline = asyncio.get_running_loop().time() + timeout
        error: SwarmError | None = None
        for address, remaining in self._turns(model, deadline):
            chunks = self._client(address).chat_chunks(
                model, messages, max_tokens=max_tokens, temperature=temperature,
                timeout=remaining)
            started = False
            try:
                async for chunk in chunks:
                    started = True
                    yield chunk
                return
            except _RETRYABLE as exc:
                if started:
                    raise
                error = exc
            finally:
                await chunks.aclose()
        raise self._gave_up(model, timeout, deadline, error)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


@dataclass(frozen=True, slots=True)
class RequestRecord:
    index: int
    model: str
    items: int
    # Seconds from the start of the workload: when it was due, and when it was sent.
    scheduled: float
    sent: float | None
    # Seconds from `scheduled` to the answer (or the error); None when not sent.
    latency: float | None
    # "ok", or what went wrong: a gRPC code name, "SHED", "CANCELLED", "NO_PROVIDER", ...
    outcome: str
    # Index of the node that answered (None when unknown or failed).
    node: int | None = None
    attempts: int = 0
    # Micro-units paid at the answering node's advertised price (None when unknown).
    price: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def finished(self) -> float | None:
        return None if self.latency is None else self.scheduled + self.latency


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """One chat of the workload: how its answer streamed."""

    index: int
    model: str
    # Seconds from the start of the workload: when it was due, and when it was sent.
    scheduled: float
    sent: float | None
    # Seconds from `scheduled` to the end of the stream (or the error); None when not sent.
    latency: float | None
    # "ok" (the answer ended: finish_reason stop or length), or what went wrong.
    outcome: str
    # Seconds from `scheduled` to the first token (None: none came).
    ttft: float | None = None
    # Seconds between consecutive tokens: each gap between two chunks, spread evenly over
    # the tokens of the later one (the first chunk's own tokens have none).
    itl: tuple[float, ...] = ()
    # Tokens streamed (the answer's length, or what came before the error).
    tokens: int = 0
    # Index of the node that streamed the end of it (the last chunk; None when unknown).
    node: int | None = None
    # Providers that streamed to it (2 or more: resumed elsewhere after a failure).
    providers: int = 0
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def finished(self) -> float | None:
        return None if self.latency is None else self.scheduled + self.latency


class Recorder:
    """Collects records as requests finish; the live view reads it while the run goes on."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.started_at: float | None = None  # loop time of workload start
        self.chats: list[ChatRecord] = []
        self.chats_in_flight = 0

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def add_chat(self, record: ChatRecord) -> None:
        self.chats.append(record)


_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Decentralized inference spreads requests over many providers.",
    "A swarm of nodes serves sentence embeddings on commodity hardware.",
    "Latency, load and price decide where a request goes.",
    "Every provider advertises its capacity over gossip.",
    "Model versions are identified by their content digest.",
    "Graceful shutdown drains in-flight requests before exit.",
    "Power of two choices avoids herding on a single provider.",
    "The weather in the mountains changes quickly in the afternoon.",
    "She sold seashells by the seashore on a sunny morning.",
    "Batching several requests into one forward pass raises throughput.",
    "Open-loop load generators do not slow down when the server does.",
)


# User messages of chat traffic (a [[workload.chat]] without `prompts`): short, so that
# prefill stays small next to the answer.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give one tip for staying focused.",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do?",
    "Describe a cat in one sentence.",
)


def make_inputs(mix: ModelMix, items: int, rng: np.random.Generator) -> Any:
    """Inputs for one request: `items` sentences, or `items` random FP32 vectors."""
    if mix.inputs == "text":
        picks = rng.integers(0, len(_TEXTS), size=items)
        return np.array([_TEXTS[int(i)].encode() for i in picks], dtype=object)
    return rng.standard_normal((items, mix.dim), dtype=np.float32)


def outcome_of(exc: BaseException) -> str:
    """What a failed request's record says: the gRPC code, NO_PROVIDER, ..."""
    if isinstance(exc, InferenceError):
        return exc.code
    if isinstance(exc, NoProviderError):
        return "NO_PROVIDER"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, SwarmError):
        return "SWARM_ERROR"
    return type(exc).__name__.upper()


async def drive(plan: Sequence[PlannedRequest], workload: Workload, router: Router,
                recorder: Recorder, *, rng: np.random.Generator,
                node_of: Callable[[str], int | None],
                price_of: Callable[[int, int], float | None], start: float | None = None) -> None:
    """Send every planned request at its time, without waiting for earlier answers.

    `node_of(address)` names the node behind an address; `price_of(node, items)`
    is what a request costs there; `start` is the loop time of t = 0 (default:
    now). Returns when every request has finished.
    """
    loop = asyncio.get_running_loop()
    mixes = {m.name: m for m in workload.models}
    t0 = loop.time() if start is None else start
    recorder.started_at = t0
    items = workload.items

    async def one(req: PlannedRequest, inputs: Any) -> None:
        sent = loop.time() - t0
        deadline = t0 + req.at + workload.timeout
        node: int | None = None
        attempts = 0
        price: float | None = None
        try:
            async with asyncio.timeout_at(deadline + 1.0):  # the RPC deadline should fire first
                result = await router.infer(req.model, inputs, timeout=max(deadline - loop.time(),
                                                                           0.001))
            node = node_of(result.node)
            attempts = result.attempts
            price = result.price
            outcome = OK
        except asyncio.CancelledError:
            recorder.add(RequestRecord(req.index, req.model, items, req.at, sent,
                                       loop.time() - t0 - req.at, CANCELLED))
            raise
        except Exception as exc:  # every failure is data; none may stop the run
            outcome = outcome_of(exc)
        finally:
            recorder.in_flight -= 1
        if price is None and node is not None:
            price = price_of(node, items)
        recorder.add(RequestRecord(req.index, req.model, items, req.at, sent,
                                   loop.time() - t0 - req.at, outcome, node, attempts, price))

    async with asyncio.TaskGroup() as tg:
        for req in plan:
            delay = t0 + req.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if recorder.in_flight >= workload.max_in_flight:
                recorder.add(RequestRecord(req.index, req.model, items, req.at, None, None, SHED))
                continue
            recorder.in_flight += 1
            tg.create_task(one(req, make_inputs(mixes[req.model], items, rng)))



async def drive_chats(plan: Sequence[PlannedChat], workload: Workload, router: ChatRouter,
                      recorder: Recorder, *, node_of: Callable[[str], int | None],
                      start: float | None = None) -> None:
    """Send every planned chat at its time, without waiting for earlier answers, and
    record how each one streamed (`Recorder.chats`). A chat table's chats beyond its
    `max_in_flight` are shed; each chat ends by its `timeout`. Returns when all have."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() if start is None else start
    in_flight = [0] * len(workload.chats)

    async def one(chat: PlannedChat) -> None:
        mix = workload.chats[chat.mix]
        prompts = mix.prompts or CHAT_PROMPTS
        messages = [{"role": "user", "content": prompts[chat.prompt % len(prompts)]}]
        sent = loop.time() - t0
        deadline = t0 + chat.at + mix.timeout
        ttft: float | None = None
        itl: list[float] = []
        tokens = 0
        last: float | None = None
        endpoints: list[str] = []
        reason: str | None = None

        def record(outcome: str) -> ChatRecord:
            node = node_of(endpoints[-1]) if endpoints else None
            return ChatRecord(chat.index, mix.model, chat.at, sent, loop.time() - t0 - chat.at,
                              outcome, ttft, tuple(itl), tokens, node, len(set(endpoints)),
                              reason)

        try:
            async with asyncio.timeout_at(deadline + 1.0):  # the RPC deadline should fire first
                chunks = router.chat(mix.model, messages, max_tokens=mix.max_tokens,
                                     temperature=mix.temperature,
                                     timeout=max(deadline - loop.time(), 0.001))
                try:
                    async for chunk in chunks:
                        now = loop.time()
                        if not endpoints or endpoints[-1] != chunk.endpoint:
                            endpoints.append(chunk.endpoint)
                        n = len(chunk.token_ids)
                        if n:
                            if ttft is None:
                                ttft = now - t0 - chat.at
                            elif last is not None:
                                itl.extend([(now - last) / n] * n)
                            last = now
                            tokens += n
                        if chunk.final:
                            reason = chunk.finish_reason or "stop"
                            break
                finally:
                    close = getattr(chunks, "aclose", None)
                    if close is not None:
                        await close()
            outcome = OK if reason is not None else "INCOMPLETE"
        except asyncio.CancelledError:
            recorder.add_chat(record(CANCELLED))
            raise
        except Exception as exc:  # every failure is data; none may stop the run
            outcome = outcome_of(exc)
        finally:
            recorder.chats_in_flight -= 1
            in_flight[chat.mix] -= 1
        recorder.add_chat(record(outcome))

    async with asyncio.TaskGroup() as tg:
        for chat in plan:
            delay = t0 + chat.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight[chat.mix] >= workload.chats[chat.mix].max_in_flight:
                recorder.add_chat(ChatRecord(chat.index, workload.chats[chat.mix].model,
                                             chat.at, None, None, SHED))
                continue
            in_flight[chat.mix] += 1
            recorder.chats_in_flight += 1
            tg.create_task(one(chat))
