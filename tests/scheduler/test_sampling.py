"""choose() at scale: SchedulerConfig.max_considered (recently used + a random sample)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from swarm._errors import NoProviderError
from swarm._types import Digest, PeerId
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, Price, admit
from swarm.scheduler import Observations, Request, SchedulerConfig, choose

MODEL = Digest.of(b"model")
WALL = 1_795_000_000.0
PEERS = [Identity.from_seed(i.to_bytes(2, "big") * 16).peer_id for i in range(200)]
# Return every estimated provider, so the tests see what was considered.
ALL = 1000


def swarm_view(n: int, *, price: dict[int, int] | None = None) -> PeerView:
    view = PeerView()
    for i in range(n):
        advert = Advert(
            peer_id=PEERS[i], endpoints=(f"10.0.0.{i}:8001",),
            models=(ModelOffer(MODEL, "org/model", items_per_second=100.0),),
            sequence=1, timestamp=WALL, ttl=600.0,
            price=Price(per_request_micros=(price or {}).get(i, 0)))
        view, verdict = admit(view, advert, now=0.0, wall=WALL)
        assert verdict.ok
    return view


def considered(view: PeerView, obs: Observations, seed: int, *, d: int | None,
               request: Request | None = None, now: float = 1.0) -> list[PeerId]:
    config = SchedulerConfig(candidates=ALL, max_considered=d)
    return [c.peer for c in choose(view, request or Request(MODEL), obs, random.Random(seed),
                                   now, config)]


def test_off_or_larger_than_the_swarm_changes_nothing() -> None:
    view = swarm_view(20)
    obs = Observations()
    obs.record_success(PEERS[3], 0.05, 1, now=0.5, expected=0.04)
    for seed in range(20):
        rng_off, rng_big = random.Random(seed), random.Random(seed)
        off = choose(view, Request(MODEL), obs, rng_off, 1.0, SchedulerConfig())
        big = choose(view, Request(MODEL), obs, rng_big, 1.0, SchedulerConfig(max_considered=20))
        assert off == big
        assert rng_off.random() == rng_big.random()  # no extra draws either


def test_estimates_at_most_max_considered_and_explores_them_all() -> None:
    view = swarm_view(200)
    seen: Counter[PeerId] = Counter()
    for seed in range(300):
        peers = considered(view, Observations(), seed, d=8)
        assert len(peers) == len(set(peers)) == 8
        seen.update(peers)
    assert len(seen) > 190  # 2400 draws of 200 providers: (199/200)^2400 ~ 6e-6 each missed


def test_recently_used_providers_are_always_considered_up_to_half() -> None:
    view = swarm_view(200)
    obs = Observations()
    for k, i in enumerate(range(10, 16)):  # six answered recently, 11..15 most recently
        obs.record_success(PEERS[i], 0.05, 1, now=90.0 + k, expected=0.05)
    obs.record_success(PEERS[20], 0.05, 1, now=99.5, expected=0.05)  # the most recent
    obs.start(PEERS[40], now=99.9)  # in flight, never answered: not "recently used"
    obs.record_success(PEERS[30], 0.05, 1, now=10.0, expected=0.05)  # long ago
    most_recent = {PEERS[20], PEERS[15], PEERS[14], PEERS[13]}
    old: Counter[PeerId] = Counter()
    for seed in range(100):
        peers = set(considered(view, obs, seed, d=8, now=100.0))
        assert most_recent <= peers
        old[PEERS[30]] += PEERS[30] in peers
    assert old[PEERS[30]] < 20  # only by chance: about 4 in 196 per call


def test_falls_back_to_every_provider_when_no_sampled_one_qualifies() -> None:
    view = swarm_view(200, price={i: 0 if i == 123 else 1000 for i in range(200)})
    for seed in range(50):
        first = considered(view, Observations(), seed, d=4, request=Request(MODEL, max_price=10))
        assert first == [PEERS[123]]
    with pytest.raises(NoProviderError, match="all ask more than max_price 1"):
        considered(swarm_view(50, price=dict.fromkeys(range(50), 5)), Observations(), 0, d=4,
                   request=Request(MODEL, max_price=1))


def test_same_seed_same_choice() -> None:
    view = swarm_view(200)
    obs = Observations()
    obs.record_success(PEERS[7], 0.05, 1, now=0.5, expected=0.04)
    assert [considered(view, obs, s, d=8) for s in range(10)] == [
        considered(view, obs, s, d=8) for s in range(10)]
    assert considered(view, obs, 1, d=8) != considered(view, obs, 2, d=8)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_considered"):
        SchedulerConfig(max_considered=1)
    with pytest.raises(ValueError, match="recent_window"):
        SchedulerConfig(recent_window=-1.0)
