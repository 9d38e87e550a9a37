"""A gateway relaying a generation stream offers it to the next provider when one fails
before its first response, and never after (the caller resumes from its tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from swarm._errors import InvalidInputError, OverloadedError, UnavailableError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm.node._generate import GenerationStreams
from swarm.node._generate._grpc import FINAL, RELAY_ATTEMPTS, generation_request, relay_cost
from swarm.scheduler import Failure, TokenCost, prompt_tokens_of


@dataclass(frozen=True)
class Candidate:
    endpoint: str


class FakeWatch:
    def __init__(self, log: list[tuple[Any, ...]], endpoint: str) -> None:
        self.log = log
        self.endpoint = endpoint
        self.tokens = 0

    def received(self, tokens: int) -> None:
        self.tokens += tokens

    def close(self, *, finished: bool = False, failure: Failure | None = None) -> None:
        if not any(entry[-1] is self for entry in self.log):  # once, as StreamWatch
            self.log.append((self.endpoint, self.tokens, finished, failure, self))


class FakeRouter:
    def __init__(self, n: int) -> None:
        self.list = [Candidate(f"p{i}") for i in range(n)]
        self.costs: list[TokenCost | None] = []
        self.watched: list[tuple[Any, ...]] = []

    def resolve(self, name: str) -> str:
        return "d" * 64

    def candidates(self, digest: str, *, explore: bool = False,
                   generation: TokenCost | None = None) -> list[Candidate]:
        self.costs.append(generation)
        return self.list

    def watch_stream(self, candidate: Candidate, digest: str, cost: TokenCost) -> FakeWatch:
        return FakeWatch(self.watched, candidate.endpoint)


def streams(behaviour: dict[str, Any], n: int = 3,
            router: FakeRouter | None = None) -> tuple[GenerationStreams, list[str]]:
    """A relay whose providers act per `behaviour`: an error raised before any response,
    a count of responses then an error (tuple), or a count of responses (the last one
    final, each with one token id)."""
    tried: list[str] = []
    fake = router or FakeRouter(n)
    relay = GenerationStreams(lambda name: None, lambda: fake)  # type: ignore[arg-type,return-value]

    async def one(router: Any, candidate: Candidate, forwarded: pb.ModelInferRequest,
                  deadline: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        tried.append(candidate.endpoint)
        what = behaviour[candidate.endpoint]
        if isinstance(what, Exception):
            raise what
        count, error = what if isinstance(what, tuple) else (what, None)
        for i in range(count):
            response = pb.ModelInferResponse(id=f"{candidate.endpoint}:{i}")
            response.parameters["token_ids"].string_param = f"[{i + 5}]"
            if i == count - 1 and error is None:
                response.parameters[FINAL].bool_param = True
            yield response
        if error is not None:
            raise error

    relay._relay_one = one  # type: ignore[method-assign]
    return relay, tried


async def collect(relay: GenerationStreams) -> list[str]:
    request = pb.ModelInferRequest(model_name="builtin/smollm2")
    return [r.id async for r in relay.stream(request, None)]


async def test_next_candidate_after_a_failure_before_any_token() -> None:
    relay, tried = streams({"p0": UnavailableError("down"), "p1": OverloadedError("full"),
                            "p2": 2})
    assert await collect(relay) == ["p2:0", "p2:1"]
    assert tried == ["p0", "p1", "p2"]


async def test_no_second_candidate_once_tokens_flowed() -> None:
    relay, tried = streams({"p0": (1, UnavailableError("died")), "p1": 2})
    got: list[str] = []

    async def read() -> None:
        async for r in relay.stream(pb.ModelInferRequest(model_name="m"), None):
            got.append(r.id)

    with pytest.raises(UnavailableError):
        await read()
    assert (got, tried) == (["p0:0"], ["p0"])


async def test_bad_input_is_not_retried_and_attempts_are_bounded() -> None:
    relay, tried = streams({"p0": InvalidInputError("bad"), "p1": 1})
    with pytest.raises(InvalidInputError):
        await collect(relay)
    assert tried == ["p0"]
    relay, tried = streams({f"p{i}": UnavailableError("down") for i in range(9)}, n=9)
    with pytest.raises(UnavailableError):
        await collect(relay)
    assert len(tried) == RELAY_ATTEMPTS


async def test_the_relay_routes_by_tokens_and_reports_each_stream() -> None:
    """The gateway passes the request's token cost to the scheduler and tells the router
    how each provider's stream went (failure before a token; tokens of a finished one)."""
    router = FakeRouter(3)
    relay, _ = streams({"p0": UnavailableError("down"), "p1": 3}, router=router)
    request = generation_request("builtin/smollm2", prompt="x" * 400, max_tokens=50)
    assert [r.id async for r in relay.stream(request, None)] == ["p1:0", "p1:1", "p1:2"]
    assert router.costs == [TokenCost(100, 50)]
    assert [w[:4] for w in router.watched] == [("p0", 0, False, Failure.UNAVAILABLE),
                                               ("p1", 3, True, None)]


def _without_max_tokens(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    del request.parameters["max_tokens"]  # the provider's default applies
    return request


@pytest.mark.parametrize(("request_", "cost"), [
    (generation_request("m", prompt="abcdefgh", max_tokens=9), TokenCost(2, 9)),
    (_without_max_tokens(generation_request("m", prompt="abcd")), TokenCost(1, None)),
    (generation_request("m", messages=[{"role": "user", "content": "a" * 40}], max_tokens=3),
     TokenCost(prompt_tokens_of("a" * 40, 1), 3)),
    (generation_request("m", prompt="abcd", max_tokens=-5), TokenCost(1, None)),
    (generation_request("m", prompt="abcd", max_tokens=1 << 40), TokenCost(1, 1 << 20)),
    (pb.ModelInferRequest(model_name="m"), None),  # malformed: the provider says why
])
def test_relay_cost(request_: pb.ModelInferRequest, cost: TokenCost | None) -> None:
    assert relay_cost(request_) == cost


def test_relay_cost_counts_resumed_tokens_as_prompt() -> None:
    request = generation_request("m", prompt="abcd", max_tokens=10)
    request.parameters["resume_tokens"].string_param = "[1, 2, 3]"
    assert relay_cost(request) == TokenCost(4, 7)
