"""Client-side verification over a Router with signing fake providers, in virtual time:
the pure decisions, the majority answer, evidence that names the cheater and never an
honest provider, and copies that look like ordinary requests."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import Tolerance
from swarm._types import Digest, PeerId
from swarm.client import Verifier, judge, send_verified, should_verify
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit, sign_response
from swarm.routing import Router, RoutingOptions
from swarm.scheduler import Candidate
from swarm.simnet import VirtualClock, run_virtual
from swarm.staking import (
    FaultEvidence,
    InvalidEvidenceError,
    Ledger,
    Outcome,
    SlashingTable,
    eligible,
)
from tests.staking import USERS, make_genesis

WALL = 1_795_000_000.0
DIGEST = Digest.of(b"model")
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]
PEERS = [i.peer_id for i in IDS]
CHAIN = bytes(32)
TOL = Tolerance(1e-4, 1e-5)


def tensors(values: list[float]) -> tuple[tuple[str, str, tuple[int, ...], bytes], ...]:
    return (("y", "FP32", (1, len(values)), np.asarray(values, "<f4").tobytes()),)


def test_should_verify_is_a_seeded_draw() -> None:
    a = [should_verify(random.Random(7), 0.3) for _ in range(1)]
    draws = [should_verify(rng, 0.3) for rng in [random.Random(7)] * 200]
    assert a[0] == draws[0]
    assert 30 < sum(draws) < 90
    assert not any(should_verify(random.Random(1), 0.0) for _ in range(50))
    assert all(should_verify(random.Random(1), 1.0) for _ in range(50))


def test_judge_finds_the_odd_one_out() -> None:
    good, bad, near = tensors([1.0, 2.0]), tensors([1.0, 9.0]), tensors([1.00001, 2.0])
    assert judge([good, near], TOL).majority == 0
    assert judge([good, bad], TOL).referee_needed
    assert judge([bad, good, near], TOL) == judge([bad, good, near], TOL)
    verdict = judge([bad, good, near], TOL)
    assert (verdict.majority, verdict.outvoted) == (1, 0)
    verdict = judge([good, bad, near], TOL)
    assert (verdict.majority, verdict.outvoted) == (0, 1)
    three_ways = judge([good, bad, tensors([5.0, 5.0])], TOL)
    assert (three_ways.majority, three_ways.outvoted) == (None, None)


def view() -> PeerView:
    v = PeerView()
    for i, peer in enumerate(PEERS[:3]):
        advert = Advert(peer_id=peer, endpoints=(f"10.0.0.{i}:7070",),
                        models=(ModelOffer(DIGEST, "acme/clf"),), sequence=1, timestamp=WALL,
                        ttl=300.0)
        v, verdict = admit(v, advert, now=0.0, wall=WALL)
        assert verdict.ok
    return v


class SigningCaller:
    """Providers that double their input; `cheater` adds 1 to its first output."""

    def __init__(self, cheater: PeerId | None) -> None:
        self.cheater = cheater
        self.requests: list[tuple[PeerId, pb.ModelInferRequest]] = []

    async def __call__(self, candidate: Candidate, request: pb.ModelInferRequest,
                       timeout: float) -> pb.ModelInferResponse:
        await asyncio.sleep(0.01)
        self.requests.append((candidate.peer, request))
        x = np.frombuffer(request.raw_input_contents[0], "<f4")
        y = (x * 2).astype("<f4")
        if candidate.peer == self.cheater:
            y = y + np.float32(1.0)
        response = pb.ModelInferResponse(model_name=request.model_name,
                                         model_version=str(DIGEST), id=request.id)
        out = response.outputs.add(name="y", datatype="FP32", shape=[1, len(y)])
        assert out is not None
        response.raw_output_contents.append(y.tobytes())
        sign_response(IDS[PEERS.index(candidate.peer)], request, response)
        return response


def request(rid: str) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="acme/clf", model_version=str(DIGEST), id=rid)
    r.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    r.raw_input_contents.append(np.asarray([1, 2, 3], "<f4").tobytes())
    return r


def run(cheater: PeerId | None, n: int, fraction: float = 1.0, chain: bytes = CHAIN
        ) -> tuple[list[np.ndarray], list[bytes], SigningCaller, Verifier]:
    caller = SigningCaller(cheater)
    reports: list[bytes] = []

    async def report(wire: bytes) -> None:
        reports.append(wire)

    verifier = Verifier(fraction=fraction, rng=random.Random(3), report=report, chain=chain)
    v = view()

    async def main() -> list[np.ndarray]:
        router = Router(lambda: v, rng=random.Random(0), caller=caller,
                        clock=VirtualClock.current())
        out = []
        for i in range(n):
            routed = await send_verified(router, request(f"{i:032x}"), DIGEST, 1,
                                         RoutingOptions(hedge=False), verifier)
            out.append(np.frombuffer(routed.response.raw_output_contents[0], "<f4"))
        return out

    return run_virtual(main()), reports, caller, verifier


def test_the_cheater_is_outvoted_and_reported_and_the_client_gets_the_majority() -> None:
    outputs, reports, _, verifier = run(PEERS[1], 12)
    assert all(np.array_equal(o, [2, 4, 6]) for o in outputs)  # never the cheater's answer
    assert reports
    assert verifier.reported == len(reports)
    for wire in reports:
        evidence = FaultEvidence.decode(wire, CHAIN)
        assert evidence.offender_peer == PEERS[1]
        assert {w.signer for w in evidence.witnesses} == {PEERS[0], PEERS[2]}
        evidence.check(SlashingTable())


def test_honest_providers_are_never_reported() -> None:
    _, reports, caller, verifier = run(None, 10)
    assert reports == []
    assert verifier.verified == 10
    assert verifier.mismatches == 0
    assert len(caller.requests) == 20  # each request and one copy


def test_a_copy_looks_like_an_ordinary_request() -> None:
    _, _, caller, _ = run(None, 4)
    firsts = [r for _, r in caller.requests[0::2]]
    copies = [r for _, r in caller.requests[1::2]]
    ids = {r.id for _, r in caller.requests}
    assert len(ids) == len(caller.requests)  # a fresh id each, like every request
    for first, copy in zip(firsts, copies, strict=True):
        first_id, copy_id = first.id, copy.id
        assert len(first_id) == len(copy_id) == 32
        first.id = copy.id = ""
        assert first.SerializeToString() == copy.SerializeToString()
        first.id, copy.id = first_id, copy_id
    # The copy never goes back to the provider that answered first.
    for (p1, _), (p2, _) in zip(caller.requests[0::2], caller.requests[1::2], strict=True):
        assert p1 != p2


def test_fraction_zero_sends_once() -> None:
    _, reports, caller, verifier = run(PEERS[1], 6, fraction=0.0)
    assert reports == []
    assert len(caller.requests) == 6
    assert verifier.verified == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fraction_out_of_range_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="verify_fraction"):
        Verifier(fraction=fraction)


def test_reported_evidence_slashes_the_cheater_on_a_ledger() -> None:
    genesis = make_genesis({}, {0: 500, 1: 500, 2: 500})
    assert [USERS[i].peer_id for i in range(3)] == PEERS[:3]
    _, reports, _, _ = run(PEERS[1], 6, chain=genesis.chain)
    ledger = Ledger(genesis)
    outcomes = [ledger.receive(wire) for wire in reports]
    assert Outcome.FAULT in outcomes
    # Each report is another request: another offence, slashed once each.
    assert ledger.state.account(PEERS[1]).faults == outcomes.count(Outcome.FAULT) == \
        len(reports)
    assert not eligible(ledger.state, PEERS[1], 1)
    assert eligible(ledger.state, PEERS[0], 1)
    assert eligible(ledger.state, PEERS[2], 1)
    # Made for another network: refused.
    with pytest.raises(InvalidEvidenceError, match="another chain"):
        Ledger(make_genesis({}, {0: 1})).receive(reports[0])
