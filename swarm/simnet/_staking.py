"""Staking in a simnet run: a genesis for the run's nodes, the client's wallet, and the
run's staking promises (cheaters excluded, honest providers paid).

Before the nodes start, `prepare_ledger` creates each node's identity in its data dir, a
timekeeper key (node 0 ticks) and the client's wallet, and writes a genesis that bonds
`stake` for every node and funds the wallet. During the run `ReportLog` records when the
client's verifier reported whom. At the end `check_staking` asks every honest node's ledger
(swarm.v1.LedgerService) about the cheaters and about the client's payment channels;
`staking_promises` is pure over what it found and the request records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from swarm._errors import SwarmError
from swarm._proto.swarm.v1 import ledger_pb2, ledger_pb2_grpc
from swarm._types import PeerId
from swarm.protocol import Identity
from swarm.simnet._report import PromiseResult
from swarm.simnet._scenario import Promises, Staking
from swarm.simnet._workload import RequestRecord
from swarm.staking import FaultEvidence, Genesis, GenesisAccount, Params, SlashingTable

__all__ = ["LedgerSetup", "ReportLog", "StakingFindings", "check_staking", "prepare_ledger",
           "staking_lines", "staking_promises"]


@dataclass(frozen=True, slots=True)
class LedgerSetup:
    genesis: Genesis
    genesis_path: Path
    timekeeper_key: Path
    wallet: Identity
    # Peer id of node i (its identity, created in its data dir).
    peers: tuple[PeerId, ...]


def prepare_ledger(settings: Staking, data_dirs: Sequence[Path], workdir: Path,
                   name: str = "simnet") -> LedgerSetup:
    """Identities for the nodes (DATA_DIR/identity.key, as swarm-node keeps it), a
    timekeeper and a wallet, and the genesis file."""
    peers = []
    for data_dir in data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
        peers.append(Identity.load_or_create(data_dir / "identity.key").peer_id)
    keeper_path = workdir / "timekeeper.key"
    keeper = Identity.load_or_create(keeper_path)
    wallet = Identity.load_or_create(workdir / "wallet.key")
    accounts = [GenesisAccount(p, balance=settings.balance, bonded=settings.stake) for p in peers]
    accounts.append(GenesisAccount(wallet.peer_id, balance=settings.client_balance))
    genesis = Genesis(Params(name=name, timekeeper=keeper.peer_id,
                             unbonding_epochs=settings.unbonding_epochs,
                             slashing=SlashingTable(wrong_result_ppm=settings.wrong_result_ppm),
                             epoch_seconds=settings.epoch_seconds,
                             min_stake=settings.min_stake),
                      tuple(accounts))
    path = workdir / "genesis.toml"
    path.write_text(genesis.to_toml())
    return LedgerSetup(genesis, path, keeper_path, wallet, tuple(peers))


@dataclass(slots=True)
class ReportLog:
    """Wraps the verifier's `report`: when (seconds from `start`) it reported whom."""

    chain: bytes
    forward: Callable[[bytes], Awaitable[object]] | None
    start: float = 0.0
    reports: list[tuple[float, PeerId]] = field(default_factory=list)

    async def __call__(self, wire: bytes) -> object:
        with contextlib.suppress(SwarmError):
            offender = FaultEvidence.decode(wire, self.chain).offender_peer
            self.reports.append((asyncio.get_running_loop().time() - self.start, offender))
        return await self.forward(wire) if self.forward is not None else None


@dataclass(frozen=True, slots=True)
class StakingFindings:
    # Per cheater node index: per honest node index, (faults, eligible, bonded) on its ledger.
    cheaters: Mapping[int, Mapping[int, tuple[int, bool, int]]]
    # Per provider node index: (receipts total the client signed it, claimed on the ledger
    # of every honest node).
    paid: Mapping[int, tuple[int, tuple[int, ...]]]
    # When the client first reported each cheater (seconds from the workload's start).
    reported_at: Mapping[int, float]


async def _account(address: str, peer: PeerId) -> ledger_pb2.AccountReply:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: ledger_pb2.AccountReply = await ledger_pb2_grpc.LedgerServiceStub(
            channel).GetAccount(ledger_pb2.GetAccountRequest(peer=str(peer)), timeout=5)
        return reply


async def check_staking(setup: LedgerSetup, addresses: Mapping[int, str],
                        cheaters: Sequence[int], owed: Mapping[PeerId, int],
                        reports: ReportLog, *, settle: float) -> StakingFindings:
    """Ask every honest node's ledger about the cheaters and the client's channels. Waits
    up to `settle` seconds for claims to reach the receipts and for slashes to spread
    (both take an epoch or a gossip round); then reads what is there."""
    honest = {i: a for i, a in addresses.items() if i not in cheaters}
    index_of = {p: i for i, p in enumerate(setup.peers)}
    deadline = time.monotonic() + settle

    async def read() -> tuple[dict[int, dict[int, tuple[int, bool, int]]],
                              dict[int, tuple[int, tuple[int, ...]]]]:
        seen: dict[int, dict[int, tuple[int, bool, int]]] = {c: {} for c in cheaters}
        claimed: dict[int, list[int]] = {index_of[p]: [] for p in owed if p in index_of}
        for node, address in honest.items():
            for cheater in cheaters:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    a = await _account(address, setup.peers[cheater])
                    seen[cheater][node] = (a.faults, a.eligible, a.bonded)
            with contextlib.suppress(grpc.aio.AioRpcError):
                wallet = await _account(address, setup.wallet.peer_id)
                by_payee = {c.payee: c.claimed for c in wallet.channels}
                for index in claimed:
                    claimed[index].append(by_payee.get(str(setup.peers[index]), 0))
        paid = {i: (owed[setup.peers[i]], tuple(c)) for i, c in claimed.items()}
        return seen, paid

    while True:
        seen, paid = await read()
        settled = all(len(v) == len(honest) and all(f > 0 and not ok for f, ok, _ in v.values())
                      for v in seen.values()) and \
            all(all(c == total for c in claims) and len(claims) == len(honest)
                for total, claims in paid.values())
        if settled or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    first: dict[int, float] = {}
    for at, peer in reports.reports:
        if peer in index_of:
            first.setdefault(index_of[peer], at)
    return StakingFindings(seen, paid, first)


def staking_promises(promises: Promises, findings: StakingFindings,
                     records: Sequence[RequestRecord], honest: int) -> tuple[PromiseResult, ...]:
    """The run's staking promises over what the ledgers said and the request records."""
    out: list[PromiseResult] = []
    if promises.cheaters_excluded:
        for cheater, ledgers in sorted(findings.cheaters.items()):
            excluded = sum(1 for faults, ok, _ in ledgers.values() if faults > 0 and not ok)
            out.append(PromiseResult(f"honest ledgers that slashed and excluded node {cheater}",
                                     honest, excluded, excluded == honest))
            at = findings.reported_at.get(cheater)
            late = len(records) if at is None else sum(
                1 for r in records if r.ok and r.node == cheater and r.sent is not None
                and r.sent > at + promises.exclusion_grace_s)
            out.append(PromiseResult(
                f"answers from node {cheater} sent > {promises.exclusion_grace_s:g} s after "
                "it was reported", 0, late, late == 0))
    if promises.honest_paid:
        wrong = sum(1 for total, claims in findings.paid.values()
                    if any(c != total for c in claims))
        out.append(PromiseResult("providers whose claims differ from their receipts", 0,
                                 wrong, wrong == 0 and bool(findings.paid)))
    return tuple(out)


def staking_lines(findings: StakingFindings) -> list[str]:
    lines = []
    for cheater, ledgers in sorted(findings.cheaters.items()):
        at = findings.reported_at.get(cheater)
        states = ", ".join(f"node {n}: {f} faults, bonded {b}, "
                           f"{'eligible' if ok else 'excluded'}"
                           for n, (f, ok, b) in sorted(ledgers.items()))
        lines.append(f"staking: cheater node {cheater} reported at "
                     f"{'never' if at is None else f'{at:.1f} s'}; {states}")
    for node, (total, claims) in sorted(findings.paid.items()):
        lines.append(f"staking: node {node} signed receipts {total}, claimed on each honest "
                     f"ledger {', '.join(map(str, claims))}")
    return lines
