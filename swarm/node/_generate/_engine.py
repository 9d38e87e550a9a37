"""The generation engine of one model: continuous batching driven by `schedule()`.

One asyncio task (`run()`) owns the sequences. Each step it asks the pure
`schedule()` what to compute, runs that (prefill chunks, one batched decode, and the
sampling) on the engine's own thread so the event loop stays free, then hands every
sequence its new text. A caller reads a `Generation` (an async iterator of `Delta`s);
closing it, or cancelling the task reading it, marks the sequence cancelled and its
KV slot is freed at the next step.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import torch

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import ClosedError, InvalidInputError, OverloadedError, UnavailableError
from swarm.node._generate._schedule import SchedulerConfig, SeqState, Step, blocks_for, schedule

__all__ = ["Delta", "EngineStats", "Generation", "GenerationEngine", "RequestTiming", "SamplingParams"]


RATE_WINDOW = 10.0  # seconds over which tokens/s is measured


class Forward(Protocol):
    """What the engine needs of a model (swarm.node._generate._llama.LeanLlama)."""

    slots: int
    max_len: int

    def prefill(self, slot: int, tokens: list[int], start: int) -> torch.Tensor: ...
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor: ...


class Detokenizer(Protocol):
    eos_id: int

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # a seeded sequence samples the same tokens every time
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any
    logprobs: bool = False
    ignore_eos: bool = False  # run to max_tokens (benchmarks)


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of one sequence; the last one carries `finish_reason` ("stop", "length")."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float  # fraction of the KV block budget in use
    prompt_tokens: int  # totals since start
    generation_tokens: int
    preemptions: int
    tokens_per_second: float  # generated, over the last RATE_WINDOW seconds


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """One finished (or cancelled) sequence, for metrics: monotonic seconds."""

    arrived: float
    scheduled: float | None  # first admitted to the batch
    first_token: float | None
    finished: float
    prompt_tokens: int
    completion_tokens: int
    reason: str  # stop, length, abort (engine stopped), cancelled


@dataclass(eq=False)
class _Seq:
    id: int
    prompt: list[int]
    params: SamplingParams
    arrived: float
    generator: torch.Generator | None
    queue: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    computed: int = 0
    target: int = 0  # tokens to hold in cache before decoding: prompt (+ generated)
    emitted: int = 0  # characters of text handed out
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[float] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    scheduled: float | None = None  # first admitted
    first_token: float | None = None
    last_token: float | None = None

    def state(self) -> SeqState:
        return SeqState(self.id, max(self.target, self.computed), self.computed)


class Generation:
    """The deltas of one request; `aclose()` (or cancelling the reader) cancels it."""

    def __init__(self, engine: GenerationEngine, seq: _Seq) -> None:
        self._engine = engine
        self._seq = seq
        self.prompt_tokens = len(seq.prompt)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        if self._seq.finished and self._seq.queue.empty():
            raise StopAsyncIteration
        try:
            delta = await self._seq.queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        return delta

    def cancel(self) -> None:
        self._engine._cancel(self._seq)

    async def aclose(self) -> None:
        self.cancel()


class GenerationEngine:
    def __init__(self, model: Forward, tokenizer: Detokenizer, config: SchedulerConfig, *,
                 clock: Clock = SYSTEM_CLOCK, name: str = "", max_waiting: int = 256,
                 max_len: int | None = None) -> None:
        self._max_len = model.max_len if max_len is None else min(max_len, model.max_len)
        if config.max_num_seqs > model.slots:
            raise ValueError(f"max_num_seqs {config.max_num_seqs} > the model's {model.slots} slots")
        if config.kv_blocks * config.block_size < self._max_len + 1:
            raise ValueError("the KV budget must hold at least one sequence of max_len tokens")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.max_waiting = max_waiting
        self._clock = clock
        self._ids = itertools.count()
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._free = list(range(config.max_num_seqs))
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"generate:{name}")
        self._closed = False
        self._draining = False
        self._idle = asyncio.Event()  # set while no sequence runs or waits
        self._idle.set()
        self._prompt_total = 0
        self._generated_total = 0
        self._preemptions = 0
        self._rate: deque[tuple[float, int]] = deque()  # (step end, tokens generated)
        # Called once per sequence as it leaves (metrics); must not raise.
        self.on_finish: Callable[[RequestTiming], None] | None = None
        # Called with the seconds between consecutive tokens of a sequence.
        self.on_token_interval: Callable[[float], None] | None = None

    @property
    def max_len(self) -> int:
        """Context per sequence: prompt + generated tokens."""
        return self._max_len

    def stats(self) -> EngineStats:
        used = sum(blocks_for(s.computed, self.config.block_size) for s in self._running)
        now = self._clock.monotonic()
        while self._rate and self._rate[0][0] < now - RATE_WINDOW:
            self._rate.popleft()
        rate = sum(n for _, n in self._rate) / RATE_WINDOW
        return EngineStats(len(self._running), len(self._waiting), used / self.config.kv_blocks,
                           self._prompt_total, self._generated_total, self._preemptions, rate)

    def submit(self, prompt: Sequence[int], params: SamplingParams) -> Generation:
        """Queue a sequence; InvalidInputError when it cannot fit the context."""
        if self._closed:
            raise ClosedError("the generation engine is stopped")
        if self._draining:  # UNAVAILABLE: callers go to another provider
            raise UnavailableError(f"{self.name} is draining: it takes no new sequences")
        if not prompt:
            raise InvalidInputError("the prompt is empty")
        if params.max_tokens < 1:
            raise InvalidInputError("max_tokens must be at least 1")
        if len(prompt) + params.max_tokens > self.max_len:
            raise InvalidInputError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the context of {self.max_len} tokens")
        if len(self._waiting) >= self.max_waiting:
            raise OverloadedError(f"{len(self._waiting)} sequences already wait for {self.name}")
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        seq = _Seq(next(self._ids), list(prompt), params, self._clock.monotonic(), generator)
        seq.target = len(seq.prompt)
        self._waiting.append(seq)
        self._idle.clear()
        self._wake.set()
        return Generation(self, seq)

    async def drain(self, timeout: float) -> bool:
        """Take no new sequences; wait up to `timeout` seconds for the running and waiting
        ones to finish. True when they did; those left are aborted when the engine stops
        (their callers see finish_reason "abort" and resume elsewhere)."""
        self._draining = True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _cancel(self, seq: _Seq) -> None:
        if not seq.finished:
            seq.cancelled = True
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        """Serve sequences until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                self._drop_cancelled()
                if not self._running and not self._waiting:
                    self._idle.set()
                    await self._wake.wait()
                    continue
                step = schedule([s.state() for s in self._running],
                                [s.state() for s in self._waiting], self.config)
                self._apply(step)
                if step.empty:  # nothing fits yet (cannot happen with a valid config)
                    await self._wake.wait()
                    continue
                plan = self._plan(step)
                sampled = await loop.run_in_executor(self._executor, self._compute, plan)
                self._deliver(plan, sampled)
        finally:
            self.close()
            for seq in [*self._running, *self._waiting]:
                self._finish(seq, None)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in (*self._running, *self._waiting) if s.cancelled]:
            if seq in self._waiting:
                self._waiting.remove(seq)
            self._finish(seq, "cancelled")

    def _release(self, seq: _Seq) -> None:
        self._running.remove(seq)
        if seq.slot is not None:
            heapq.heappush(self._free, seq.slot)
            seq.slot = None

    def _apply(self, step: Step) -> None:
        by_id = {s.id: s for s in self._running}
        for sid in reversed(step.preempted):  # newest first back to the queue's front
            seq = by_id[sid]
            self._release(seq)
            seq.computed = 0
            seq.target = len(seq.prompt) + len(seq.generated)
            self._waiting.appendleft(seq)
            self._preemptions += 1
        admitted = set(step.admitted)
        if admitted:
            now = self._clock.monotonic()
            moving = [s for s in self._waiting if s.id in admitted]
            self._waiting = deque(s for s in self._waiting if s.id not in admitted)
            for seq in moving:
                seq.slot = heapq.heappop(self._free)
                if seq.scheduled is None:
                    seq.scheduled = now
                self._running.append(seq)

    def _plan(self, step: Step) -> _Plan:
        by_id = {s.id: s for s in self._running}
        prefills = []
        for sid, n in step.prefill:
            seq = by_id[sid]
            ids = (seq.prompt + seq.generated)[seq.computed:seq.computed + n]
            assert seq.slot is not None
            prefills.append((seq, seq.slot, ids, seq.computed, seq.computed + n >= seq.target))
        decodes = [by_id[sid] for sid in step.decode]
        return _Plan(prefills, decodes)

    def _compute(self, plan: _Plan) -> dict[int, tuple[int, float]]:
        """On the engine's thread: the forward passes and the sampling."""
        sampled: dict[int, tuple[int, float]] = {}
        for seq, slot, ids, start, last in plan.prefills:
            logits = self.model.prefill(slot, ids, start)
            if last:
                sampled[seq.id] = _sample(logits, seq.params, seq.generator)
        if plan.decodes:
            seqs = plan.decodes
            logits = self.model.decode([s.slot for s in seqs if s.slot is not None],
                                       [s.generated[-1] for s in seqs],
                                       [s.computed for s in seqs])
            for row, seq in zip(logits, seqs, strict=True):
                sampled[seq.id] = _sample(row, seq.params, seq.generator)
        return sampled

    def _deliver(self, plan: _Plan, sampled: dict[int, tuple[int, float]]) -> None:
        now = self._clock.monotonic()
        self._rate.append((now, len(sampled)))
        if len(self._rate) > 4096:  # bounded however fast steps come
            self._rate.popleft()
        for seq, _, ids, _, _ in plan.prefills:
            seq.computed += len(ids)
            self._prompt_total += len(ids)
        for seq in plan.decodes:
            seq.computed += 1
        for seq in [*(p[0] for p in plan.prefills), *plan.decodes]:
            if seq.id not in sampled or seq.cancelled or seq.finished:
                continue
            token, logprob = sampled[seq.id]
            if seq.first_token is None:
                seq.first_token = now
            elif self.on_token_interval is not None and seq.last_token is not None:
                self.on_token_interval(now - seq.last_token)
            seq.last_token = now
            seq.generated.append(token)
            seq.target = seq.computed
            self._generated_total += 1
            seq.pending_ids.append(token)
            seq.pending_logprobs.append(logprob)
            self._advance(seq, token)

    def _advance(self, seq: _Seq, token: int) -> None:
        params = seq.params
        ids = seq.generated
        eos = token == self.tokenizer.eos_id and not params.ignore_eos
        text = self.tokenizer.decode(ids[:-1] if eos else ids)
        reason: str | None = "stop" if eos else None
        cut = min((i for i in (text.find(s) for s in params.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif reason is None and len(ids) >= params.max_tokens:
            reason = "length"
        if reason is None:
            hold = 1 if text.endswith("\ufffd") else 0  # a character still incomplete
            for s in params.stop:
                for k in range(min(len(s) - 1, len(text)), hold, -1):
                    if text.endswith(s[:k]):
                        hold = k
                        break
            visible = len(text) - hold
        else:
            visible = len(text)
        if visible > seq.emitted or reason is not None:
            delta = Delta(text[seq.emitted:visible] if visible > seq.emitted else "",
                          tuple(seq.pending_ids),
                          tuple(seq.pending_logprobs) if params.logprobs else (),
                          reason, len(seq.prompt), len(ids))
            seq.emitted = max(seq.emitted, visible)
            seq.pending_ids, seq.pending_logprobs = [], []
            seq.queue.put_nowait(delta)
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: _Seq, reason: str | None) -> None:
        if seq.finished:
            return
        seq.finished = True
        if reason is None:  # the engine stopped: wake the reader with an abort
            seq.queue.put_nowait(Delta("", finish_reason="abort", prompt_tokens=len(seq.prompt),
                                       completion_tokens=len(seq.generated)))
        if seq in self._running:
            self._release(seq)
        if self.on_finish is not None:
            self.on_finish(RequestTiming(
                seq.arrived, seq.scheduled, seq.first_token, self._clock.monotonic(),
                len(seq.prompt), len(seq.generated), reason or "abort"))


@dataclass(slots=True)
class _Plan:
    prefills: list[tuple[_Seq, int, list[int], int, bool]]
    decodes: list[_Seq]


def _sample(logits: torch.Tensor, params: SamplingParams,
            generator: torch.Generator | None) -> tuple[int, float]:
    """A token from one row of logits, and its log-probability under the model."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    if params.temperature <= 0:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_p, dim=-1)
            keep = cumulative - sorted_p < params.top_p  # the smallest set reaching top_p
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1, generator=generator)
            token = int(order[choice])
        else:
            token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(logprobs[token])
