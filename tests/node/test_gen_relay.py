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
from swarm.node._generate._grpc import RELAY_ATTEMPTS


@dataclass(frozen=True)
class Candidate:
    endpoint: str


class FakeRouter:
    def __init__(self, n: int) -> None:
        self.list = [Candidate(f"p{i}") for i in range(n)]

    def resolve(self, name: str) -> str:
        return "d" * 64

    def candidates(self, digest: str) -> list[Candidate]:
        return self.list


def streams(behaviour: dict[str, Any], n: int = 3) -> tuple[GenerationStreams, list[str]]:
    """A relay whose providers act per `behaviour`: an error raised before any response,
    a count of responses then an error (tuple), or a count of responses."""
    tried: list[str] = []
    relay = GenerationStreams(lambda name: None, lambda: FakeRouter(n))  # type: ignore[arg-type,return-value]

    async def one(router: Any, candidate: Candidate, forwarded: pb.ModelInferRequest,
                  deadline: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        tried.append(candidate.endpoint)
        what = behaviour[candidate.endpoint]
        if isinstance(what, Exception):
            raise what
        count, error = what if isinstance(what, tuple) else (what, None)
        for i in range(count):
            yield pb.ModelInferResponse(id=f"{candidate.endpoint}:{i}")
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
