"""Provider-side admission: the pure decisions, and the Router against refusing providers.

Attacker cases: a provider that always says "full" must not make a client spin or starve,
and its (unauthenticated) depth claim must not divert more than its own share of traffic.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from swarm._errors import InferenceError, NoProviderError, OverloadedError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._types import Digest, PeerId
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.routing import DEPTH_TRAILER, Routed, Router, RoutingOptions, error_from_rpc
from swarm.scheduler import (
    AdmissionPolicy,
    BreakerState,
    Candidate,
    Observations,
    Request,
    SchedulerConfig,
    admits,
    choose_attempt,
)
from swarm.simnet import VirtualClock, run_virtual

WALL = 1_795_000_000.0
DIGEST = Digest.of(b"model")
PEERS = [Identity.from_seed(bytes([i + 1]) * 32).peer_id for i in range(4)]
REQUEST = pb.ModelInferRequest(model_name="acme/clf", model_version=str(DIGEST))


def swarm_view(peers: list[PeerId] = PEERS) -> PeerView:
    view = PeerView()
    for i, peer in enumerate(peers):
        advert = Advert(peer_id=peer, endpoints=(f"10.0.0.{i}:7070",),
                        models=(ModelOffer(DIGEST, "acme/clf", items_per_second=100.0),),
                        sequence=1, timestamp=WALL, ttl=300.0)
        view, verdict = admit(view, advert, now=0.0, wall=WALL)
        assert verdict.ok
    return view


# ---------------------------------------------------------------------- the provider's rule


def test_the_bound_is_the_latency_target_at_the_measured_rate() -> None:
    policy = AdmissionPolicy(target_wait=0.05)
    # 1,000 items/s x 50 ms = 50 items may wait.
    assert admits(policy, 49, 1000.0)
    assert not admits(policy, 50, 1000.0)
    # Never below one batch: batching needs a batch's worth queued.
    assert admits(policy, 63, 100.0, batch_items=64)
    assert not admits(policy, 64, 100.0, batch_items=64)


def test_an_empty_queue_an_unmeasured_rate_or_no_target_always_admit() -> None:
    assert admits(AdmissionPolicy(0.05), 0, 1.0)
    assert admits(AdmissionPolicy(0.05), 10_000, 0.0)
    assert admits(AdmissionPolicy(0.05), 10_000, math.nan)
    assert admits(AdmissionPolicy(0.0), 10_000, 1000.0)
    with pytest.raises(ValueError, match="target_wait"):
        AdmissionPolicy(-1.0)
    with pytest.raises(ValueError, match="target_wait"):
        AdmissionPolicy(math.inf)


# ---------------------------------------------------------------------- the client's rule


def test_refusers_are_skipped_until_max_refusals_then_the_best_must_queue() -> None:
    view, obs, rng = swarm_view(), Observations(), random.Random(0)
    config = SchedulerConfig(max_refusals=2)
    first = choose_attempt(view, Request(DIGEST), obs, rng, 0.0, config)[0]
    assert first.admissible
    obs.record_refusal(first.peer, 50, 0.01)
    tried = frozenset({first.peer})
    second = choose_attempt(view, Request(DIGEST, exclude=tried), obs, rng, 0.01, config,
                            refused=tried)[0]
    assert second.admissible
    assert second.peer != first.peer
    obs.record_refusal(second.peer, 3, 0.02)
    tried |= {second.peer}
    # Two refusals: the last attempt may not be refused; it goes to the best by estimate,
    # a refuser included (the one that reported 3 waiting beats the one with 50).
    last = choose_attempt(view, Request(DIGEST, exclude=tried), obs, rng, 0.02, config,
                          refused=tried)
    assert not last[0].admissible
    assert last[0].peer != first.peer
    assert {c.peer for c in last} == set(PEERS)


def test_when_every_provider_refused_the_last_attempt_goes_to_the_least_loaded() -> None:
    view, obs = swarm_view(PEERS[:2]), Observations()
    obs.record_refusal(PEERS[0], 40, 0.0)
    obs.record_refusal(PEERS[1], 2, 0.0)
    tried = frozenset(PEERS[:2])
    config = SchedulerConfig(max_refusals=5)
    for seed in range(20):
        last = choose_attempt(view, Request(DIGEST, exclude=tried), obs, random.Random(seed),
                              0.0, config, refused=tried)[0]
        assert (last.peer, last.admissible) == (PEERS[1], False)


def test_no_refusal_allowed_with_max_refusals_0_and_failures_stay_excluded() -> None:
    view, obs = swarm_view(PEERS[:2]), Observations()
    config = SchedulerConfig(max_refusals=0)
    assert not choose_attempt(view, Request(DIGEST), obs, random.Random(0), 0.0, config)[0].admissible
    with pytest.raises(NoProviderError):  # both failed (not refused): nobody left
        choose_attempt(view, Request(DIGEST, exclude=frozenset(PEERS[:2])), obs,
                       random.Random(0), 0.0, SchedulerConfig())


# ---------------------------------------------------------------------- the Router


Behaviour = Callable[[PeerId, bool], InferenceError | None]


class Providers:
    """A Caller for equal providers (10 ms each): `behaviour(peer, admissible)` may fail a
    call; records (peer, admissible) per call."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[PeerId, bool]] = []

    async def __call__(self, candidate: Candidate, request: pb.ModelInferRequest,
                       timeout: float) -> pb.ModelInferResponse:
        self.calls.append((candidate.peer, candidate.admissible))
        await asyncio.sleep(0.01)
        error = self.behaviour(candidate.peer, candidate.admissible)
        if error is not None:
            raise error
        response = pb.ModelInferResponse(model_name=request.model_name)
        params = response.parameters
        params["swarm_queue_us"].int64_param = 0
        params["swarm_compute_us"].int64_param = 8000
        params["swarm_queue_depth"].int64_param = 0
        return response


def full(depth: int) -> OverloadedError:
    return OverloadedError("queue past its bound", queue_depth=depth)


def route(behaviour: Behaviour, requests: int, *, peers: list[PeerId] = PEERS,
          config: SchedulerConfig | None = None,
          ) -> tuple[list[Routed | InferenceError | NoProviderError], Router, Providers]:
    """`requests` requests, one after another, in virtual time."""
    caller = Providers(behaviour)
    view = swarm_view(peers)

    async def main() -> tuple[list[Routed | InferenceError | NoProviderError], Router]:
        router = Router(lambda: view, rng=random.Random(1), caller=caller,
                        clock=VirtualClock.current(), config=config or SchedulerConfig(explore=0))
        out: list[Routed | InferenceError | NoProviderError] = []
        for _ in range(requests):
            try:
                out.append(await router.send(REQUEST, DIGEST, 1, RoutingOptions(hedge=False)))
            except (InferenceError, NoProviderError) as exc:
                out.append(exc)
        return out, router

    out, router = run_virtual(main())
    return out, router, caller


def test_a_refusal_moves_on_without_counting_as_a_failure() -> None:
    refuser = PEERS[0]
    out, router, caller = route(
        lambda peer, admissible: full(9) if peer == refuser and admissible else None, 40)
    assert all(isinstance(r, Routed) for r in out)
    refused = [i for i, (peer, _) in enumerate(caller.calls) if peer == refuser]
    assert refused, "the refuser was never tried"
    stats = router.observations.get(refuser)
    assert (stats.failures, stats.consecutive_failures) == (0, 0)
    assert stats.breaker(1e9) is BreakerState.CLOSED
    assert router.refusals == len(refused)
    # Its depth claim lands on it, and only on it.
    assert stats.depth == 9
    assert all(router.observations.get(p).depth in (None, 0) for p in PEERS[1:])


def test_providers_that_always_say_full_cost_a_bounded_number_of_calls() -> None:
    """Every provider refuses every request that allows it: no spinning (each request makes
    at most max_refusals refused calls) and no starving (the last attempt is queued)."""
    config = SchedulerConfig(explore=0, max_refusals=2)
    out, router, caller = route(lambda peer, admissible: full(0) if admissible else None, 50,
                                config=config)
    assert all(isinstance(r, Routed) for r in out)
    assert len(caller.calls) == 50 * 3
    assert [a for _, a in caller.calls] == [True, True, False] * 50
    assert all(router.observations.get(p).failures == 0 for p in PEERS)


def test_a_provider_that_refuses_even_the_last_attempt_is_a_failure_and_bounded() -> None:
    """The only provider refuses everything, also the attempt that did not allow refusal:
    that is an overload like any other (a failure: the breaker opens), and each request
    ends after two calls instead of spinning."""
    liar = PEERS[0]
    out, router, caller = route(lambda peer, admissible: full(0), 10, peers=[liar])
    assert isinstance(out[0], OverloadedError)
    # Then its breaker is open: no provider, at once, without a call.
    assert all(isinstance(r, OverloadedError | NoProviderError) for r in out)
    assert caller.calls[:2] == [(liar, True), (liar, False)]
    assert len(caller.calls) <= 2 * 10
    stats = router.observations.get(liar)
    assert stats.failures >= 3
    assert stats.breaker(router._clock.monotonic()) is not BreakerState.CLOSED


def test_a_huge_depth_claim_diverts_no_more_than_the_claimers_own_share() -> None:
    """A provider claims an absurd queue (int64 max) in its refusals. It loses its own
    share; the others' shares stay within the spread of equals (nothing piles onto one),
    and none of them is made to look loaded."""
    liar = PEERS[0]
    n = 400
    baseline_out, _, _baseline = route(lambda peer, admissible: None, n)
    out, router, caller = route(
        lambda peer, admissible: full(2**63 - 1) if peer == liar and admissible else None, n)
    assert all(isinstance(r, Routed) for r in out)
    served = Counter(r.peer for r in out if isinstance(r, Routed))
    before = Counter(r.peer for r in baseline_out if isinstance(r, Routed))
    honest = [served[p] for p in PEERS[1:]]
    assert sum(honest) >= n - served[liar]
    for p in PEERS[1:]:
        assert served[p] >= before[p]  # each honest one got at least what it had
    assert max(honest) <= 1.5 * min(honest)
    assert router.observations.get(liar).depth == 1 << 20  # clamped
    assert all(router.observations.get(p).depth == 0 for p in PEERS[1:])
    # The liar's refusals cost one extra call on a few requests only.
    assert len(caller.calls) <= n + router.refusals <= n + n // 4


# ---------------------------------------------------------------------- the wire


def rpc_error(code: grpc.StatusCode, *trailers: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                details="queue past its bound")


def test_a_depth_trailer_makes_resource_exhausted_a_refusal() -> None:
    error = error_from_rpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, (DEPTH_TRAILER, "17")),
                           "10.0.0.1:7070")
    assert isinstance(error, OverloadedError)
    assert error.queue_depth == 17
    plain = error_from_rpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), "10.0.0.1:7070")
    assert isinstance(plain, OverloadedError)
    assert plain.queue_depth is None


@pytest.mark.parametrize("value", ["-1", "1e9", "0x10", "", "9" * 40, "１２", "17 "])
def test_a_malformed_depth_trailer_is_no_refusal(value: str) -> None:
    error = error_from_rpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, (DEPTH_TRAILER, value)),
                           "10.0.0.1:7070")
    assert isinstance(error, OverloadedError)
    assert error.queue_depth is None


def test_a_refused_attempt_is_not_paid_for() -> None:
    """A provider paid per attempt could refuse everything and still collect: the Router
    takes a refused attempt's payment back (the next receipt repeats the total), so what a
    provider is signed for is what it served."""
    refuser = PEERS[0]
    owed: Counter[PeerId] = Counter()

    def pay(candidate: Candidate, items: int) -> dict[str, str]:
        owed[candidate.peer] += 10 * items
        return {"swarm_receipt": str(owed[candidate.peer])}

    def unpay(candidate: Candidate, items: int) -> None:
        owed[candidate.peer] -= 10 * items

    caller = Providers(lambda peer, admissible: full(9) if peer == refuser and admissible
                       else None)
    view = swarm_view()

    async def main() -> int:
        router = Router(lambda: view, rng=random.Random(1), caller=caller,
                        clock=VirtualClock.current(), config=SchedulerConfig(explore=0))
        options = RoutingOptions(hedge=False, pay=pay, unpay=unpay)
        served = 0
        for _ in range(40):
            routed = await router.send(REQUEST, DIGEST, 1, options)
            served += routed.peer == refuser
        return served

    served_by_refuser = run_virtual(main())
    assert any(peer == refuser for peer, _ in caller.calls), "the refuser was never tried"
    assert owed[refuser] == 10 * served_by_refuser
    assert sum(owed.values()) == 10 * 40
