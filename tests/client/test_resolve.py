"""Router.resolve: a tag routes to a target its owner signed, never to what providers claim."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from swarm._errors import NoProviderError
from swarm._types import Digest, ModelRef
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.routing import Router

WALL = 1_795_000_000.0
PEERS = [Identity.from_seed(bytes([i + 1]) * 32).peer_id for i in range(12)]
V1, V2, EVIL = Digest.of(b"v1"), Digest.of(b"v2"), Digest.of(b"evil")


def view_of(*served: tuple[Digest, tuple[str, ...]], name: str = "acme/clf") -> PeerView:
    """One provider per entry, serving `name` at that digest and claiming those tags."""
    view = PeerView()
    for i, (digest, tags) in enumerate(served):
        advert = Advert(peer_id=PEERS[i], endpoints=(f"10.0.0.{i}:7070",),
                        models=(ModelOffer(digest, name, tags=tags),),
                        sequence=1, timestamp=WALL, ttl=30.0)
        view, verdict = admit(view, advert, now=0.0, wall=WALL)
        assert verdict.ok
    return view


def router(view: PeerView, signed: dict[str, Sequence[Digest]] | None) -> Router:
    def lookup(ref: ModelRef) -> Sequence[Digest] | None:
        assert signed is not None
        return signed.get(f"{ref.name}:{ref.tag or 'latest'}")

    return Router(lambda: view, signed_tags=None if signed is None else lookup)


def test_claims_in_adverts_cannot_hijack_a_signed_tag() -> None:
    view = view_of(*[(V1, ("stable",))] * 2, *[(EVIL, ("stable", "latest"))] * 5)
    assert router(view, {"acme/clf:stable": (V1,)}).resolve("acme/clf:stable") == V1
    # Without signed records (no registry at all) the advertised majority decides.
    assert router(view, None).resolve("acme/clf:stable") == EVIL
    # A bare name follows its signed `latest` when there is one...
    assert router(view, {"acme/clf:latest": (V1,)}).resolve("acme/clf") == V1
    # ... and otherwise (built-ins, local programs) the version most providers serve.
    assert router(view, {}).resolve("acme/clf") == EVIL
    assert router(view, {}).resolve(f"acme/clf@{V2}") == V2  # a digest names itself


def test_a_rollout_moves_clients_once_most_providers_have_switched() -> None:
    signed = {"acme/clf:stable": (V1, V2)}  # rolled out from v1 to v2
    assert router(view_of((V1, ()), (V1, ()), (V2, ())), signed).resolve("acme/clf:stable") == V1
    assert router(view_of((V1, ()), (V2, ())), signed).resolve("acme/clf:stable") == V2  # tie: newest
    assert router(view_of((V2, ()), (V2, ())), signed).resolve("acme/clf:stable") == V2
    back = {"acme/clf:stable": (V1, V2, V1)}  # and rolled back
    assert router(view_of((V2, ()), (V1, ())), back).resolve("acme/clf:stable") == V1
    # Another name's providers count for nothing.
    other = view_of((V2, ()), (V2, ()), name="acme/other")
    with pytest.raises(NoProviderError, match=r"no provider serves it \(yet\)"):
        router(other, signed).resolve("acme/clf:stable")


def test_an_unknown_tag_is_refused_whatever_providers_claim() -> None:
    view = view_of((EVIL, ("canary",)))
    with pytest.raises(NoProviderError, match="no signed record of tag acme/clf:canary"):
        router(view, {"acme/clf:stable": (V1,)}).resolve("acme/clf:canary")


def test_a_tag_move_is_seen_even_when_the_view_did_not_change() -> None:
    view = view_of((V1, ()), (V2, ()))
    signed: dict[str, Sequence[Digest]] = {"acme/clf:stable": (V1,)}
    r = router(view, signed)
    assert r.resolve("acme/clf:stable") == V1
    signed["acme/clf:stable"] = (V1, V2)  # the owner moved the tag; same peer view snapshot
    assert r.resolve("acme/clf:stable") == V2
