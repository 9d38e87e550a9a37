"""Genesis files and the SQLite store: WAL, append-only log, snapshot, identical rebuilds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from swarm._errors import ClosedError, ConfigError
from swarm.staking import (
    Bond,
    Deposit,
    Genesis,
    GenesisError,
    LedgerCorruptError,
    LedgerStore,
    Outcome,
    Params,
    SignedTransaction,
    State,
    Transfer,
    Unbond,
    WorkReport,
    replay,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, make_genesis, tick, wallets

GENESIS = make_genesis({0: 1000, 1: 1000, 2: 10}, {0: 300}, inflation_ppm=5_000)
A, B, C = (USERS[i].peer_id for i in range(3))


def history() -> list[SignedTransaction]:
    """A history with every kind of entry: applied, failed, a late equivocation."""
    w = wallets(GENESIS)
    tk = Wallet(TIMEKEEPER, GENESIS.chain)
    txs = [w[0].make(Transfer(C, 100)), w[1].make(Deposit(C, 50)),
           tick(tk, [WorkReport(C, 10, 1)]), w[2].make(Bond(110), acks=[(A, 1)], epoch=1),
           w[1].make(Transfer(A, 10**6)),  # fails
           w[0].make(Unbond(50), epoch=1), tick(tk)]
    txs.append(w[2].make(Transfer(B, 5), seq=1))  # C equivocates on an applied slot
    txs += [w[0].make(Bond(1), acks=[(B, 2)], epoch=2)]
    return txs


# Genesis files


def test_genesis_toml_round_trips() -> None:
    text = GENESIS.to_toml()
    back = Genesis.from_toml(text)
    assert back == GENESIS
    assert back.chain == GENESIS.chain
    assert back.supply == 2310


def test_the_chain_id_covers_every_parameter() -> None:
    assert make_genesis(slash_ppm=1).chain != make_genesis(slash_ppm=2).chain
    assert make_genesis({0: 1}).chain != make_genesis({0: 2}).chain
    assert make_genesis().chain == make_genesis().chain


def test_genesis_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "genesis.toml"
    path.write_text(f"""
name = "dev"
timekeeper = "{TIMEKEEPER.peer_id}"

[[accounts]]
peer = "{USERS[0].peer_id}"
balance = 5
""")
    genesis = Genesis.load(path)
    assert genesis.params == Params(name="dev", timekeeper=TIMEKEEPER.peer_id)
    assert genesis.supply == 5
    assert genesis.params.slashing.equivocation_ppm == 500_000


@pytest.mark.parametrize(("text", "match"), [
    ("name = 'x'", "timekeeper"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\nbogus = 1", "unknown key"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\ninflation_ppm = -1", "inflation_ppm"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n[slashing]\nequivocation_ppm = 2000000",
     "equivocation_ppm"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n[[accounts]]\npeer = 'nope'",
     "peer"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n[[accounts]]\npeer = "
     f"'{USERS[0].peer_id}'\nbalance = true", "balance"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n" +
     f"[[accounts]]\npeer = '{USERS[0].peer_id}'\n" * 2, "twice"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n" + "".join(
        f"[[accounts]]\npeer = '{u.peer_id}'\nbalance = {2**62}\n" for u in USERS[:2]),
     "supply"),
    ("name = [", "TOML"),
    (f"name = 'x'\ntimekeeper = '{TIMEKEEPER.peer_id}'\n[[accounts]]\npeer = "
     f"'{TIMEKEEPER.peer_id}'", "timekeeper only ticks"),
])
def test_bad_genesis_files_are_config_errors(text: str, match: str) -> None:
    with pytest.raises(GenesisError, match=match) as info:
        Genesis.from_toml(text)
    assert isinstance(info.value, ConfigError)


def test_missing_genesis_file(tmp_path: Path) -> None:
    with pytest.raises(GenesisError):
        Genesis.load(tmp_path / "absent.toml")


# The store


def test_store_uses_wal_and_keeps_the_log_append_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with LedgerStore(path, GENESIS) as store:
        store.ledger().receive(Wallet(USERS[0], GENESIS.chain).make(Bond(1)))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE log SET seq = 5")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM log")
    db.close()


def test_rebuild_from_the_log_equals_the_live_state_byte_for_byte(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "ledger.db", GENESIS) as store:
        ledger = store.ledger()
        outcomes = [ledger.receive(stx) for stx in history()]
        assert Outcome.FAILED in outcomes
        assert Outcome.EQUIVOCATION in outcomes
        live = ledger.state.encode()
        assert store.rebuild().encode() == live
    # Reopened (no snapshot): the log alone gives it back; and the re-verifying mode agrees.
    with LedgerStore(tmp_path / "ledger.db", GENESIS, verify=True) as store:
        assert store.ledger().state.encode() == live
        assert store.rebuild().encode() == live


def test_snapshot_plus_the_rest_of_the_log(tmp_path: Path) -> None:
    txs = history()
    path = tmp_path / "ledger.db"
    with LedgerStore(path, GENESIS) as store:
        ledger = store.ledger()
        for stx in txs[:4]:
            ledger.receive(stx)
        store.save_snapshot(ledger.state)
        for stx in txs[4:]:
            ledger.receive(stx)
        live = ledger.state.encode()
    with LedgerStore(path, GENESIS) as store:
        # The equivocation learnt after the snapshot voided a slot inside it: stale.
        assert store.snapshot() is None
        reopened = store.ledger()
        assert reopened.state.encode() == live
        # The reopened ledger keeps working: a duplicate is known, a new transaction applies.
        assert reopened.receive(txs[0]) is Outcome.DUPLICATE
        assert reopened.receive(Wallet(USERS[1], GENESIS.chain, seq=2).make(Bond(1))) \
            is Outcome.APPLIED
        assert store.rebuild().encode() == reopened.state.encode()


def test_a_valid_snapshot_is_used(tmp_path: Path) -> None:
    txs = [stx for stx in history() if stx.slot != (C, 1) or stx.tx.acks]
    path = tmp_path / "ledger.db"
    with LedgerStore(path, GENESIS) as store:
        ledger = store.ledger()
        for stx in txs[:4]:
            ledger.receive(stx)
        store.save_snapshot(ledger.state)
        for stx in txs[4:]:
            ledger.receive(stx)
        live = ledger.state.encode()
    with LedgerStore(path, GENESIS) as store:
        snapshot = store.snapshot()
        assert snapshot is not None
        assert snapshot[0] == 4
        assert store.ledger().state.encode() == live == store.rebuild().encode()


def test_a_batch_commits_together(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    txs = history()
    with LedgerStore(path, GENESIS) as store:
        ledger = store.ledger()
        with store.batch():
            for stx in txs:
                ledger.receive(stx)
        assert len(store) == len(txs)  # the equivocation's second version is logged too
    with LedgerStore(path, GENESIS) as store:
        assert len(store) == len(txs)


def test_a_store_of_another_genesis_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    LedgerStore(path, GENESIS).close()
    with pytest.raises(GenesisError, match="another genesis"):
        LedgerStore(path, make_genesis({0: 1}))


def test_a_damaged_snapshot_or_log_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with LedgerStore(path, GENESIS) as store:
        ledger = store.ledger()
        for stx in history()[:3]:
            ledger.receive(stx)
        store.save_snapshot(ledger.state)
    db = sqlite3.connect(path)
    db.execute("UPDATE snapshot SET state = ?", (b'{"chain": "00"}',))
    db.commit()
    db.close()
    with LedgerStore(path, GENESIS) as store, pytest.raises(LedgerCorruptError):
        store.ledger()


def test_an_out_of_order_log_is_corrupt() -> None:
    w = wallets(GENESIS)
    one, two = w[0].make(Bond(1)), w[0].make(Bond(1))
    with pytest.raises(LedgerCorruptError, match="out of order"):
        replay(State.genesis(GENESIS), [two, one], set())


def test_a_closed_store_refuses_use(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.db", GENESIS)
    store.close()
    with pytest.raises(ClosedError):
        len(list(store.entries()))
