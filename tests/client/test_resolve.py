"""Router.resolve: names route to what signed statements say, never to what providers claim."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from swarm._errors import NoProviderError
from swarm._types import Digest, ModelRef
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.routing import BUILTIN_DIGESTS, Router, SignedNames

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
    # A bare name follows its signed `latest` when there is one...
    assert router(view, {"acme/clf:latest": (V1,)}).resolve("acme/clf") == V1
    assert router(view, {}).resolve(f"acme/clf@{V2}") == V2  # a digest names itself


@pytest.mark.parametrize("signed", [{}, None], ids=["no-record", "no-registry"])
def test_advert_counts_name_nothing(signed: dict[str, Sequence[Digest]] | None) -> None:
    """Without a signed record, what five providers claim resolves nothing (issue 11 item 1)."""
    view = view_of(*[(V1, ("stable",))] * 2, *[(EVIL, ("stable", "latest"))] * 5)
    with pytest.raises(NoProviderError, match="no signed record of tag acme/clf:stable"):
        router(view, signed).resolve("acme/clf:stable")
    with pytest.raises(NoProviderError, match=r"no signed `latest` tag") as info:
        router(view, signed).resolve("acme/clf")
    # The refusal says how to name a version, and shows the claims as claims.
    assert "acme/clf@sha256:..." in str(info.value)
    assert "unsigned claims" in str(info.value)


def test_builtins_resolve_to_the_digests_the_release_pins() -> None:
    pinned = BUILTIN_DIGESTS["builtin/minilm"]
    hijack = view_of(*[(EVIL, ())] * 5, (pinned, ()), name="builtin/minilm")
    for r in (router(hijack, {}), router(hijack, None),
              router(hijack, {"builtin/minilm:latest": (EVIL,)})):  # nobody tags builtin/
        assert r.resolve("builtin/minilm") == pinned
    only_claims = view_of(*[(EVIL, ())] * 5, name="builtin/minilm")
    with pytest.raises(NoProviderError, match=r"pinned by this release\); no provider serves it"):
        router(only_claims, {}).resolve("builtin/minilm")
    with pytest.raises(NoProviderError, match="takes no tags"):
        router(hijack, {"builtin/minilm:v2": (EVIL,)}).resolve("builtin/minilm:v2")
    with pytest.raises(NoProviderError, match="no such built-in model"):
        router(view_of((EVIL, ()), name="builtin/gpt"), {}).resolve("builtin/gpt")


def test_a_resolver_is_a_strategy_the_router_takes() -> None:
    """Stake plugs in as a weight per provider: here one provider outweighs three."""
    view = view_of((V1, ()), (V1, ()), (V1, ()), (V2, ()))
    heavy = PEERS[3]
    signed = {"acme/clf:stable": (V1, V2)}
    by_count = router(view, signed)
    assert by_count.resolve("acme/clf:stable") == V1
    by_stake = Router(lambda: view, resolver=SignedNames(
        lambda ref: signed.get(f"{ref.name}:{ref.tag}"),
        weight=lambda entry: 10.0 if entry.peer_id == heavy else 1.0))
    assert by_stake.resolve("acme/clf:stable") == V2
    # Whatever the weights, claims never add a version the owner did not sign.
    assert Router(lambda: view, resolver=SignedNames(
        lambda ref: None, weight=lambda entry: 1e9)).resolve(f"acme/clf@{V2}") == V2
    with pytest.raises(ValueError, match="not both"):
        Router(lambda: view, signed_tags=lambda ref: None, resolver=SignedNames())


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
