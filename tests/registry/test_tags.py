"""Tags: signed records and the pure TagState machine (sequence, ownership, history)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Set

import pytest

from swarm._errors import IntegrityError, ModelNotFoundError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef
from swarm.protocol import Identity
from swarm.registry import (
    Outcome,
    TagRecord,
    TagState,
    apply_tag,
    previous,
    resolve,
    sign_tag,
    verify_tag,
)
from swarm.registry._tags import HISTORY_LIMIT, TAG_DOMAIN

OWNER = Identity.from_seed(b"\x01" * 32)
INTRUDER = Identity.from_seed(b"\x02" * 32)
DELEGATE = Identity.from_seed(b"\x03" * 32)
V1, V2, V3 = (Digest.of(b"v%d" % i) for i in (1, 2, 3))
NO_ALLOWLIST: Mapping[str, Set[bytes]] = {}


def rec(sequence: int, target: Digest, who: Identity = OWNER, *, name: str = "acme/classifier",
        tag: str = "stable", timestamp: float = 1_790_000_000.0) -> TagRecord:
    return TagRecord(who.public_key, name, tag, target, sequence, timestamp + sequence)


def apply_all(records: Iterable[TagRecord], state: TagState | None = None,
              allowlist: Mapping[str, Set[bytes]] = NO_ALLOWLIST) -> tuple[TagState, list[Outcome]]:
    state = state or TagState()
    outcomes = []
    for record in records:
        state, outcome = apply_tag(state, record, allowlist=allowlist)
        outcomes.append(outcome)
    return state, outcomes


# -- wire form -----------------------------------------------------------------------------


def test_sign_verify_roundtrip() -> None:
    record = rec(7, V1)
    assert verify_tag(sign_tag(record, OWNER)) == record
    with pytest.raises(ValueError, match="publisher"):
        sign_tag(record, INTRUDER)


def test_tampering_rejected() -> None:
    signed = registry_pb2.SignedTag.FromString(sign_tag(rec(7, V1), OWNER))
    for i in range(len(signed.payload)):
        payload = bytearray(signed.payload)
        payload[i] ^= 0x01
        with pytest.raises(IntegrityError):
            verify_tag(registry_pb2.SignedTag(payload=bytes(payload),
                                              signature=signed.signature).SerializeToString())
    signature = bytearray(signed.signature)
    signature[10] ^= 0x01
    with pytest.raises(IntegrityError, match="signature"):
        verify_tag(registry_pb2.SignedTag(payload=signed.payload,
                                          signature=bytes(signature)).SerializeToString())
    msg = registry_pb2.TagRecord.FromString(signed.payload)
    msg.publisher = INTRUDER.public_key
    with pytest.raises(IntegrityError, match="signature"):
        verify_tag(registry_pb2.SignedTag(payload=msg.SerializeToString(),
                                          signature=signed.signature).SerializeToString())


@pytest.mark.parametrize(("field", "value"), [
    ("target", "acme/classifier:v1"), ("name", "NoNamespace"), ("tag", "bad tag")])
def test_validly_signed_but_malformed_rejected(field: str, value: str) -> None:
    msg = registry_pb2.TagRecord.FromString(
        registry_pb2.SignedTag.FromString(sign_tag(rec(1, V1), OWNER)).payload)
    setattr(msg, field, value)
    payload = msg.SerializeToString()
    data = registry_pb2.SignedTag(payload=payload,
                                  signature=OWNER.sign(TAG_DOMAIN + payload)).SerializeToString()
    with pytest.raises(IntegrityError, match="malformed"):
        verify_tag(data)


@pytest.mark.parametrize("data", [b"", b"\xff\x00", b"x" * 5000])
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        verify_tag(data)


# -- sequence ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations([1, 2, 3])))
def test_highest_sequence_wins_in_any_order(order: tuple[int, ...]) -> None:
    targets = {1: V1, 2: V2, 3: V3}
    state, outcomes = apply_all(rec(s, targets[s]) for s in order)
    assert resolve(state, ModelRef.parse("acme/classifier:stable")) == V3
    assert state.get("acme/classifier", "stable").sequence == 3  # type: ignore[union-attr]
    # Everything after the 3 arrives is refused as stale.
    assert all(o is Outcome.STALE for o in outcomes[order.index(3) + 1:])


def test_replay_refused() -> None:
    state, outcomes = apply_all([rec(1, V1), rec(2, V2), rec(2, V2), rec(1, V1)])
    assert outcomes == [Outcome.BOUND, Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.STALE]
    assert state.get("acme/classifier", "stable").target == V2  # type: ignore[union-attr]


@pytest.mark.parametrize("swap", [False, True])
def test_equal_sequences_converge(swap: bool) -> None:
    # Two different records with one sequence (equivocation): every node picks the same one.
    a, b = rec(5, V1), rec(5, V2)
    winner = max(a, b, key=lambda r: r.target.hex)
    first, second = (b, a) if swap else (a, b)
    state, outcomes = apply_all([first, second])
    assert outcomes[1] is (Outcome.ACCEPTED if second == winner else Outcome.STALE)
    entry = state.get("acme/classifier", "stable")
    assert entry is not None
    assert entry.record == winner
    assert [v.target for v in entry.history] == [winner.target]


def test_apply_is_pure() -> None:
    before, _ = apply_all([rec(1, V1)])
    after, outcome = apply_tag(before, rec(2, V2), allowlist=NO_ALLOWLIST)
    assert outcome is Outcome.ACCEPTED
    assert resolve(before, ModelRef.parse("acme/classifier:stable")) == V1
    assert resolve(after, ModelRef.parse("acme/classifier:stable")) == V2


def test_tags_are_independent() -> None:
    state, _ = apply_all([rec(5, V1, tag="stable"), rec(1, V2, tag="canary")])
    assert resolve(state, ModelRef.parse("acme/classifier:canary")) == V2
    assert set(state.tags_of("acme/classifier")) == {"stable", "canary"}
    assert len(state) == 2


# -- ownership -----------------------------------------------------------------------------


def test_trust_on_first_use_then_conflicting_key_refused() -> None:
    state, outcomes = apply_all([rec(1, V1, OWNER), rec(99, V2, INTRUDER),
                                 rec(1, V3, INTRUDER, name="acme/other", tag="x")])
    assert outcomes == [Outcome.BOUND, Outcome.UNAUTHORIZED, Outcome.UNAUTHORIZED]
    assert resolve(state, ModelRef.parse("acme/classifier:stable")) == V1
    assert state.bindings["acme"] == OWNER.public_key
    assert state.owner("acme", NO_ALLOWLIST) == {OWNER.public_key}
    # Another namespace is free for the other key.
    state, outcome = apply_tag(state, rec(1, V3, INTRUDER, name="evil/model"), allowlist=NO_ALLOWLIST)
    assert outcome is Outcome.BOUND
    assert not Outcome.UNAUTHORIZED.ok


def test_refused_record_does_not_bind() -> None:
    allowlist = {"acme": frozenset({OWNER.public_key})}
    state, outcomes = apply_all([rec(1, V1, INTRUDER)], allowlist=allowlist)
    assert outcomes == [Outcome.UNAUTHORIZED]
    assert state == TagState()


def test_allowlist_overrides_trust_on_first_use() -> None:
    # The intruder got here first and was bound on first use ...
    state, _ = apply_all([rec(1, V1, INTRUDER)])
    assert state.bindings["acme"] == INTRUDER.public_key
    # ... but config says the namespace belongs to the owner and a delegate.
    allowlist = {"acme": frozenset({OWNER.public_key, DELEGATE.public_key})}
    state, outcomes = apply_all(
        [rec(2, V2, OWNER), rec(3, V3, INTRUDER), rec(3, V3, DELEGATE)], state, allowlist)
    assert outcomes == [Outcome.ACCEPTED, Outcome.UNAUTHORIZED, Outcome.ACCEPTED]
    assert resolve(state, ModelRef.parse("acme/classifier:stable")) == V3
    assert state.owner("acme", allowlist) == allowlist["acme"]


# -- history and resolution ----------------------------------------------------------------


def test_history_and_previous_for_rollback() -> None:
    state, _ = apply_all([rec(1, V1), rec(2, V2), rec(3, V3)])
    assert previous(state, "acme/classifier", "stable") == V2
    # The rollback publishes the previous target under the next sequence ...
    state, outcome = apply_tag(state, rec(4, V2), allowlist=NO_ALLOWLIST)
    assert outcome is Outcome.ACCEPTED
    assert resolve(state, ModelRef.parse("acme/classifier:stable")) == V2
    entry = state.get("acme/classifier", "stable")
    assert entry is not None
    assert [(v.sequence, v.target) for v in entry.history] == [(1, V1), (2, V2), (3, V3), (4, V2)]
    # ... and rolling back again goes to the version just left.
    assert previous(state, "acme/classifier", "stable") == V3


def test_previous_skips_the_current_digest() -> None:
    state, _ = apply_all([rec(1, V1), rec(2, V2), rec(3, V2)])
    assert previous(state, "acme/classifier", "stable") == V1
    single, _ = apply_all([rec(1, V1)])
    assert previous(single, "acme/classifier", "stable") is None
    assert previous(single, "acme/classifier", "missing") is None


def test_history_is_bounded() -> None:
    targets = [Digest.of(b"%d" % i) for i in range(HISTORY_LIMIT + 10)]
    state, _ = apply_all(rec(i + 1, t) for i, t in enumerate(targets))
    entry = state.get("acme/classifier", "stable")
    assert entry is not None
    assert len(entry.history) == HISTORY_LIMIT
    assert entry.history[-1].target == targets[-1]
    assert entry.history[0].target == targets[-HISTORY_LIMIT]


def test_resolve() -> None:
    state, _ = apply_all([rec(1, V1, tag="stable"), rec(1, V2, tag="latest")])
    assert resolve(state, ModelRef.parse("acme/classifier:stable")) == V1
    assert resolve(state, ModelRef.parse("acme/classifier")) == V2  # bare name: latest
    assert resolve(state, ModelRef.parse(f"acme/classifier@{V3}")) == V3
    with pytest.raises(ModelNotFoundError):
        resolve(state, ModelRef.parse("acme/classifier:nope"))
    with pytest.raises(ModelNotFoundError):
        resolve(TagState(), ModelRef.parse("other/model:stable"))
