"""builtin/smollm2's lean forward and the continuous-batching engine, in process.

The model loads once for the module; each test runs its own engine over it, with
few tokens per test. Texts are compared only with this backend's own greedy output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch

from swarm._errors import InvalidInputError, OverloadedError, UnavailableError
from swarm.node._generate import Delta, GenerationEngine, SamplingParams, SchedulerConfig
from swarm.node._generate._llama import LeanLlama, read_gguf, smollm2_path
from swarm.node._generate._tokenizer import ChatTokenizer
from tests.waiting import wait_until

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SLOTS = 4
MAX_LEN = 256


@pytest.fixture(scope="module")
def loaded() -> tuple[LeanLlama, ChatTokenizer]:
    contents = read_gguf(smollm2_path())
    return (LeanLlama(contents, torch.device("cpu"), slots=SLOTS, max_len=MAX_LEN, weights="int4"),
           ChatTokenizer(contents.metadata))


def make_engine(loaded: tuple[LeanLlama, ChatTokenizer], **limits: int) -> GenerationEngine:
    model, tok = loaded
    waiting = limits.pop("waiting", 8)
    max_len = limits.pop("max_len", MAX_LEN)
    config = SchedulerConfig(**{"max_num_seqs": SLOTS, "max_batched_tokens": 64,
                                "kv_blocks": 64, "block_size": 16, **limits})
    return GenerationEngine(model, tok, config, name="test", max_waiting=waiting, max_len=max_len)


@pytest.fixture
async def engine(loaded: tuple[LeanLlama, ChatTokenizer]) -> AsyncIterator[GenerationEngine]:
    async with running(make_engine(loaded)) as e:
        yield e


class running:
    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GenerationEngine:
        self.task = asyncio.create_task(self.engine.run())
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def collect(engine: GenerationEngine, prompt: list[int],
                  params: SamplingParams) -> list[Delta]:
    return [d async for d in engine.submit(prompt, params)]


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)  # type: ignore[arg-type]


def test_tokenizer_matches_chat_format(loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    _, tok = loaded
    ids = tok.chat_prompt(FRANCE)
    text = tok.decode(ids)
    assert "What is the capital of France?" in text
    assert ids.count(1) == 3  # <|im_start|> for system, user, assistant: control tokens
    # user text spelling a control token stays text
    assert 2 not in tok.encode("say <|im_end|> now")


async def test_greedy_answer_is_sensible_and_deterministic(
        engine: GenerationEngine, loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    prompt = loaded[1].chat_prompt(FRANCE)
    first = await collect(engine, prompt, greedy(12))
    text = "".join(d.text for d in first)
    assert "Paris" in text
    assert first[-1].finish_reason in ("stop", "length")
    assert first[-1].prompt_tokens == len(prompt)
    again = "".join(d.text for d in await collect(engine, prompt, greedy(12)))
    assert again == text


async def test_concurrent_sequences_batch_and_finish(
        engine: GenerationEngine, loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    tok = loaded[1]
    prompts = [tok.encode(p) for p in ("One, two, three,", "The sky is", "Hello, my name")]
    results = await asyncio.gather(*(collect(engine, p, greedy(6)) for p in prompts))
    for deltas in results:
        assert deltas[-1].finish_reason in ("stop", "length")
        assert sum(len(d.token_ids) for d in deltas) == deltas[-1].completion_tokens
    assert engine.stats().running == 0
    assert engine.stats().generation_tokens >= 3


async def test_max_tokens_ends_with_length_and_stop_strings_cut(
        engine: GenerationEngine, loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    prompt = loaded[1].encode("1, 2, 3, 4, 5,")
    full = await collect(engine, prompt, greedy(5))
    assert full[-1].finish_reason == "length"
    assert full[-1].completion_tokens == 5
    text = "".join(d.text for d in full)
    stop = text.strip()[:2]  # something the greedy text surely holds
    cut = await collect(engine, prompt, greedy(5, stop=(stop,)))
    assert cut[-1].finish_reason == "stop"
    assert stop not in "".join(d.text for d in cut)


async def test_seeded_sampling_repeats(engine: GenerationEngine,
                                       loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    prompt = loaded[1].encode("Once upon a time")
    params = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, seed=7, logprobs=True)
    a = await collect(engine, prompt, params)
    b = await collect(engine, prompt, params)
    assert [d.token_ids for d in a] == [d.token_ids for d in b]
    assert all(lp <= 0 for d in a for lp in d.logprobs)


async def test_cancelled_reader_frees_its_slot(engine: GenerationEngine,
                                               loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    generation = engine.submit(loaded[1].encode("Tell me a long story:"), greedy(200))
    await generation.__anext__()
    assert engine.stats().running == 1
    await generation.aclose()
    await wait_until(lambda: engine.stats().running == 0, what="the cancelled sequence to leave")
    assert engine.stats().kv_usage == 0


async def test_kv_exhaustion_preempts_and_recomputes(
        loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    # 17 blocks of 4 tokens: room for one 64-token sequence. Two 24-token prompts (7 blocks
    # each) fit; grown by 12 tokens (9 blocks each) they do not: the newer is preempted.
    tok = loaded[1]
    async with running(make_engine(loaded, kv_blocks=17, block_size=4, max_len=64)) as engine:
        prompt = tok.encode("Count: " + ", ".join(str(i) for i in range(1, 50)))[:24]
        results = await asyncio.gather(*(collect(engine, prompt, greedy(14)) for _ in range(2)))
        assert engine.stats().preemptions >= 1
        for deltas in results:
            assert deltas[-1].finish_reason in ("stop", "length")


async def test_bad_requests_refused(engine: GenerationEngine) -> None:
    with pytest.raises(InvalidInputError, match="context"):
        engine.submit([1] * (MAX_LEN - 3), greedy(4))
    with pytest.raises(InvalidInputError, match="empty"):
        engine.submit([], greedy(4))
    with pytest.raises(InvalidInputError, match="max_tokens"):
        engine.submit([1], greedy(0))


async def test_waiting_queue_is_bounded(loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    engine = make_engine(loaded, waiting=2)  # not running: everything waits
    try:
        engine.submit([5, 6], greedy(2))
        engine.submit([5, 6], greedy(2))
        with pytest.raises(OverloadedError):
            engine.submit([5, 6], greedy(2))
    finally:
        engine.close()


async def test_drain_finishes_running_sequences_and_refuses_new_ones(
        loaded: tuple[LeanLlama, ChatTokenizer]) -> None:
    _, tok = loaded
    prompt = tok.chat_prompt(FRANCE)
    async with running(make_engine(loaded)) as engine:
        stream = engine.submit(prompt, greedy(6, ignore_eos=True))
        first = await stream.__anext__()  # running
        assert not await engine.drain(0.0)  # still running at a zero deadline
        with pytest.raises(UnavailableError, match="draining"):
            engine.submit(prompt, greedy(2))
        rest = [d async for d in stream]
        assert await engine.drain(30.0)
        deltas = [first, *rest]
        assert deltas[-1].finish_reason == "length"
        assert sum(len(d.token_ids) for d in deltas) == 6
