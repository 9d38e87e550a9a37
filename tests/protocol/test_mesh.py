"""The mesh's pure part: addresses, desired peers (collisions, NAT, relays), `wg set` plans."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from swarm.protocol import Advert, Identity, PeerView
from swarm.protocol._advert import MeshMember, decode, encode
from swarm.protocol._mesh import (
    DEFAULT_PREFIX,
    KEEPALIVE_SECONDS,
    CurrentPeer,
    MeshSettings,
    PeerConfig,
    RemovePeer,
    SetPeer,
    derive_address,
    desired_peers,
    interface_name,
    parse_dump,
    plan,
    prefer_overlay,
    split_endpoint,
)
from swarm.protocol._view import PeerEntry

PREFIX = ipaddress.IPv6Network(DEFAULT_PREFIX)
SETTINGS = MeshSettings()


def key(n: int) -> bytes:
    return bytes([n]) * 32


def member(n: int, endpoint: str | None = None, *, relay: bool = False) -> MeshMember:
    return MeshMember(public_key=key(n), endpoint=f"10.0.0.{n}:51820" if endpoint is None
                      else endpoint, address=str(derive_address(key(n), PREFIX)),
                      grpc_port=7070, relay=relay)


def peer(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def test_addresses_are_stable_distinct_and_inside_the_prefix() -> None:
    addresses = {derive_address(key(n), PREFIX) for n in range(200)}
    assert len(addresses) == 200
    assert all(a in PREFIX for a in addresses)
    assert derive_address(key(1), PREFIX) == derive_address(key(1), PREFIX)
    other = ipaddress.IPv6Network("fd00:1::/64")
    assert derive_address(key(1), other) in other
    assert len({interface_name(key(n)) for n in range(200)}) == 200
    assert all(len(interface_name(key(n))) <= 15 for n in range(3))


def test_every_valid_member_becomes_a_peer_with_only_its_own_address() -> None:
    me = member(1)
    wanted = desired_peers(me, [(peer(2).peer_id, member(2)), (peer(3).peer_id, member(3))],
                           SETTINGS)
    assert set(wanted.peers) == {key(2), key(3)}
    assert wanted.peers[key(2)] == PeerConfig(key(2), "10.0.0.2:51820",
                                              (f"{member(2).address}/128",), 0)
    assert wanted.overlay[peer(3).peer_id] == f"[{member(3).address}]:7070"
    assert not wanted.refused


@pytest.mark.parametrize(("bad", "why"), [
    (MeshMember(key(2), "10.0.0.2:1", str(derive_address(key(9), PREFIX)), 7070), "derives"),
    (MeshMember(key(2), "10.0.0.2:1", "fd00::1", 7070), "derives"),
    (MeshMember(key(2), "10.0.0.2:1", "not-an-address", 7070), "not IPv6"),
    (MeshMember(b"short", "10.0.0.2:1", "fd00::1", 7070), "32 bytes"),
    (MeshMember(key(2), "evil.example:51820", str(derive_address(key(2), PREFIX)), 7070),
     "literal"),
    (MeshMember(key(2), "10.0.0.2:0", str(derive_address(key(2), PREFIX)), 7070), "literal"),
    (MeshMember(key(2), "10.0.0.2:1", str(derive_address(key(2), PREFIX)), 0), "grpc port"),
    (member(1, "10.9.9.9:1"), "our key"),
])
def test_hostile_members_are_refused(bad: MeshMember, why: str) -> None:
    wanted = desired_peers(member(1), [(peer(2).peer_id, bad)], SETTINGS)
    assert not wanted.peers
    assert not wanted.overlay
    assert why in wanted.refused[peer(2).peer_id]


def test_a_copied_key_is_refused_for_every_claimant() -> None:
    copy = member(3, "10.6.6.6:51820")  # peer 4 claims peer 3's key, with its own endpoint
    wanted = desired_peers(member(1), [(peer(3).peer_id, member(3)), (peer(4).peer_id, copy),
                                       (peer(2).peer_id, member(2))], SETTINGS)
    assert set(wanted.peers) == {key(2)}
    assert "collision" in wanted.refused[peer(3).peer_id]
    assert "collision" in wanted.refused[peer(4).peer_id]


def test_mesh_size_is_bounded() -> None:
    members = [(peer(n).peer_id, member(n)) for n in range(2, 12)]
    wanted = desired_peers(member(1), members, MeshSettings(max_peers=4))
    assert len(wanted.peers) == 4
    assert sum("full" in why for why in wanted.refused.values()) == 6


def test_fake_identities_cannot_crowd_staked_members_out_of_a_full_mesh() -> None:
    # Ten fresh identities listed first; the two staked members last.
    members = [(peer(n).peer_id, member(n)) for n in range(2, 14)]
    staked = {peer(12).peer_id: 1000.0, peer(13).peer_id: 500.0}
    untrusted = desired_peers(member(1), members, MeshSettings(max_peers=4))
    assert key(12) not in untrusted.peers
    assert key(13) not in untrusted.peers
    wanted = desired_peers(member(1), members, MeshSettings(max_peers=4),
                           trust=lambda p: staked.get(p, 0.0))
    assert {key(12), key(13)} <= set(wanted.peers)
    assert len(wanted.peers) == 4


def test_nat_public_side_waits_for_the_natted_peer_to_dial() -> None:
    wanted = desired_peers(member(1), [(peer(2).peer_id, member(2, ""))], SETTINGS)
    assert wanted.peers[key(2)].endpoint is None
    assert wanted.peers[key(2)].keepalive == 0


def test_nat_side_dials_public_members_with_keepalive_and_relays_to_natted_ones() -> None:
    me = member(1, "")
    members = [(peer(2).peer_id, member(2)), (peer(3).peer_id, member(3, relay=True)),
               (peer(4).peer_id, member(4, "")), (peer(5).peer_id, member(5, ""))]
    wanted = desired_peers(me, members, SETTINGS)
    assert set(wanted.peers) == {key(2), key(3)}  # the natted ones only through the relay
    assert all(p.keepalive == KEEPALIVE_SECONDS for p in wanted.peers.values())
    relay = wanted.peers[key(3)]
    assert set(relay.allowed_ips) == {f"{member(n).address}/128" for n in (3, 4, 5)}
    assert peer(4).peer_id in wanted.overlay
    no_relay = desired_peers(me, members[:1] + members[2:], SETTINGS)
    assert "no relay" in no_relay.refused[peer(4).peer_id]


def current(n: int, endpoint: str | None = None, handshake: int = 0,
            allowed: tuple[str, ...] | None = None, keepalive: int = 0) -> CurrentPeer:
    return CurrentPeer(key(n), endpoint, allowed or (f"{member(n).address}/128",),
                       handshake, 0, 0, keepalive)


def test_plan_is_incremental() -> None:
    want = desired_peers(member(1), [(peer(n).peer_id, member(n)) for n in (2, 3)],
                         SETTINGS).peers
    assert plan(want, {}, 1000.0) == [
        SetPeer(key(2), "10.0.0.2:51820", (f"{member(2).address}/128",), 0),
        SetPeer(key(3), "10.0.0.3:51820", (f"{member(3).address}/128",), 0)]
    have = {key(2): current(2, "10.0.0.2:51820"), key(9): current(9, "10.0.0.9:1")}
    assert plan(want, have, 1000.0) == [
        RemovePeer(key(9)), SetPeer(key(3), "10.0.0.3:51820", (f"{member(3).address}/128",), 0)]
    assert plan(want, {k: current(k[0], f"10.0.0.{k[0]}:51820") for k in want}, 1000.0) == []


def test_plan_keeps_an_endpoint_wireguard_learned_from_a_recent_handshake() -> None:
    want = {key(2): PeerConfig(key(2), "10.0.0.2:51820", (f"{member(2).address}/128",))}
    roamed = {key(2): current(2, "192.0.2.7:40000", handshake=990)}
    assert plan(want, roamed, 1000.0) == []
    stale = {key(2): current(2, "192.0.2.7:40000", handshake=10)}
    assert plan(want, stale, 1000.0)[0].endpoint == "10.0.0.2:51820"


def test_plan_arguments() -> None:
    b64 = base64.b64encode(key(2)).decode()
    assert SetPeer(key(2), None, ("fd00::1/128", "fd00::2/128"), 25).args() == [
        "peer", b64, "persistent-keepalive", "25", "allowed-ips", "fd00::1/128,fd00::2/128"]
    assert RemovePeer(key(2)).args() == ["peer", b64, "remove"]


def test_parse_dump() -> None:
    b64 = base64.b64encode(key(2)).decode()
    text = (f"cHJpdg==\tcHVi\t51820\toff\n"
            f"{b64}\t(none)\t10.0.0.2:51820\tfd5a::1/128\t1700000000\t1234\t5678\t25\n"
            f"{base64.b64encode(key(3)).decode()}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    port, peers = parse_dump(text)
    assert port == 51820
    assert peers[key(2)] == CurrentPeer(key(2), "10.0.0.2:51820", ("fd5a::1/128",),
                                        1700000000, 1234, 5678, 25)
    assert peers[key(3)].endpoint is None
    assert peers[key(3)].allowed_ips == ()
    with pytest.raises(ValueError, match="unexpected"):
        parse_dump("a\tb\n")


def test_split_endpoint() -> None:
    assert split_endpoint("[fd00::1]:7070") == (ipaddress.ip_address("fd00::1"), 7070)
    assert split_endpoint("10.0.0.1:1") == (ipaddress.ip_address("10.0.0.1"), 1)
    for bad in ("host:1", "10.0.0.1", "10.0.0.1:70000", "[fd00::1]7070", ":1"):
        with pytest.raises(ValueError, match=r"."):
            split_endpoint(bad)


def test_mesh_member_travels_signed_in_the_advert_and_overlay_goes_first() -> None:
    ident = peer(7)
    advert = Advert(peer_id=ident.peer_id, endpoints=("10.0.0.7:7070",), models=(),
                    sequence=1, timestamp=1.0, ttl=15.0, mesh=member(7))
    back = decode(encode(advert, ident))
    assert back.mesh == member(7)
    assert decode(encode(Advert(peer_id=ident.peer_id, endpoints=(), models=(), sequence=1,
                                timestamp=1.0, ttl=15.0), ident)).mesh is None
    view = PeerView()
    view = type(view)(entries=view.entries.set(ident.peer_id, PeerEntry(back, 0.0)))
    routed = prefer_overlay(view, {ident.peer_id: f"[{member(7).address}]:7070"})
    assert routed.entries[ident.peer_id].advert.endpoints == (
        f"[{member(7).address}]:7070", "10.0.0.7:7070")
    assert prefer_overlay(view, {}) is view
