"""Ledger throughput and rebuild time.

    .venv/bin/python bench/ledger_bench.py                      # 50k applied, 1M-entry rebuild
    .venv/bin/python bench/ledger_bench.py --apply 20000 --rebuild 100000

Workload: `--accounts` accounts (genesis balance 10**12 each) and the timekeeper. Each
transaction is, by weight, a transfer (80%), a bond or unbond (10%), or a deposit (10%), to
or from random accounts; a sender acknowledges up to 4 of the sources that credited it since
its last transaction (so its chain carries the causal dependencies a real client's would),
and the timekeeper ticks every 10,000 transactions. Transactions are signed in worker
processes (signing dominates generation) and fed in signing order, which is causal.

Prints, for the first `--apply` transactions:
  apply                 the pure state machine over decoded objects (no decoding, no signature)
  decode + apply        from wire bytes, signature verification excluded
  decode+verify+apply   from wire bytes, Ed25519 verification included
  Ledger.receive        the full path from wire bytes: verify, buffer, settle, log (in memory)
  Ledger, shuffled      the same with deliveries shuffled in windows of 64 (out of order)
  Ledger + LedgerStore  in order, logging to SQLite (WAL) in one batch
and for `--rebuild` transactions: the time to append them to a LedgerStore (SQLite WAL)
and to rebuild the state from that log (LedgerStore.rebuild, which does not re-verify the
signatures of its own log; `--verify-rebuild` re-verifies, extrapolated from a sample).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from swarm.protocol import Identity
from swarm.staking import (
    Ack,
    Bond,
    Deposit,
    Genesis,
    GenesisAccount,
    Ledger,
    LedgerStore,
    Params,
    SignedTransaction,
    State,
    Tick,
    Transaction,
    Transfer,
    Unbond,
    WorkReport,
    apply,
    decode_transaction,
    settle,
    sign,
)

TICK_EVERY = 10_000
CHUNK = 2_000


def identity(i: int) -> Identity:
    """Account i's key (-1: the timekeeper), derived from i so workers can rebuild it."""
    return Identity.from_seed((i + 2).to_bytes(4, "big") * 8)


def make_genesis(accounts: int) -> Genesis:
    params = Params(name="bench", timekeeper=identity(-1).peer_id, unbonding_epochs=2)
    return Genesis(params, tuple(GenesisAccount(identity(i).peer_id, balance=10**12)
                                 for i in range(accounts)))


def plan(genesis: Genesis, accounts: int, count: int,
         seed: int) -> Iterator[tuple[int, Transaction]]:
    """(signer index, unsigned transaction), in a causal order."""
    rng = random.Random(seed)
    peers = [identity(i).peer_id for i in range(accounts)]
    timekeeper = identity(-1).peer_id
    seqs = [0] * accounts
    bonded = [0] * accounts
    # Per account: source -> latest source seq that credited it and is not acknowledged.
    unacked: list[dict[int, int]] = [{} for _ in range(accounts)]
    ticks = 0
    for n in range(count):
        if n and n % TICK_EVERY == 0:
            ticks += 1
            reports = tuple(WorkReport(peers[rng.randrange(accounts)], rng.randrange(1, 100))
                            for _ in range(8))
            yield -1, Transaction(genesis.chain, timekeeper, ticks,
                                  Tick(tuple({r.worker: r for r in reports}.values())),
                                  epoch=ticks - 1)
            continue
        s = rng.randrange(accounts)
        seqs[s] += 1
        sources = sorted(unacked[s].items())[:4]
        for source, _ in sources:
            del unacked[s][source]
        acks = tuple(Ack(peers[j], q) for j, q in sources)
        roll = rng.random()
        t = (s + rng.randrange(1, accounts)) % accounts
        body: Transfer | Bond | Unbond | Deposit
        if roll < 0.8:
            body = Transfer(peers[t], rng.randrange(1, 1000))
            unacked[t][s] = seqs[s]
        elif roll < 0.85:
            body = Bond(rng.randrange(1, 1000))
            bonded[s] += body.amount
        elif roll < 0.9 and bonded[s] > 0:
            body = Unbond(rng.randrange(1, bonded[s] + 1))
            bonded[s] -= body.amount
        else:
            body = Deposit(peers[t], rng.randrange(1, 1000))
        yield s, Transaction(genesis.chain, peers[s], seqs[s], body, epoch=ticks, acks=acks)


def _sign_chunk(items: list[tuple[int, Transaction]]) -> list[bytes]:
    keys: dict[int, Identity] = {}
    out = []
    for signer, tx in items:
        key = keys.get(signer) or keys.setdefault(signer, identity(signer))
        out.append(sign(tx, key).wire)
    return out


def _chunks(items: Iterable[tuple[int, Transaction]]) -> Iterator[list[tuple[int, Transaction]]]:
    chunk: list[tuple[int, Transaction]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def signed_stream(genesis: Genesis, accounts: int, count: int, seed: int,
                  workers: int) -> Iterator[bytes]:
    """Wire bytes of `count` transactions, signed in `workers` processes, in order."""
    with ProcessPoolExecutor(workers) as pool:
        for chunk in pool.map(_sign_chunk, _chunks(plan(genesis, accounts, count, seed))):
            yield from chunk


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} tx/s  ({seconds * 1e6 / n:7.1f} us/tx)"


def bench_apply(genesis: Genesis, wires: list[bytes]) -> None:
    n = len(wires)
    decoded = [decode_transaction(w, genesis.chain, verify=False) for w in wires]

    def run(items: Iterable[SignedTransaction]) -> State:
        state = State.genesis(genesis)
        for stx in items:
            state = apply(state, stx)
        return state

    t = time.perf_counter()
    final = run(decoded)
    print(f"  apply                 {rate(n, time.perf_counter() - t)}")
    t = time.perf_counter()
    run(decode_transaction(w, genesis.chain, verify=False) for w in wires)
    print(f"  decode + apply        {rate(n, time.perf_counter() - t)}   (no signature check)")
    t = time.perf_counter()
    run(decode_transaction(w, genesis.chain) for w in wires)
    print(f"  decode+verify+apply   {rate(n, time.perf_counter() - t)}   (Ed25519 verified)")
    t = time.perf_counter()
    ledger = Ledger(genesis)
    for w in wires:
        ledger.receive(w)
    print(f"  Ledger.receive        {rate(n, time.perf_counter() - t)}   (verify+buffer+log)")
    assert ledger.state.encode() == final.encode()
    shuffled = list(wires)
    rng = random.Random(1)
    for start in range(0, n, 64):
        window = shuffled[start:start + 64]
        rng.shuffle(window)
        shuffled[start:start + 64] = window
    t = time.perf_counter()
    ledger = Ledger(genesis)
    for w in shuffled:
        ledger.receive(w)
    print(f"  Ledger, shuffled      {rate(n, time.perf_counter() - t)}   (windows of 64)")
    assert ledger.state.encode() == final.encode(), "out-of-order delivery diverged"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with LedgerStore(Path(tmp) / "ledger.db", genesis) as store, store.batch():
            ledger = store.ledger()
            for w in wires:
                ledger.receive(w)
        print(f"  Ledger + LedgerStore  {rate(n, time.perf_counter() - t)}   "
              "(the same, logging to SQLite WAL)")
    assert ledger.state.encode() == final.encode()
    print(f"  final state: {len(final.accounts)} accounts, {len(final.pending)} pending pairs, "
          f"epoch {final.epoch}, {len(final.encode()) / 1e6:.1f} MB canonical")


def bench_rebuild(genesis: Genesis, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        t = time.perf_counter()
        # Setting up: the log is written as a Ledger writes it (settle, then append), minus
        # the Ledger's own signature check, which would dominate the setup.
        state = State.genesis(genesis)
        with LedgerStore(path, genesis) as store, store.batch():
            for i, wire in enumerate(signed_stream(genesis, args.accounts, args.rebuild,
                                                   args.seed + 1, args.workers)):
                stx = decode_transaction(wire, genesis.chain, verify=False)
                state, _ = settle(state, stx)
                store.append(stx)
                if (i + 1) % 200_000 == 0:
                    print(f"    ... {i + 1:,} signed, applied and logged "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
            live = state.encode()
        build = time.perf_counter() - t
        size = path.stat().st_size + Path(f"{path}-wal").stat().st_size \
            if Path(f"{path}-wal").exists() else path.stat().st_size
        print(f"  signed, applied and logged {args.rebuild:,} transactions in {build:.0f} s "
              f"(generation and signing included); database {size / 1e6:.0f} MB")
        with LedgerStore(path, genesis) as store:
            t = time.perf_counter()
            rebuilt = store.rebuild()
            took = time.perf_counter() - t
            assert rebuilt.encode() == live, "rebuild differs from the live state"
            print(f"  rebuild from the log  {took:7.1f} s for {args.rebuild:,}  "
                  f"{rate(args.rebuild, took)}   (equal to live, byte for byte)")
        if args.verify_rebuild:
            sample = min(args.rebuild, 20_000)
            with LedgerStore(path, genesis, verify=True) as store:
                t = time.perf_counter()
                state = State.genesis(genesis)
                for i, stx in enumerate(store.entries()):
                    if i == sample:
                        break
                    state = apply(state, stx)
                took = time.perf_counter() - t
            print(f"  rebuild, re-verifying {rate(sample, took)}   -> "
                  f"{took / sample * args.rebuild:.0f} s for {args.rebuild:,} "
                  f"(extrapolated from {sample:,})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--apply", type=int, default=50_000)
    parser.add_argument("--rebuild", type=int, default=1_000_000)
    parser.add_argument("--verify-rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    genesis = make_genesis(args.accounts)
    print(f"ledger bench: {args.accounts} accounts, {os.cpu_count()} cpus, "
          f"{args.workers} signing workers")
    t = time.perf_counter()
    wires = list(signed_stream(genesis, args.accounts, args.apply, args.seed, args.workers))
    print(f"  generated and signed {len(wires):,} in {time.perf_counter() - t:.1f} s")
    bench_apply(genesis, wires)
    if args.rebuild:
        bench_rebuild(genesis, args)


if __name__ == "__main__":
    main()
