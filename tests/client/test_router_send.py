"""Router.send over an injected caller, in virtual time: retries, hedges, deadlines by code."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from swarm._clock import FakeClock
from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    UnavailableError,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._types import Digest
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.routing import Routed, Router, RoutingOptions
from swarm.scheduler import Candidate, SchedulerConfig
from swarm.simnet import VirtualClock, run_virtual

WALL = 1_795_000_000.0
DIGEST = Digest.of(b"model")
PEERS = [Identity.from_seed(bytes([i + 1]) * 32).peer_id for i in range(3)]
REQUEST = pb.ModelInferRequest(model_name="acme/clf", model_version=str(DIGEST))

# What the n-th call does (0-based): sleep this long, then answer or raise.
Script = Callable[[int], tuple[float, InferenceError | None]]


def swarm_view() -> PeerView:
    view = PeerView()
    for i, peer in enumerate(PEERS):
        advert = Advert(peer_id=peer, endpoints=(f"10.0.0.{i}:7070",),
                        models=(ModelOffer(DIGEST, "acme/clf"),), sequence=1, timestamp=WALL,
                        ttl=300.0)
        view, verdict = admit(view, advert, now=0.0, wall=WALL)
        assert verdict.ok
    return view


class ScriptedCaller:
    """A Caller whose n-th call follows `script`; records timeouts and cancellations."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.timeouts: list[float] = []
        self.cancelled = 0

    async def __call__(self, candidate: Candidate, request: pb.ModelInferRequest,
                       timeout: float) -> pb.ModelInferResponse:
        n = len(self.timeouts)
        self.timeouts.append(timeout)
        delay, error = self.script(n)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(delay)
        except TimeoutError:
            raise DeadlineExceededError(f"{candidate.endpoint}: deadline exceeded") from None
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if error is not None:
            raise error
        return pb.ModelInferResponse(model_name=request.model_name, id=str(n))


def send(script: Script, options: RoutingOptions, *,
         prime: Callable[[Router], None] = lambda r: None,
         config: SchedulerConfig | None = None, router_class: type[Router] = Router,
         ) -> tuple[Routed | BaseException, Router, ScriptedCaller]:
    caller = ScriptedCaller(script)
    view = swarm_view()

    async def main() -> tuple[Routed | BaseException, Router]:
        router = router_class(lambda: view, rng=random.Random(0), caller=caller,
                              clock=VirtualClock.current(), config=config)
        prime(router)
        try:
            return await router.send(REQUEST, DIGEST, 1, options), router
        except InferenceError as exc:
            return exc, router

    outcome, router = run_virtual(main())
    return outcome, router, caller


def answers(*steps: tuple[float, InferenceError | None]) -> Script:
    return lambda n: steps[n] if n < len(steps) else (0.05, None)


def test_a_retryable_code_moves_on_to_the_next_provider() -> None:
    routed, router, _ = send(answers((0.01, UnavailableError("reset"))), RoutingOptions())
    assert isinstance(routed, Routed)
    assert (routed.attempts, routed.hedged, router.hedges) == (2, False, 0)
    assert routed.response.id == "1"
    failed = [p for p in PEERS if router.observations.get(p).failures]
    assert len(failed) == 1
    assert failed[0] != routed.peer


def test_a_bad_request_is_not_retried() -> None:
    error, _, caller = send(answers((0.01, InvalidInputError("bad shape"))), RoutingOptions())
    assert isinstance(error, InvalidInputError)
    assert len(caller.timeouts) == 1


def test_each_call_gets_the_time_left_and_the_deadline_ends_the_request() -> None:
    error, _, caller = send(lambda n: (10.0, None), RoutingOptions(timeout=2.0, hedge=False))
    assert isinstance(error, DeadlineExceededError)
    assert caller.timeouts == [2.0]


def prime_overall_p95(router: Router) -> None:
    # Twenty answers of 0.1 s from a peer not in the view: the client's overall p95.
    other = Identity.from_seed(b"\x99" * 32).peer_id
    for _ in range(20):
        router.observations.start(other, 0.0)
        router.observations.finish(other, 0.1)
        router.observations.record_success(other, 0.1, 1, 0.1)


def test_a_slow_first_attempt_is_hedged_by_the_clients_overall_p95() -> None:
    routed, router, caller = send(answers((5.0, None)), RoutingOptions(),
                                  prime=prime_overall_p95)
    assert isinstance(routed, Routed)
    assert (routed.attempts, routed.hedged, router.hedges) == (2, True, 1)
    assert routed.response.id == "1"  # the hedge won...
    assert routed.latency == pytest.approx(0.1 + 0.05)
    assert caller.cancelled == 1  # ... and the slow attempt was cancelled


def test_no_hedge_when_routing_options_say_so() -> None:
    routed, router, _ = send(answers((5.0, None)), RoutingOptions(hedge=False),
                             prime=prime_overall_p95)
    assert isinstance(routed, Routed)
    assert (routed.attempts, routed.hedged, router.hedges) == (1, False, 0)
    assert routed.latency == pytest.approx(5.0)


async def test_the_default_caller_speaks_grpc_and_translates_its_errors() -> None:
    # Nothing listens on these ports: every attempt fails UNAVAILABLE, as an InferenceError.
    view = PeerView()
    for i, peer in enumerate(PEERS):
        advert = Advert(peer_id=peer, endpoints=(f"127.0.0.1:{i + 1}",),
                        models=(ModelOffer(DIGEST, "acme/clf"),), sequence=1, timestamp=WALL,
                        ttl=300.0)
        view, _ = admit(view, advert, now=0.0, wall=WALL)
    router = Router(lambda: view, clock=FakeClock(start=0.0))
    try:
        with pytest.raises(UnavailableError) as failed:
            await router.send(REQUEST, DIGEST, 1, RoutingOptions(timeout=10.0, hedge=False))
    finally:
        await router.close()
    assert failed.value.code == "UNAVAILABLE"
    assert sum(router.observations.get(p).failures for p in PEERS) == 3


class RecordingRouter(Router):
    """Records the `explore` flag of every choice `send` makes."""

    explore_flags: list[bool]

    def candidates(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.__dict__.setdefault("explore_flags", []).append(kwargs.get("explore", False))
        return super().candidates(*args, **kwargs)


def test_only_the_first_attempt_may_explore() -> None:
    # Every provider is unmeasured and explore is 1: the first attempt explores; the retry
    # after UNAVAILABLE and the hedge never do.
    routed, router, _ = send(answers((0.01, UnavailableError("reset")), (5.0, None)),
                             RoutingOptions(), prime=prime_overall_p95,
                             config=SchedulerConfig(explore=1.0), router_class=RecordingRouter)
    assert isinstance(routed, Routed)
    assert (routed.attempts, routed.hedged) == (3, True)
    assert router.explore_flags == [True, False, False]  # type: ignore[attr-defined]
    assert router.explorations == 1


class TimedCaller(ScriptedCaller):
    """Answers with the server timing and queue depth parameters a node sets."""

    async def __call__(self, candidate: Candidate, request: pb.ModelInferRequest,
                       timeout: float) -> pb.ModelInferResponse:
        response = await super().__call__(candidate, request, timeout)
        params = response.parameters
        params["swarm_queue_us"].int64_param = 1000
        params["swarm_compute_us"].int64_param = 20_000
        params["swarm_batch_items"].int64_param = 2
        params["swarm_queue_depth"].int64_param = 7
        return response


def test_answers_teach_queue_depth_and_per_model_service_time() -> None:
    view = swarm_view()

    async def main() -> Routed:
        router = Router(lambda: view, rng=random.Random(0), caller=TimedCaller(answers()),
                        clock=VirtualClock.current())
        routed = await router.send(REQUEST, DIGEST, 1, RoutingOptions())
        stats = router.observations.get(routed.peer)
        assert (stats.depth, stats.depth_at) == (7, pytest.approx(0.05))
        # 20 ms for a batch of 2 items, one of them ours: 10 ms per item, for this model.
        assert stats.service_for(DIGEST)[0] == pytest.approx(0.010)
        assert stats.service_for(Digest.of(b"other"))[0] is None
        return routed

    assert isinstance(run_virtual(main()), Routed)
