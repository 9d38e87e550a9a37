"""Client-side verification: a fraction of requests is also answered by a second provider, a
mismatch by a third, and the outvoted provider's own signed response becomes evidence.

Two pure decisions, which the SDK and the simulator (`swarm simnet model`, cheater scenario)
both call: `should_verify` (this request? a seeded draw) and `judge` (who is wrong, given
two or three answers and the model's tolerance). `send_verified` runs them over a Router.

To the providers a verification is ordinary traffic: each copy is the caller's request with
a fresh random request id, as every request of a verifying client carries (the signature
binds the answer to it), the same parameters and the same routing, only excluding the
providers already asked. The client returns the majority answer.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from swarm._errors import IntegrityError, SwarmError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import Tolerance, default_tolerance, tensors_agree
from swarm._types import Digest, PeerId
from swarm.protocol import verify_response
from swarm.routing import Routed, Router, RoutingOptions
from swarm.staking import FaultEvidence, SignedOutputs, SlashingTable, signed_outputs

__all__ = ["DEFAULT_VERIFY_FRACTION", "Verdict", "Verifier", "judge", "send_verified",
           "should_verify"]

DEFAULT_VERIFY_FRACTION = 0.02
_PPB = 1e9
_log = logging.getLogger("swarm.client.verify")

Tensors = Sequence[tuple[str, str, Sequence[int], bytes]]


def should_verify(rng: random.Random, fraction: float) -> bool:
    """Whether to verify the next request: one draw of `rng` per request, always (so the
    sequence of decisions depends only on the seed and the count)."""
    draw = rng.random()
    return fraction > 0 and draw < fraction


@dataclass(frozen=True, slots=True)
class Verdict:
    """`majority`: index of the answer to return (None: no two agree); `outvoted`: index of
    the answer two others contradicted (None: nobody); `referee_needed`: the first two
    disagree and no third answer was given yet."""

    majority: int | None
    outvoted: int | None = None
    referee_needed: bool = False


def judge(answers: Sequence[Tensors], tolerance: Tolerance) -> Verdict:
    """Who is wrong among two or three answers to one request (pure).

    Two that agree: the first is the answer. Two that disagree: a referee is needed. Three:
    the one that agrees with neither of two agreeing others is outvoted; no two agreeing:
    no majority."""
    if len(answers) not in (2, 3):
        raise ValueError("judge takes two or three answers")
    if tensors_agree(answers[0], answers[1], tolerance):
        return Verdict(0)
    if len(answers) == 2:
        return Verdict(None, referee_needed=True)
    for odd in range(3):
        a, b = (i for i in range(3) if i != odd)
        if tensors_agree(answers[a], answers[b], tolerance) and \
                not tensors_agree(answers[odd], answers[a], tolerance) and \
                not tensors_agree(answers[odd], answers[b], tolerance):
            return Verdict(a, odd)
    return Verdict(None)


@dataclass
class Verifier:
    """What a verifying client needs. `report(wire)` receives FaultEvidence wire bytes (the
    node's ledger Submit). `chain` is the genesis chain id the evidence is for; `head(peer)`
    the offender's last ledger sequence number (where its slash is taken; 0 without a
    ledger). `tolerance(digest)` the model's manifest tolerance (None: the defaults per
    output datatype); it is widened to the genesis floor so evidence is never refused for
    it. `eligible(peer)` filters who may verify or referee."""

    fraction: float = DEFAULT_VERIFY_FRACTION
    rng: random.Random = field(default_factory=random.Random)
    report: Callable[[bytes], Awaitable[object]] | None = None
    chain: bytes = bytes(32)
    head: Callable[[PeerId], int] = lambda peer: 0
    tolerance: Callable[[Digest], Tolerance | None] = lambda digest: None
    eligible: Callable[[PeerId], bool] = lambda peer: True
    slashing: SlashingTable = field(default_factory=SlashingTable)
    # When set, asked at report time instead of `chain`/`head`: (chain id, the offender's
    # last sequence number) as a ledger node says (the SDK: the nodes it joined through).
    ledger: Callable[[PeerId], Awaitable[tuple[bytes, int]]] | None = None
    # Counters, for tests and metrics.
    verified: int = 0
    mismatches: int = 0
    reported: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("verify_fraction must be in [0, 1]")

    def tolerance_for(self, digest: Digest, outputs: Tensors) -> Tolerance:
        floor = Tolerance(self.slashing.min_rtol_ppb / _PPB, self.slashing.min_atol_ppb / _PPB)
        tol = self.tolerance(digest) or default_tolerance([t[1] for t in outputs])
        return tol.widest(floor)


def _copy(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    again = pb.ModelInferRequest()
    again.CopyFrom(request)
    again.id = uuid.uuid4().hex
    return again


async def send_verified(router: Router, request: pb.ModelInferRequest, digest: Digest,
                        items: int, options: RoutingOptions,
                        verifier: Verifier) -> Routed:
    """Send `request` (its id set by the caller) and, when `should_verify` says so, a copy to
    another eligible provider, and on a mismatch a third; report the outvoted provider and
    return the majority's answer (its signature verified; IntegrityError for an unsigned
    or badly signed answer)."""
    chosen = should_verify(verifier.rng, verifier.fraction)
    first = await router.send(request, digest, items, options)
    if not chosen:
        return first
    first = _verified(request, first)
    verifier.verified += 1
    answers: list[tuple[pb.ModelInferRequest, Routed, SignedOutputs]] = [
        (request, first, signed_outputs(request, first.response))]
    asked = {first.peer}
    tolerance: Tolerance | None = None
    while len(answers) < 3:
        exclude = frozenset(asked | {e.advert.peer_id for e in router.view.providers(digest)
                                     if not verifier.eligible(e.advert.peer_id)})
        copy = _copy(request)
        try:
            routed = _verified(copy, await router.send(copy, digest, items, options,
                                                       exclude=exclude))
        except SwarmError as exc:  # nobody else to ask, or it failed: keep what we have
            _log.info("verification of %s stopped: %s", digest.short, exc)
            return answers[0][1]
        asked.add(routed.peer)
        answers.append((copy, routed, signed_outputs(copy, routed.response)))
        if tolerance is None:
            tolerance = verifier.tolerance_for(digest, answers[0][2].outputs)
        verdict = judge([a[2].outputs for a in answers], tolerance)
        if not verdict.referee_needed:
            break
        verifier.mismatches += 1
    assert tolerance is not None
    if verdict.outvoted is not None:
        await _report(verifier, tolerance, answers[verdict.outvoted][2],
                      [a[2] for i, a in enumerate(answers) if i != verdict.outvoted])
    return answers[verdict.majority if verdict.majority is not None else 0][1]


def _verified(request: pb.ModelInferRequest, routed: Routed) -> Routed:
    signature = verify_response(request, routed.response, signer=routed.peer)
    return Routed(routed.response, routed.peer, routed.endpoint, routed.price, routed.attempts,
                  routed.latency, routed.hedged, signature)


async def _report(verifier: Verifier, tolerance: Tolerance, offender: SignedOutputs,
                  witnesses: list[SignedOutputs]) -> None:
    try:
        chain, head = verifier.chain, verifier.head(offender.signer)
        if verifier.ledger is not None:
            chain, head = await verifier.ledger(offender.signer)
        evidence = FaultEvidence.make(chain, head, tolerance, offender, witnesses)
        evidence.check(verifier.slashing)
    except (SwarmError, IntegrityError) as exc:
        _log.warning("no evidence against %s: %s", offender.signer.short, exc)
        return
    _log.warning("provider %s outvoted on request %s: reporting", offender.signer.short,
                 offender.signature.request_id)
    verifier.reported += 1
    if verifier.report is not None:
        # A report that fails must not fail the caller's request: it got its answer.
        with contextlib.suppress(Exception):
            await verifier.report(evidence.wire)
