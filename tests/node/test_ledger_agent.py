"""LedgerAgent against hostile gossip: junk, floods, unfunded senders, far-ahead buffering;
and the timekeeper's ticks, whose work reports come from claims, not its own word."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from swarm._clock import FakeClock
from swarm._errors import ConflictError, InvalidInputError, PermissionDeniedError
from swarm._proto.swarm.v1 import ledger_pb2, ledger_pb2_grpc
from swarm.node._ledger import LedgerAgent, LedgerAgentConfig, LedgerServicer, Payments
from swarm.protocol import GossipMessage, Identity, Validation
from swarm.protocol.testing import MemoryNetwork
from swarm.staking import (
    PAYER_PARAM,
    RECEIPT_PARAM,
    Bond,
    Claim,
    Deposit,
    Evidence,
    Outcome,
    Transfer,
    receipt_params,
    sign_receipt,
    wire_of,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, make_genesis, wallets
from tests.waiting import wait_until

GENESIS = make_genesis({0: 1000, 1: 1000}, {0: 400})
A, B = USERS[0].peer_id, USERS[1].peer_id
STRANGER = Identity.from_seed(b"\x55" * 32)


def agent(tmp_path: Path, **config: object) -> LedgerAgent:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return LedgerAgent(GENESIS, tmp_path / "ledger.sqlite", clock=FakeClock(),
                       config=LedgerAgentConfig(**config),  # type: ignore[arg-type]
                       timekeeper=None)


def msg(data: bytes, peer: Identity = USERS[2]) -> GossipMessage:
    return GossipMessage("swarm/ledger/v1", data, received_from=peer.peer_id)


def test_junk_is_rejected_and_never_reaches_the_ledger(tmp_path: Path) -> None:
    ledger = agent(tmp_path)
    good = wallets(GENESIS)[0].make(Transfer(B, 5))
    forged = good.wire[:-1] + bytes([good.wire[-1] ^ 1])
    other_chain = Wallet(USERS[0], b"\1" * 32).make(Transfer(B, 5))
    for junk in (b"", b"\0" * 300, b"SWL1" + b"\xff" * 200, forged, other_chain.wire,
                 b"SWE1" + b"\0" * 10, b"SWL1" + b"\0" * (200 * 1024)):
        assert ledger.validate(msg(junk)) is Validation.REJECT
        assert ledger.receive(junk) is None
    assert len(ledger.ledger.log) == 0
    assert ledger.validate(msg(good.wire)) is Validation.ACCEPT
    assert ledger.receive(good.wire) is Outcome.APPLIED
    ledger.close()


def test_a_forwarder_flooding_is_rate_limited(tmp_path: Path) -> None:
    ledger = agent(tmp_path, rate_per_second=1.0, rate_burst=5.0)
    w = wallets(GENESIS)[0]
    verdicts = [ledger.validate(msg(w.make(Transfer(B, 1)).wire)) for _ in range(20)]
    assert verdicts.count(Validation.ACCEPT) == 5
    assert ledger.counters["rate_limited"] == 15
    # Another forwarder is not punished for it.
    assert ledger.validate(msg(w.make(Transfer(B, 1)).wire, USERS[3])) is Validation.ACCEPT
    ledger.close()


def test_fresh_keys_with_nothing_to_spend_are_not_stored(tmp_path: Path) -> None:
    ledger = agent(tmp_path)
    for i in range(50):
        fresh = Identity.from_seed(bytes([i + 1]) * 31 + b"\x99")
        stx = Wallet(fresh, GENESIS.chain).make(Transfer(A, 1))
        assert ledger.validate(msg(stx.wire)) is Validation.IGNORE
    assert ledger.counters["ignored_unfunded"] == 50
    assert len(ledger.ledger.log) == 0
    ledger.close()


def test_valid_but_far_ahead_transactions_do_not_grow_memory(tmp_path: Path) -> None:
    ledger = agent(tmp_path, max_buffered=100, max_ahead=16)
    w = wallets(GENESIS)[0]
    for seq in range(2, 400):  # every one waits for seq 1, which never comes
        ledger.receive(w.make(Transfer(B, 1), seq=seq).wire)
    assert ledger.ledger.buffered <= 16
    others = wallets(GENESIS)[1]
    for seq in range(2, 200):
        ledger.receive(others.make(Transfer(A, 1), seq=seq).wire)
    assert ledger.ledger.buffered <= 100
    assert ledger.counters["buffer_full"] > 0
    ledger.close()


async def test_submit_errors_are_clear_and_use_the_status_table(tmp_path: Path) -> None:
    ledger = agent(tmp_path)
    w = wallets(GENESIS)[0]
    with pytest.raises(InvalidInputError):
        await ledger.submit(b"SWL1 nonsense")
    assert await ledger.submit(w.make(Bond(100)).wire) is Outcome.APPLIED
    with pytest.raises(ConflictError):  # more than the balance: refused, number kept free
        await ledger.submit(w.make(Bond(10_000)).wire)
    ledger.close()


async def test_equivocation_evidence_is_taken_and_slashes(tmp_path: Path) -> None:
    ledger = agent(tmp_path)
    w = wallets(GENESIS)[0]
    one, two = w.make(Transfer(B, 1)), w.make(Transfer(B, 2), seq=1)
    assert await ledger.submit(wire_of(Evidence(one, two))) is Outcome.EQUIVOCATION
    assert ledger.state.account(A).equivocations == 1
    assert ledger.state.account(A).bonded == 200
    ledger.close()


async def test_ticks_report_the_value_claims_collected(tmp_path: Path) -> None:
    keeper = LedgerAgent(GENESIS, tmp_path / "ledger.sqlite", clock=FakeClock(),
                         timekeeper=TIMEKEEPER)
    payer, payee = wallets(GENESIS)[0], wallets(GENESIS)[1]
    await keeper.submit(payer.make(Deposit(B, 100)).wire)
    receipt = sign_receipt(GENESIS.chain, USERS[0], B, 30)
    await keeper.submit(payee.make(Claim(receipt), acks=[(A, 1)]).wire)
    assert await keeper.tick() is Outcome.APPLIED
    assert keeper.state.epoch == 1
    tick = list(keeper.ledger.log.entries())[-1].tx
    assert [(r.worker, r.served) for r in tick.body.reports] == [(B, 30)]  # type: ignore[union-attr]
    # The next epoch reports only what was claimed since.
    assert await keeper.tick() is Outcome.APPLIED
    tick = list(keeper.ledger.log.entries())[-1].tx
    assert tick.body.reports == ()  # type: ignore[union-attr]
    keeper.close()
    with pytest.raises(Exception, match="timekeeper"):
        LedgerAgent(GENESIS, tmp_path / "other.sqlite", timekeeper=USERS[0])


async def test_a_restart_rebuilds_the_same_state(tmp_path: Path) -> None:
    first = agent(tmp_path)
    w = wallets(GENESIS)[0]
    for _ in range(5):
        await first.submit(w.make(Transfer(B, 3)).wire)
    encoded = first.state.encode()
    first.close()
    again = agent(tmp_path)
    assert again.state.encode() == encoded
    again.close()


class _Hostile(ledger_pb2_grpc.LedgerServiceServicer):
    """A peer whose log is junk, or longer pages than asked for."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = entries

    async def GetLog(self, request: ledger_pb2.GetLogRequest,
                     context: object) -> ledger_pb2.LogReply:
        return ledger_pb2.LogReply(entries=self.entries[request.start:], length=10**6)


@asynccontextmanager
async def serving(servicer: ledger_pb2_grpc.LedgerServiceServicer) -> AsyncIterator[str]:
    server = grpc.aio.server()
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_sync_pages_an_honest_log_and_refuses_a_hostile_one(tmp_path: Path) -> None:
    honest = agent(tmp_path / "honest")
    w = wallets(GENESIS)[0]
    for _ in range(30):
        await honest.submit(w.make(Transfer(B, 1)).wire)
    joiner = agent(tmp_path / "joiner", page_entries=7)
    async with serving(LedgerServicer(honest)) as address:
        assert await joiner.sync_from(None, address) == 30
    assert joiner.state.encode() == honest.state.encode()
    junk = [b"SWL1" + bytes(200), b"\xff" * 64] * 3
    victim = agent(tmp_path / "victim", page_entries=4)
    async with serving(_Hostile(junk)) as address:
        with pytest.raises(InvalidInputError, match="more entries"):
            await victim.sync_from(None, address)
    async with serving(_Hostile(junk[:4])) as address:
        await victim.sync_from(None, address)
    assert victim.counters["rejected"] == 4
    assert len(victim.ledger.log) == 0
    for a in (honest, joiner, victim):
        a.close()


async def paying_setup(tmp_path: Path) -> tuple[LedgerAgent, Payments]:
    provider = agent(tmp_path)
    payments = Payments(provider, B, price_per_request=5, price_per_1k_items=0)
    await provider.submit(wallets(GENESIS)[0].make(Deposit(B, 20)).wire)
    return provider, payments


def paid(cumulative: int, payer: Identity = USERS[0]) -> dict[str, str]:
    return receipt_params(sign_receipt(GENESIS.chain, payer, B, cumulative))


async def test_payments_accept_receipts_in_any_order_within_the_deposit(
        tmp_path: Path) -> None:
    provider, payments = await paying_setup(tmp_path)
    payments.charge(paid(10), 1)  # two requests' worth arrives first
    payments.charge(paid(5), 1)  # the earlier receipt, late: covered by the best one
    with pytest.raises(PermissionDeniedError, match="does not cover"):
        payments.charge(paid(10), 1)  # a third request needs 15
    payments.charge(paid(15), 1)
    payments.charge(paid(20), 1)
    with pytest.raises(PermissionDeniedError, match="deposited"):
        payments.charge(paid(25), 1)  # beyond the deposit of 20
    assert [r.cumulative for r in payments.claimable()] == [20]
    provider.close()


async def test_payments_refuse_missing_forged_and_garbled_receipts(tmp_path: Path) -> None:
    provider, payments = await paying_setup(tmp_path)
    with pytest.raises(PermissionDeniedError, match="charges 5"):
        payments.charge({}, 1)
    forged = paid(5, USERS[2]) | {PAYER_PARAM: str(A)}  # another key signed it
    with pytest.raises(PermissionDeniedError, match="signature"):
        payments.charge(forged, 1)
    for garbled in ({PAYER_PARAM: str(A)}, {PAYER_PARAM: str(A), RECEIPT_PARAM: "x:y"},
                    {PAYER_PARAM: "nobody", RECEIPT_PARAM: "5:" + "00" * 64},
                    {PAYER_PARAM: str(A), RECEIPT_PARAM: "5:" + "zz" * 64}):
        with pytest.raises(PermissionDeniedError):
            payments.charge(garbled, 1)
    with pytest.raises(PermissionDeniedError, match="deposited"):
        payments.charge(paid(5, USERS[3]), 1)  # signed, but no deposit for us
    assert payments.claimable() == []
    provider.close()


async def test_an_equivocation_split_across_nodes_gets_one_verdict_everywhere(
        tmp_path: Path) -> None:
    network = MemoryNetwork(seed=3)
    agents = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        agents.append(LedgerAgent(GENESIS, tmp_path / str(i) / "ledger.sqlite",
                                  gossip=network.join(USERS[3 + i].peer_id),
                                  clock=FakeClock()))
    w = wallets(GENESIS)[0]
    one, two = w.make(Transfer(B, 1)), w.make(Transfer(B, 2), seq=1)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(a.run()) for a in agents]
        await asyncio.sleep(0)
        await agents[0].submit(one.wire)
        await agents[2].submit(two.wire)  # the other half, elsewhere, at once
        await wait_until(lambda: all(a.state.account(A).equivocations == 1 for a in agents),
                         what="every node to slash the equivocation")
        assert len({a.state.encode() for a in agents}) == 1
        assert agents[1].state.account(A).bonded == 200
        for task in tasks:
            task.cancel()
    for a in agents:
        a.close()
