"""StreamWatch: what one generation stream teaches the Router's observations."""

from __future__ import annotations

import math

import pytest

from swarm._clock import FakeClock
from swarm._types import Digest
from swarm.protocol import Identity
from swarm.routing import StreamWatch
from swarm.scheduler import Failure, GenerationPolicy, Observations, TokenCost

PEER = Identity.from_seed(b"\x31" * 32).peer_id
LLM = Digest.of(b"llm")
POLICY = GenerationPolicy(prefill_speedup=10.0)


def watch() -> tuple[StreamWatch, Observations, FakeClock]:
    obs, clock = Observations(), FakeClock(start=10.0)
    return StreamWatch(obs, clock, PEER, LLM, TokenCost(100, 40), POLICY), obs, clock


def test_an_open_stream_counts_its_work_until_closed() -> None:
    w, obs, _ = watch()
    assert obs.get(PEER).streaming == ((10.0, 50.0, math.inf),)  # 40 + 100 / 10
    w.close()
    w.close()  # once
    assert obs.get(PEER).streaming == ()
    assert obs.get(PEER).stream_rate_for(LLM)[0] is None  # not finished: no sample


def test_a_finished_stream_is_a_rate_sample_from_its_first_token_on() -> None:
    w, obs, clock = watch()
    clock.advance(3.0)  # queue + prefill: not decode time
    w.received(2)  # the first chunk
    for _ in range(20):
        clock.advance(0.1)
        w.received(1)
    w.received(0)  # a chunk without tokens changes nothing
    w.close(finished=True)
    rate, at, samples = obs.get(PEER).stream_rate_for(LLM)
    assert rate == pytest.approx(10.0)
    assert (at, samples) == (pytest.approx(15.0), 1)
    assert obs.get(PEER).consecutive_failures == 0


def test_a_broken_stream_is_the_provider_s_failure_and_no_sample() -> None:
    w, obs, clock = watch()
    w.received(1)
    clock.advance(1.0)
    w.received(1)
    w.close(failure=Failure.UNAVAILABLE)
    w.close(finished=True)  # the finally after the except: already closed
    s = obs.get(PEER)
    assert (s.last_failure, s.streaming, s.stream_rate_for(LLM)[1]) == (
        Failure.UNAVAILABLE, (), -math.inf)


def test_the_first_token_against_its_estimate_is_a_surprise_sample() -> None:
    obs, clock = Observations(), FakeClock(start=10.0)
    w = StreamWatch(obs, clock, PEER, LLM, TokenCost(100, 40), POLICY, expected_first_token=1.0)
    assert obs.get(PEER).streaming == ((10.0, 50.0, 11.0),)  # due at 11
    clock.advance(3.0)
    w.received(1)
    s = obs.get(PEER)
    assert (s.stream_surprise, s.stream_surprise_at) == (pytest.approx(2.0), 13.0)
    assert s.streaming == ((10.0, 50.0, math.inf),)  # came: no longer overdue
    w.close(finished=True)
    assert obs.get(PEER).streaming == ()
