"""The node's ledger service (I/O only; every decision is swarm.staking's).

A node started with a genesis (`swarm-node run --genesis FILE`) keeps the staking ledger:

- a LedgerStore (SQLite, WAL) in DATA_DIR/ledger.sqlite: restarting replays it to the same
  state;
- the gossip topic `swarm/ledger/v1` carries transactions and evidence as their wire bytes
  (swarm.staking.decode_wire). The transport-side validator checks size, a per-forwarder
  token bucket, the signature and the chain before anything is forwarded: junk is REJECTed,
  duplicates and floods IGNOREd. What passes feeds `Ledger.receive`, whose out-of-order
  buffer is bounded (`max_buffered`, `max_ahead`); equivocations found are gossiped on as
  evidence;
- ledger sync on join (snapshot-then-gossip, like adverts): the node pages through each
  live peer's log with `GetLog(start, limit)` over pinned TLS, remembering per peer how far
  it read (a peer's log is append-only), so a later round reads only what is new;
- `swarm.v1.LedgerService`: Submit, GetAccount, GetHistory, GetSupply, GetLog;
- the timekeeper (the node given the genesis timekeeper's key) signs a Tick every
  `epoch_seconds`. Its work reports are not its own word: a worker's `served` is the value
  its Claim transactions collected in the epoch according to the timekeeper's ledger (every
  node can recompute it from the log), `failed` is 0 (wrong-result faults count elsewhere).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import (
    ConflictError,
    InvalidInputError,
    OverloadedError,
    PermissionDeniedError,
    SwarmError,
)
from swarm._proto.swarm.v1 import ledger_pb2, ledger_pb2_grpc
from swarm._types import PeerId
from swarm.protocol import (
    Gossip,
    GossipMessage,
    Identity,
    PeerChannels,
    PeerView,
    RateLimiter,
    Validation,
)
from swarm.routing import error_from_rpc, status_of
from swarm.staking import (
    Ack,
    Bond,
    BufferFullError,
    Claim,
    Deposit,
    Evidence,
    FaultEvidence,
    Genesis,
    LedgerConfig,
    LedgerError,
    LedgerStore,
    NotReadyError,
    Outcome,
    Receipt,
    RejectedError,
    SignedTransaction,
    StaleSequenceError,
    State,
    Tick,
    Transaction,
    TransactionFailedError,
    Transfer,
    Unbond,
    WorkReport,
    charge,
    check_receipt,
    decode_wire,
    eligible,
    receipt_from_params,
    sign,
    wire_of,
)

__all__ = ["LEDGER_SERVICE", "LEDGER_TOPIC", "LedgerAgent", "LedgerAgentConfig",
           "LedgerServicer", "Payments", "add_ledger_service", "summary"]

log = logging.getLogger("swarm.node")

LEDGER_TOPIC = "swarm/ledger/v1"
LEDGER_SERVICE = "swarm.v1.LedgerService"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20)]


@dataclass(frozen=True, slots=True)
class LedgerAgentConfig:
    # Per forwarding peer: ledger items/s accepted from gossip, and burst.
    rate_per_second: float = 500.0
    rate_burst: float = 5000.0
    # The Ledger's out-of-order buffer (items) and how far ahead an item may be.
    max_buffered: int = 16_384
    max_ahead: int = 256
    # Seconds between sync rounds (the first rounds, until one succeeds, come faster).
    sync_interval: float = 10.0
    # Peers asked per sync round, entries per page, pages per peer per round.
    sync_peers: int = 4
    page_entries: int = 512
    max_pages: int = 64
    # Log entries between snapshots saved to the store (a restart replays fewer).
    snapshot_every: int = 4096
    # Decoded items the validator hands to the consumer (saves a second signature check).
    decoded_cache: int = 4096


class LedgerAgent:
    """The ledger of one node: store, gossip, sync, ticks. Use on the event loop thread only,
    except `validate`, which the transport calls on its own thread."""

    def __init__(self, genesis: Genesis, path: Path, *, gossip: Gossip | None = None,
                 view: Callable[[], PeerView] | None = None, timekeeper: Identity | None = None,
                 clock: Clock = SYSTEM_CLOCK, config: LedgerAgentConfig | None = None) -> None:
        self.genesis = genesis
        self.config = config or LedgerAgentConfig()
        if timekeeper is not None and timekeeper.peer_id != genesis.params.timekeeper:
            raise LedgerError("--timekeeper-key is not the genesis timekeeper's key")
        self._gossip = gossip
        self._view = view or PeerView
        self._timekeeper = timekeeper
        self._clock = clock
        self._store = LedgerStore(path, genesis)
        self.ledger = self._store.ledger(LedgerConfig(max_buffered=self.config.max_buffered,
                                                      max_ahead=self.config.max_ahead))
        self._limiter = RateLimiter(self.config.rate_per_second, self.config.rate_burst, clock)
        self._decoded: collections.OrderedDict[bytes, object] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._snapshot_at = len(self._store)
        self._cursors: dict[PeerId, int] = {}
        self._channels = PeerChannels(options=_CHANNEL_OPTIONS)
        self._rng = random.Random()
        # Claimed totals per (payer, payee) at the last tick (the timekeeper's work reports);
        # after a restart, from the state: work claimed while it was down goes unreported
        # (under- rather than over-reporting).
        self._claimed_at_tick: dict[tuple[PeerId, PeerId], int] = {
            key: channel.claimed for key, channel in self.ledger.state.channels.items()}
        self.synced = asyncio.Event()
        # The node's own identity (claims) and its payments (a node that charges).
        self._identity: Identity | None = None
        self.payments: Payments | None = None
        # Evidence found here, waiting to be gossiped (bounded: the oldest goes first).
        self._publishing: collections.deque[bytes] = collections.deque(maxlen=1024)
        self._wake = asyncio.Event()
        self.counters: collections.Counter[str] = collections.Counter()

    def attach(self, gossip: Gossip | None, view: Callable[[], PeerView], *,
               identity: Identity | None = None, price_per_request: int = 0,
               price_per_1k_items: int = 0) -> None:
        """The transport, peer view and node identity, once the node has them (before
        `run`); with a price, the node takes payments and claims them."""
        self._gossip = gossip
        self._view = view
        self._identity = identity
        if identity is not None and (price_per_request or price_per_1k_items):
            self.payments = Payments(self, identity.peer_id, price_per_request,
                                     price_per_1k_items)

    @property
    def state(self) -> State:
        return self.ledger.state

    def close(self) -> None:
        with contextlib.suppress(SwarmError):
            self._store.save_snapshot(self.ledger.state)
        self._store.close()

    async def aclose(self) -> None:
        await self._channels.close()
        self.close()

    # ---------------------------------------------------------------- receiving

    def validate(self, msg: GossipMessage) -> Validation:
        """The gossip validator (transport thread): bounded work per message."""
        if not self._limiter.allow(msg.received_from):
            self.counters["rate_limited"] += 1
            return Validation.IGNORE
        try:
            item = decode_wire(msg.data, self.genesis.chain)
        except RejectedError:
            self.counters["rejected"] += 1
            return Validation.REJECT
        if isinstance(item, SignedTransaction) and not self._may_hold(item):
            self.counters["ignored_unfunded"] += 1
            return Validation.IGNORE
        self._remember(msg.data, item)
        return Validation.ACCEPT

    def _may_hold(self, stx: SignedTransaction) -> bool:
        """Whether `stx` could do anything: a sender the ledger has never credited that
        acknowledges nothing can only fail, yet every node would log it for ever."""
        tx = stx.tx
        if tx.acks or isinstance(tx.body, Tick):
            return True
        return tx.sender in self.ledger.state.accounts

    def receive(self, data: bytes) -> Outcome | None:
        """Feed one item (wire bytes) to the ledger; None when it was refused (counted)."""
        with self._lock:
            item = self._decoded.pop(data, None)
        try:
            if item is None:
                item = decode_wire(data, self.genesis.chain)
            if not isinstance(item, SignedTransaction | Evidence | FaultEvidence):
                raise RejectedError(f"the ledger does not take {type(item).__name__} items")
            with self._store.batch():
                outcome = self.ledger.receive(item)
        except BufferFullError:
            self.counters["buffer_full"] += 1
            return None
        except RejectedError:
            self.counters["rejected"] += 1
            return None
        self.counters[outcome.value] += 1
        self._after()
        return outcome

    def _after(self) -> None:
        for evidence in self.ledger.take_evidence():
            self.counters["evidence_found"] += 1
            self._spawn_publish(wire_of(evidence))
        for fault in self.ledger.take_faults():  # new here: keep it, and pass it on
            self.counters["faults_held"] += 1
            self._store.append_fault(fault)
            self._spawn_publish(fault.wire)
        if len(self._store) - self._snapshot_at >= self.config.snapshot_every:
            self._store.save_snapshot(self.ledger.state)
            self._snapshot_at = len(self._store)

    def _spawn_publish(self, data: bytes) -> None:
        if self._gossip is None:
            return
        self._publishing.append(data)
        self._wake.set()

    async def submit(self, data: bytes) -> Outcome:
        """A client's item: applied here, then gossiped. Raises InvalidInputError (malformed,
        bad signature), ConflictError (stale sequence number, refused by the state, waits
        on nothing we will ever see), OverloadedError (buffer full)."""
        try:
            item = decode_wire(data, self.genesis.chain)
            if not isinstance(item, SignedTransaction | Evidence | FaultEvidence):
                raise RejectedError(f"the ledger does not take {type(item).__name__} items")
            with self._store.batch():
                if isinstance(item, SignedTransaction):
                    outcome = self.ledger.submit(item)
                else:
                    outcome = self.ledger.receive(item)
        except RejectedError as exc:
            self.counters["rejected"] += 1
            raise InvalidInputError(str(exc)) from exc
        except BufferFullError as exc:
            raise OverloadedError(str(exc)) from exc
        except (StaleSequenceError, TransactionFailedError, NotReadyError) as exc:
            raise ConflictError(str(exc), code="FAILED_PRECONDITION") from exc
        self.counters[outcome.value] += 1
        self._after()
        if self._gossip is not None:
            # Our own subscription gets it back: let it find the decoded item.
            self._remember(bytes(data), item)
            await self._gossip.publish(LEDGER_TOPIC, bytes(data))
        return outcome

    def _remember(self, data: bytes, item: object) -> None:
        with self._lock:
            self._decoded[data] = item
            while len(self._decoded) > self.config.decoded_cache:
                self._decoded.popitem(last=False)

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        """Consume gossip, sync from peers, tick (timekeeper): until cancelled."""
        if self._gossip is None:
            return
        self._gossip.set_validator(LEDGER_TOPIC, self.validate)
        subscription = self._gossip.subscribe(LEDGER_TOPIC)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sync_loop(), name="ledger-sync")
            tg.create_task(self._publish_loop(), name="ledger-publish")
            if self._timekeeper is not None:
                tg.create_task(self._tick_loop(), name="ledger-ticks")
            if self.payments is not None:
                tg.create_task(self._claim_loop(), name="ledger-claims")
            async for msg in subscription:
                self.receive(msg.data)

    async def _publish_loop(self) -> None:
        assert self._gossip is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._publishing:
                with contextlib.suppress(SwarmError):
                    await self._gossip.publish(LEDGER_TOPIC, self._publishing.popleft())

    async def _sync_loop(self) -> None:
        delay = 0.2
        while True:
            if await self.sync() > 0 or self.synced.is_set():
                self.synced.set()
                delay = self.config.sync_interval
            await self._clock.sleep(delay)

    async def sync(self) -> int:
        """One round: page through the logs of up to `sync_peers` live peers; returns how
        many peers answered."""
        peers = [e for e in self._view() if e.advert.endpoints]
        self._rng.shuffle(peers)
        answered = 0
        for entry in peers[: self.config.sync_peers]:
            try:
                await self.sync_from(entry.peer_id, entry.advert.endpoints[0])
                answered += 1
            except (SwarmError, OSError) as exc:
                self.counters["sync_failures"] += 1
                log.info("ledger sync failed", extra={"peer": str(entry.peer_id),
                                                      "error": str(exc)})
        live = {e.peer_id for e in peers}
        for gone in [p for p in self._cursors if p not in live]:
            del self._cursors[gone]
        return answered

    async def sync_from(self, peer: PeerId | None, address: str) -> int:
        """Read `peer`'s log from where we stopped last time; returns entries read. A peer
        serving junk is cut off for this round (its items are refused like gossip's)."""
        if peer is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        else:
            channel = await self._channels.channel(peer, address)
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        start = self._cursors.get(peer, 0) if peer is not None else 0
        read = 0
        try:
            for _ in range(self.config.max_pages):
                try:
                    reply = await stub.GetLog(ledger_pb2.GetLogRequest(
                        start=start, limit=self.config.page_entries), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    raise error_from_rpc(exc, address) from exc
                if reply.length < start:  # the peer lost its log: read it again
                    start = 0
                    continue
                if len(reply.entries) > self.config.page_entries:
                    raise InvalidInputError(f"{address} sent more entries than asked for")
                for data in reply.entries:
                    self.receive(bytes(data))
                start += len(reply.entries)
                read += len(reply.entries)
                if not reply.entries or start >= reply.length:
                    break
            # Wrong-result evidence is no log entry: read what the peer holds every round
            # (rare, bounded by the page size; what we hold already is a cheap duplicate).
            try:
                reply = await stub.GetLog(ledger_pb2.GetLogRequest(
                    start=start, limit=self.config.page_entries, faults=True), timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc, address) from exc
            for data in reply.faults[: self.config.page_entries]:
                self.receive(bytes(data))
        finally:
            if peer is not None:
                self._cursors[peer] = start
            else:
                await channel.close()
        self.counters["synced_entries"] += read
        return read

    async def _claim_loop(self) -> None:
        claimed_in = self.ledger.state.epoch
        while True:
            await self._clock.sleep(0.5)
            epoch = self.ledger.state.epoch
            if epoch > claimed_in:
                claimed_in = epoch
                await self.claim_receipts()

    async def claim_receipts(self) -> int:
        """Claim every receipt that pays more than was claimed (once per epoch); acks every
        credit waiting for us first, so deposits count. Returns claims applied."""
        if self.payments is None or self._identity is None:
            return 0
        applied = 0
        for receipt in self.payments.claimable():
            state = self.ledger.state
            me = self._identity.peer_id
            latest: dict[PeerId, int] = {}
            for source, seq, _ in state.pending_for(me):
                latest[source] = max(latest.get(source, 0), seq)
            acks = tuple(Ack(s, q) for s, q in sorted(latest.items(), key=lambda kv: str(kv[0]))
                         )[:64]
            tx = Transaction(self.genesis.chain, me, state.account(me).seq + 1, Claim(receipt),
                             epoch=state.epoch, acks=acks)
            try:
                if await self.submit(sign(tx, self._identity).wire) is Outcome.APPLIED:
                    applied += 1
                    self.counters["claims"] += 1
            except SwarmError as exc:
                self.counters["claim_failures"] += 1
                log.info("claim refused", extra={"payer": str(receipt.payer),
                                                 "error": str(exc)})
        return applied

    async def _tick_loop(self) -> None:
        period = self.genesis.params.epoch_seconds
        while True:
            await self._clock.sleep(period)
            with contextlib.suppress(SwarmError):
                await self.tick()

    def work_reports(self) -> tuple[WorkReport, ...]:
        """Per worker, the value its claims collected since the last tick (our ledger)."""
        served: collections.Counter[PeerId] = collections.Counter()
        for key, channel in self.ledger.state.channels.items():
            gained = channel.claimed - self._claimed_at_tick.get(key, 0)
            if gained > 0:
                served[key[1]] += gained
        return tuple(WorkReport(worker, amount) for worker, amount in served.items()
                     if worker != self.genesis.params.timekeeper)

    async def tick(self) -> Outcome:
        """Sign and submit the next tick (timekeeper only)."""
        if self._timekeeper is None:
            raise LedgerError("only the timekeeper ticks")
        state = self.ledger.state
        seq = state.account(self._timekeeper.peer_id).seq + 1
        reports = self.work_reports()
        stx = sign(Transaction(self.genesis.chain, self._timekeeper.peer_id, seq,
                               Tick(reports), epoch=seq - 1), self._timekeeper)
        outcome = await self.submit(stx.wire)
        self._claimed_at_tick = {k: c.claimed for k, c in self.ledger.state.channels.items()}
        self.counters["ticks"] += 1
        return outcome

    # ---------------------------------------------------------------- queries

    def log_page(self, start: int, limit: int) -> tuple[list[bytes], int]:
        limit = max(1, min(limit or self.config.page_entries, self.config.page_entries))
        out: list[bytes] = []
        total = 0
        for stx in self._store.entries(start):
            out.append(stx.wire)
            total += len(stx.wire)
            if len(out) >= limit or total >= 4 << 20:
                break
        return out, len(self._store)

    def fault_page(self, limit: int) -> list[bytes]:
        """Wrong-result evidence held here (the newest `limit` offences at most)."""
        limit = max(1, min(limit or self.config.page_entries, self.config.page_entries))
        return [f.wire for f in self.ledger.faults[-limit:]]

    def history(self, peer: PeerId, start: int, limit: int,
                scan: int = 10_000) -> tuple[list[tuple[int, SignedTransaction]], int]:
        """Log entries that involve `peer`, from position `start`, scanning at most `scan`
        entries; returns (entries, position to continue from)."""
        limit = max(1, min(limit or 100, 1000))
        found: list[tuple[int, SignedTransaction]] = []
        position = start
        for stx in self._store.entries(start):
            if involves(stx.tx, peer):
                found.append((position, stx))
            position += 1
            if len(found) >= limit or position - start >= scan:
                break
        return found, position

    def metrics(self) -> Iterator[Metric]:
        state = self.ledger.state
        bonded = GaugeMetricFamily("swarm_ledger_bonded", "Bonded stake on this node's ledger.")
        bonded.add_metric([], sum(a.bonded for a in state.accounts.values()))
        yield bonded
        for name, value, what in (("minted", state.minted, "Rewards minted (ledger total)."),
                                  ("burned", state.burned, "Stake burned by slashes."),
                                  ("supply", state.supply, "Genesis supply + minted - burned."),
                                  ("epoch", state.epoch, "Current epoch."),
                                  ("buffered", self.ledger.buffered,
                                   "Ledger items waiting for their dependencies."),
                                  ("log_length", len(self._store), "Transaction log entries.")):
            gauge = GaugeMetricFamily(f"swarm_ledger_{name}", what)
            gauge.add_metric([], value)
            yield gauge
        slashes = GaugeMetricFamily("swarm_ledger_slashes",
                                    "Offences slashed (equivocations) on this ledger.")
        slashes.add_metric([], sum(a.equivocations for a in state.accounts.values()))
        yield slashes
        events = CounterMetricFamily(
            "swarm_ledger_items", "Ledger items by what became of them (applied, failed, "
            "buffered, duplicate, equivocation, void, rejected, buffer_full, rate_limited, "
            "synced_entries, ...).", labels=["outcome"])
        for event, count in sorted(self.counters.items()):
            events.add_metric([event], count)
        yield events

    def balance_metric(self, peer: PeerId) -> Metric:
        gauge = GaugeMetricFamily("swarm_ledger_balance", "This node's account on its ledger.",
                                  labels=["field"])
        account = self.ledger.state.account(peer)
        for field, value in (("balance", account.balance), ("bonded", account.bonded),
                             ("unbonding", account.unbonding_total)):
            gauge.add_metric([field], value)
        return gauge


def channels_of(state: State, payer: PeerId) -> list[tuple[PeerId, int, int]]:
    """(payee, deposited incl. unacknowledged deposits, claimed) per payee of `payer`."""
    found: dict[PeerId, list[int]] = {}
    for (source, payee), channel in state.channels.items():
        if source == payer:
            found[payee] = [channel.deposited, channel.claimed]
    for (source, payee), credits in state.pending.items():
        if source == payer:
            waiting = sum(c.amount for c in credits.values() if c.deposit)
            if waiting:
                found.setdefault(payee, [0, 0])[0] += waiting
    return sorted(((p, d, c) for p, (d, c) in found.items()), key=lambda r: str(r[0]))


def deposit_for(state: State, payer: PeerId, payee: PeerId) -> tuple[int, int]:
    """(deposited incl. deposits the payee has not acknowledged yet, claimed)."""
    channel = state.channel(payer, payee)
    credits = state.pending.get((payer, payee))
    waiting = sum(c.amount for c in credits.values() if c.deposit) if credits else 0
    return channel.deposited + waiting, channel.claimed


class Payments:
    """A provider's side of payment channels: check the receipt each request carries,
    keep the highest per payer, claim it once per epoch (LedgerAgent.claim_receipts).

    A payer is served while its highest receipt covers every request served to it (so
    concurrent requests' receipts may arrive in any order) and its deposit for us, on our
    ledger (acknowledged or not yet), covers that too. In memory: receipts not yet claimed
    are lost with a restart (what they paid for is then free)."""

    def __init__(self, agent: LedgerAgent, me: PeerId, price_per_request: int,
                 price_per_1k_items: int) -> None:
        self._agent = agent
        self._me = me
        self._price = (price_per_request, price_per_1k_items)
        self.latest: dict[PeerId, Receipt] = {}
        self._served: dict[PeerId, int] = {}

    @property
    def charging(self) -> bool:
        return any(self._price)

    def charge(self, params: Mapping[str, str], items: int) -> None:
        """Take payment for one request of `items` items, or raise PermissionDeniedError."""
        price = charge(*self._price, items)
        if price == 0:
            return
        try:
            receipt = receipt_from_params(params, self._me)
            if receipt is not None:
                check_receipt(self._agent.genesis.chain, receipt)
        except RejectedError as exc:
            raise PermissionDeniedError(f"payment refused: {exc}") from exc
        if receipt is None:
            raise PermissionDeniedError(
                f"this provider charges {price} per request: pay with a receipt "
                "(AsyncClient(..., wallet=KEY))")
        payer = receipt.payer
        state = self._agent.state
        deposited, claimed = deposit_for(state, payer, self._me)
        latest = self.latest.get(payer)
        best = max(receipt.cumulative, latest.cumulative if latest is not None else 0)
        owed = max(self._served.get(payer, 0), claimed) + price
        if best < owed:
            raise PermissionDeniedError(f"receipt total {best} does not cover the {owed} owed "
                                        f"with this request")
        if owed > deposited:
            raise PermissionDeniedError(f"{payer} has {deposited} deposited for this "
                                        f"provider here, {owed} would be owed")
        self._served[payer] = owed
        if latest is None or receipt.cumulative > latest.cumulative:
            self.latest[payer] = receipt

    def claimable(self) -> list[Receipt]:
        state = self._agent.state
        return [r for p, r in sorted(self.latest.items(), key=lambda kv: str(kv[0]))
                if r.cumulative > state.channel(p, self._me).claimed]


def involves(tx: Transaction, peer: PeerId) -> bool:
    body = tx.body
    if tx.sender == peer:
        return True
    if isinstance(body, Transfer):
        return body.to == peer
    if isinstance(body, Deposit):
        return body.payee == peer
    if isinstance(body, Claim):
        return body.receipt.payer == peer
    if isinstance(body, Tick):
        return any(r.worker == peer for r in body.reports)
    return False


def summary(tx: Transaction) -> str:
    """One line for people."""
    body = tx.body
    if isinstance(body, Transfer):
        return f"transfer {body.amount} to {body.to}"
    if isinstance(body, Bond):
        return f"bond {body.amount}"
    if isinstance(body, Unbond):
        return f"unbond {body.amount}"
    if isinstance(body, Deposit):
        return f"deposit {body.amount} for {body.payee}"
    if isinstance(body, Claim):
        return f"claim receipt of {body.receipt.cumulative} from {body.receipt.payer}"
    return f"tick epoch {tx.seq}: " + ", ".join(
        f"{r.worker.short} served {r.served}" for r in body.reports)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """swarm.v1.LedgerService over a LedgerAgent."""

    def __init__(self, agent: LedgerAgent) -> None:
        self._agent = agent

    async def Submit(self, request: ledger_pb2.SubmitRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.SubmitReply:
        try:
            outcome = await self._agent.submit(bytes(request.wire))
        except SwarmError as exc:
            await context.abort(status_of(exc), str(exc))
            raise AssertionError("unreachable") from exc
        return ledger_pb2.SubmitReply(outcome=outcome.value)

    async def GetAccount(self, request: ledger_pb2.GetAccountRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.AccountReply:
        peer = await _peer(request.peer, context)
        state = self._agent.state
        account = state.account(peer)
        params = state.params
        pending = [ledger_pb2.PendingCredit(source=str(source), seq=seq, amount=credit.amount,
                                            deposit=credit.deposit)
                   for source, seq, credit in state.pending_for(peer)]
        return ledger_pb2.AccountReply(
            peer=str(peer), balance=account.balance, bonded=account.bonded,
            unbonding=account.unbonding_total,
            reputation_ppm=state.reputation_of(peer),
            seq=account.seq, epoch=state.epoch, equivocations=account.equivocations,
            faults=account.faults,
            eligible=eligible(state, peer, params.min_stake), min_stake=params.min_stake,
            pending=pending[:1024], chain=state.chain,
            channels=[ledger_pb2.PaymentChannel(payee=str(payee), deposited=deposited,
                                                claimed=claimed)
                      for payee, deposited, claimed in channels_of(state, peer)[:1024]])

    async def GetHistory(self, request: ledger_pb2.GetHistoryRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.HistoryReply:
        peer = await _peer(request.peer, context)
        found, position = self._agent.history(peer, request.start, request.limit)
        return ledger_pb2.HistoryReply(next=position, entries=[
            ledger_pb2.HistoryEntry(position=pos, sender=str(stx.tx.sender), seq=stx.tx.seq,
                                    kind=stx.tx.kind.name.lower(), summary=summary(stx.tx))
            for pos, stx in found])

    async def GetSupply(self, request: ledger_pb2.GetSupplyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.SupplyReply:
        state = self._agent.state
        return ledger_pb2.SupplyReply(
            supply=state.supply, genesis_supply=state.genesis_supply, minted=state.minted,
            burned=state.burned, bonded=sum(a.bonded for a in state.accounts.values()),
            epoch=state.epoch, log_length=len(self._agent.ledger.log), chain=state.chain,
            buffered=self._agent.ledger.buffered)

    async def GetLog(self, request: ledger_pb2.GetLogRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.LogReply:
        entries, length = self._agent.log_page(request.start, request.limit)
        faults = self._agent.fault_page(request.limit) if request.faults else []
        return ledger_pb2.LogReply(entries=entries, length=length, faults=faults)


    async def GetEligible(self, request: ledger_pb2.GetEligibleRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> ledger_pb2.EligibleReply:
        if len(request.peers) > 4096:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "at most 4096 peers per call")
        state = self._agent.state
        threshold = max(state.params.min_stake, request.min_stake)
        peers = [await _peer(text, context) for text in request.peers]
        return ledger_pb2.EligibleReply(
            eligible=[str(p) for p in peers if eligible(state, p, threshold)],
            min_stake=threshold, bonded=[state.stake(p) for p in peers])


async def _peer(text: str, context: grpc.aio.ServicerContext[Any, Any]) -> PeerId:
    try:
        return PeerId(text)
    except SwarmError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a peer id: {text!r}")
        raise AssertionError("unreachable") from exc


def add_ledger_service(agent: LedgerAgent, server: grpc.aio.Server) -> None:
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(agent), server)

