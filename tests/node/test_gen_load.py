"""The generation engine's load as adverts carry it (issue 15, routing by tokens): queued
prompt and decode tokens, tokens/s per sequence. A fake forward (no model) whose steps
take a known time on a clock it moves itself."""

from __future__ import annotations

import asyncio

import pytest
import torch

from swarm._types import Digest
from swarm.node._generate import GenerationEngine, SamplingParams, SchedulerConfig
from swarm.node._generate._model import GenerativeModel, generative_offer
from tests.waiting import wait_until

VOCAB = 8
EOS = 7


class Ticks:
    """A clock the fake forward moves: each pass takes `step` seconds."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


class FakeForward:
    def __init__(self, clock: Ticks, slots: int, *, decode_s: float = 0.05) -> None:
        self.clock = clock
        self.slots = slots
        self.max_len = 512
        self.decode_s = decode_s
        self.decodes = 0

    def _logits(self, rows: int) -> torch.Tensor:
        logits = torch.zeros(rows, VOCAB)
        logits[:, 1] = 1.0  # always token 1, never EOS
        return logits

    def prefill(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        self.clock.now += 0.001 * len(tokens)
        return self._logits(1)[0]

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        self.clock.now += self.decode_s
        self.decodes += 1
        return self._logits(len(slots))


class Tok:
    eos_id = EOS
    vocab_size = VOCAB

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


def engine(slots: int = 2) -> tuple[GenerationEngine, FakeForward]:
    clock = Ticks()
    model = FakeForward(clock, slots)
    config = SchedulerConfig(max_num_seqs=slots, max_batched_tokens=64, kv_blocks=256,
                             block_size=16)
    return GenerationEngine(model, Tok(), config, clock=clock, name="fake"), model


def test_queued_tokens_count_prompts_and_max_tokens_of_everything_waiting() -> None:
    e, _ = engine()
    e.submit([1] * 30, SamplingParams(max_tokens=40))
    e.submit([1] * 10, SamplingParams(max_tokens=5))
    stats = e.stats()
    assert (stats.waiting, stats.running) == (2, 0)
    assert (stats.queued_prompt_tokens, stats.queued_decode_tokens) == (40, 45)
    assert stats.sequence_tokens_per_second == 0.0  # never decoded: unknown, not fast


async def test_load_drains_as_sequences_run_and_the_rate_is_per_sequence() -> None:
    e, model = engine(slots=2)
    task = asyncio.create_task(e.run())
    try:
        a = e.submit([1] * 20, SamplingParams(max_tokens=30, temperature=0.0))
        b = e.submit([1] * 20, SamplingParams(max_tokens=30, temperature=0.0))
        c = e.submit([1] * 20, SamplingParams(max_tokens=30, temperature=0.0))  # no slot
        await wait_until(lambda: model.decodes >= 5, what="a few decode steps")
        stats = e.stats()
        assert (stats.running, stats.waiting) == (2, 1)
        assert stats.queued_prompt_tokens == 20  # c's prompt; a's and b's are in the cache
        assert 30 < stats.queued_decode_tokens < 90
        # Each decode step takes 0.05 s and gives every running sequence one token.
        assert stats.sequence_tokens_per_second == pytest.approx(20.0, rel=0.05)
        for g in (a, b, c):
            assert len([d async for d in g]) >= 1
        stats = e.stats()
        assert (stats.queued_prompt_tokens, stats.queued_decode_tokens) == (0, 0)
        assert stats.sequence_tokens_per_second == pytest.approx(20.0, rel=0.05)
        offer = generative_offer(GenerativeModel("fake", Digest.of(b"fake"), Tok(), e))  # type: ignore[arg-type]
        assert offer.sequence_tokens_per_second == pytest.approx(20.0, rel=0.05)
        assert offer.max_batch_size == 2
        assert offer.running_sequences == 0
        assert offer.tokens_per_second == pytest.approx(90 / 10, rel=0.05)  # over RATE_WINDOW
        model.clock.now += 60  # idle for a minute: the last measured rate stays
        assert e.stats().sequence_tokens_per_second == pytest.approx(20.0, rel=0.05)
        assert e.stats().tokens_per_second == 0.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
