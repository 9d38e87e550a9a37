"""StakeBook: which providers the SDK may route to, as a trusted node's ledger says.

Adverts are the providers' own word, so a stake in one would prove nothing. The client asks
the nodes it joined through (its bootstrap peers: the user's choice of whom to believe) with
swarm.v1.LedgerService/GetEligible, which evaluates swarm.staking.eligible on that node's
own ledger at max(the network's minimum, the client's min_stake). Answers are cached per
threshold for `max_age` seconds.

A bootstrap node without a ledger (UNIMPLEMENTED) means staking is off: every provider is
allowed when the client asked for no minimum, none when it did (nothing can vouch for the
stake). A bootstrap node that cannot be reached keeps the last answer; with none yet, no
provider is eligible under a minimum and every provider is allowed without one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from swarm._clock import Clock
from swarm._errors import NoProviderError, SwarmError
from swarm._proto.swarm.v1 import ledger_pb2, ledger_pb2_grpc
from swarm._types import PeerId
from swarm.protocol import Identity, PeerChannels, PeerEntry, PeerView
from swarm.routing import error_from_rpc
from swarm.scheduler import Candidate
from swarm.staking import (
    Ack,
    Deposit,
    Transaction,
    charge,
    receipt_params,
    sign,
    sign_receipt,
)

__all__ = ["Payer", "StakeBook", "bootstrap_peers"]


def bootstrap_peers(addrs: Sequence[str]) -> tuple[PeerId, ...]:
    """The peer ids that `/.../p2p/<id>` multiaddrs name (others are skipped)."""
    found = []
    for addr in addrs:
        parts = addr.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "p2p":
            try:
                found.append(PeerId(parts[-1]))
            except SwarmError:
                continue
    return tuple(found)


class StakeBook:
    def __init__(self, trusted: Sequence[PeerId], view: Callable[[], PeerView],
                 channels: PeerChannels, clock: Clock, *, max_age: float = 2.0) -> None:
        self._trusted = tuple(trusted)
        self._view = view
        self._channels = channels
        self._clock = clock
        self._max_age = max_age
        # Staking on (True), off (False: the trusted node keeps no ledger), unknown (None).
        self.staking: bool | None = None
        # threshold asked -> (fetched at, eligible peers)
        self._eligible: dict[int, tuple[float, frozenset[PeerId]]] = {}
        # threshold -> when a trusted node was last asked (answered or not)
        self._asked: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self.failures = 0

    async def _stubs(self) -> AsyncIterator[Any]:
        """LedgerService stubs of the trusted nodes the view can reach, in order."""
        view = self._view()
        for trusted in self._trusted:
            entry = view.entries.get(trusted)
            if entry is None or not entry.advert.endpoints:
                continue
            try:
                channel = await self._channels.channel(trusted, entry.advert.endpoints[0])
            except (SwarmError, OSError):
                continue
            yield ledger_pb2_grpc.LedgerServiceStub(channel)

    async def _ask(self, call: Callable[[Any], Awaitable[Any]]) -> tuple[Any, Any]:
        """`call(stub)` on the first trusted node that answers: (reply, stub)."""
        async for stub in self._stubs():
            try:
                return await call(stub), stub
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise NoProviderError("the nodes this client joined through keep no "
                                          "ledger: it cannot pay") from exc
            except (SwarmError, OSError):
                continue
        raise NoProviderError("no node this client joined through answers for the ledger")

    async def account(self, peer: str) -> tuple[Any, Any]:
        """`peer`'s account on a trusted node, and that node's LedgerService stub."""
        return await self._ask(lambda stub: stub.GetAccount(
            ledger_pb2.GetAccountRequest(peer=peer), timeout=5))

    async def chain_and_seq(self, peer: PeerId) -> tuple[bytes, int]:
        """The network's chain id and `peer`'s last sequence number, as a trusted node's
        ledger says (what wrong-result evidence against `peer` names)."""
        reply, _ = await self.account(str(peer))
        return bytes(reply.chain), int(reply.seq)

    async def submit(self, wire: bytes) -> str:
        """Hand one ledger item (a transaction, or evidence such as the verifier's
        FaultEvidence) to a trusted node, which gossips it to the swarm; its outcome."""
        reply, _ = await self._ask(lambda stub: stub.Submit(
            ledger_pb2.SubmitRequest(wire=wire), timeout=5))
        return str(reply.outcome)

    def rule(self, min_stake: int) -> Callable[[PeerId], bool] | None:
        """The Router's stake_ok for `min_stake` (None: allow all) from the cached answers."""
        if self.staking is False or (self.staking is None and min_stake == 0):
            if min_stake > 0:
                raise NoProviderError(f"min_stake={min_stake} asked for, but the nodes this "
                                      "client joined through keep no ledger")
            return None
        entry = self._eligible.get(min_stake)
        allowed = entry[1] if entry is not None else frozenset()
        return allowed.__contains__

    async def refresh(self, min_stake: int) -> None:
        """Ask a trusted node again, at most every `max_age` seconds per threshold (whatever
        the answer, or none). A request waits for a refresh in flight only when there is
        no answer to route by yet."""
        if self._lock.locked() and (self.staking is False or min_stake in self._eligible):
            return
        async with self._lock:
            now = self._clock.monotonic()
            asked = self._asked.get(min_stake)
            if asked is not None and now - asked < self._max_age:
                return
            self._asked[min_stake] = now
            view = self._view()
            providers = sorted({e.peer_id for e in view if e.advert.models}, key=str)[:4096]
            for peer in self._trusted:
                trusted = view.entries.get(peer)
                if trusted is None or not trusted.advert.endpoints:
                    continue
                try:
                    channel = await self._channels.channel(peer, trusted.advert.endpoints[0])
                    reply = await ledger_pb2_grpc.LedgerServiceStub(channel).GetEligible(
                        ledger_pb2.GetEligibleRequest(peers=[str(p) for p in providers],
                                                      min_stake=min_stake), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self.staking = False
                        return
                    self.failures += 1
                    continue
                except (SwarmError, OSError):
                    self.failures += 1
                    continue
                self.staking = True
                wanted = set(providers)
                self._eligible[min_stake] = (now, frozenset(
                    p for p in map(PeerId, reply.eligible) if p in wanted))
                return


class Payer:
    """The SDK's side of payment channels (`AsyncClient(..., wallet=KEY)`).

    Before routing, `ensure` deposits `deposit` for each provider that charges and has no
    deposit left from us (a Deposit transaction through a trusted node), and waits until
    the provider's own ledger shows it. Each attempt the Router sends then carries a
    receipt for the running total owed to that provider (`pay`), signed by the wallet.
    """

    def __init__(self, wallet: Identity, book: StakeBook, *, deposit: int) -> None:
        self.wallet = wallet
        self._book = book
        self._deposit = deposit
        self.cumulative: dict[PeerId, int] = {}
        self.deposited: dict[PeerId, int] = {}
        self._chain = b""
        self._lock = asyncio.Lock()

    def pay(self, candidate: Candidate, items: int) -> dict[str, str]:
        entry = self._book._view().entries.get(candidate.peer)
        if entry is None or not self._chain:
            return {}
        price = entry.advert.price
        amount = charge(price.per_request_micros, price.per_1k_items_micros, items)
        if amount == 0:
            return {}
        total = self.cumulative.get(candidate.peer, 0) + amount
        self.cumulative[candidate.peer] = total
        return receipt_params(sign_receipt(self._chain, self.wallet, candidate.peer, total))

    def unpay(self, candidate: Candidate, items: int) -> None:
        """The provider refused the attempt before serving it (admission): take its amount
        back, so the next receipt to it repeats the total (at the advertised price now)."""
        entry = self._book._view().entries.get(candidate.peer)
        if entry is None:
            return
        price = entry.advert.price
        amount = charge(price.per_request_micros, price.per_1k_items_micros, items)
        owed = self.cumulative.get(candidate.peer, 0)
        self.cumulative[candidate.peer] = max(0, owed - amount)

    async def ensure(self, providers: Sequence[PeerEntry]) -> None:
        async with self._lock:
            for entry in providers:
                price = entry.advert.price
                worst = charge(price.per_request_micros, price.per_1k_items_micros, 1)
                if worst == 0:
                    continue
                peer = entry.peer_id
                owed = self.cumulative.get(peer, 0)
                if self.deposited.get(peer, 0) - owed >= worst * 16:
                    continue
                await self._deposit_for(entry)

    async def _deposit_for(self, entry: PeerEntry) -> None:
        account, stub = await self._book.account(str(self.wallet.peer_id))
        self._chain = bytes(account.chain)
        latest: dict[str, int] = {}
        for credit in account.pending:
            latest[credit.source] = max(latest.get(credit.source, 0), credit.seq)
        acks = tuple(Ack(PeerId(s), q) for s, q in sorted(latest.items()))[:64]
        peer = entry.peer_id
        tx = Transaction(self._chain, self.wallet.peer_id, account.seq + 1,
                         Deposit(peer, self._deposit), epoch=account.epoch, acks=acks)
        try:
            await stub.Submit(ledger_pb2.SubmitRequest(wire=sign(tx, self.wallet).wire),
                              timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "deposit") from exc
        target = self.deposited.get(peer, 0) + self._deposit
        self.deposited[peer] = target
        # Served once the provider's own ledger has it (gossip: usually milliseconds).
        deadline = self._book._clock.monotonic() + 15.0
        while self._book._clock.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError, SwarmError, OSError):
                channel = await self._book._channels.channel(peer, entry.advert.endpoints[0])
                seen = await ledger_pb2_grpc.LedgerServiceStub(channel).GetAccount(
                    ledger_pb2.GetAccountRequest(peer=str(self.wallet.peer_id)), timeout=5)
                if any(c.payee == str(peer) and c.deposited >= target for c in seen.channels):
                    return
            await self._book._clock.sleep(0.05)
