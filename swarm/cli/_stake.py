"""`swarm stake ...` and `swarm ledger ...`: the staking ledger through a node.

Every command talks to one node's swarm.v1.LedgerService: `--node HOST:PORT`, else the node
running with `--data-dir` (its node.json names its address). Transactions (`bond`, `unbond`,
`transfer`) are signed here with the identity in `--data-dir` (a provider's node key) and
acknowledge every credit waiting for the account, so rewards, transfers and deposits
received become spendable with the next transaction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swarm._errors import SwarmError

__all__ = ["add_parsers", "run"]


def _reach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the identity (and local node) to use, as for swarm-node "
                             "(default: $SWARM_DATA_DIR or ~/.local/share/swarm-node)")
    parser.add_argument("--node", metavar="HOST:PORT",
                        help="the node to ask (default: the node running with --data-dir)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


def add_parsers(sub: Any) -> None:
    stake = sub.add_parser("stake", help="bond and unbond stake, see your stake")
    ssub = stake.add_subparsers(dest="stake_command", required=True)
    p = ssub.add_parser("bond", help="bond AMOUNT of your balance as stake")
    p.add_argument("amount", type=int)
    _reach(p)
    p = ssub.add_parser("unbond", help="start unbonding AMOUNT (released after the genesis "
                                       "delay; slashable until then)")
    p.add_argument("amount", type=int)
    _reach(p)
    p = ssub.add_parser("status", help="balance, stake, reputation, eligibility")
    p.add_argument("account", nargs="?", help="peer id (default: the identity in --data-dir)")
    _reach(p)

    ledger = sub.add_parser("ledger", help="balances, history and supply of the ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    p = lsub.add_parser("balance", help="an account's balance and stake")
    p.add_argument("account", nargs="?", help="peer id (default: the identity in --data-dir)")
    _reach(p)
    p = lsub.add_parser("history", help="transactions that involve an account")
    p.add_argument("account", nargs="?", help="peer id (default: the identity in --data-dir)")
    p.add_argument("--limit", type=int, default=100, help="most entries shown")
    _reach(p)
    p = lsub.add_parser("supply", help="supply, minted, burned, bonded, epoch")
    _reach(p)
    p = lsub.add_parser("genesis", help="write a genesis file for a new network")
    p.add_argument("out", type=Path, help="the genesis file to write (TOML)")
    p.add_argument("--name", default="swarm-dev", help="network name (default: swarm-dev)")
    p.add_argument("--timekeeper-key", type=Path, required=True, metavar="FILE",
                   help="the timekeeper's identity key (created when missing)")
    p.add_argument("--account", action="append", default=[], metavar="WHO=BALANCE[:BONDED]",
                   help="an opening account (repeatable); WHO is a peer id or a data dir "
                        "(its identity is created when missing)")
    for flag, default, what in (("--epoch-seconds", 60, "seconds per epoch"),
                                ("--min-stake", 0, "bonded stake routing needs"),
                                ("--unbonding-epochs", 7, "epochs before unbonded stake is "
                                                          "released"),
                                ("--inflation-ppm", 0, "minted per epoch, ppm of supply")):
        p.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")
    p = lsub.add_parser("transfer", help="send AMOUNT to a peer")
    p.add_argument("to", help="peer id")
    p.add_argument("amount", type=int)
    _reach(p)


def run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[(args.command, getattr(args, "stake_command", None)
                          or args.ledger_command)](args)
    except (SwarmError, OSError) as exc:
        print(f"swarm: {exc}", file=sys.stderr)
        return 1


def _data_dir(args: argparse.Namespace) -> Path:
    from swarm.node import load_config

    return load_config(flags={"data_dir": args.data_dir}).data_dir.expanduser()


def _address(args: argparse.Namespace) -> str:
    if args.node:
        return str(args.node)
    state = _data_dir(args) / "node.json"
    if not state.exists():
        raise SwarmError(f"no node runs with data dir {state.parent} ({state} is missing); "
                         "give --node HOST:PORT or --data-dir")
    return str(json.loads(state.read_text())["grpc"])


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    import grpc

    from swarm._proto.swarm.v1 import ledger_pb2_grpc
    from swarm.routing import error_from_rpc

    address = _address(args)
    with grpc.insecure_channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise SwarmError(f"the node at {address} keeps no ledger (start it with "
                                 "--genesis)") from None
            raise error_from_rpc(exc, address) from None


def _account(args: argparse.Namespace, peer: str) -> Any:
    from swarm._proto.swarm.v1 import ledger_pb2

    return _call(args, "GetAccount", ledger_pb2.GetAccountRequest(peer=peer))


def _print_account(args: argparse.Namespace, reply: Any) -> int:
    from google.protobuf import json_format

    if args.json:
        print(json_format.MessageToJson(reply, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True))
        return 0
    eligible = "yes" if reply.eligible else "no"
    print(f"account     {reply.peer}")
    print(f"balance     {reply.balance}")
    print(f"bonded      {reply.bonded}")
    print(f"unbonding   {reply.unbonding}")
    print(f"reputation  {reply.reputation_ppm / 1e4:.2f}%")
    print(f"eligible    {eligible} (network minimum stake {reply.min_stake})")
    if reply.equivocations:
        print(f"slashed     {reply.equivocations} equivocation(s)")
    waiting = sum(c.amount for c in reply.pending)
    if waiting:
        print(f"incoming    {waiting} (spendable after your next transaction)")
    print(f"epoch       {reply.epoch}")
    return 0


def _identity(args: argparse.Namespace) -> Any:
    from swarm.protocol import Identity

    path = _data_dir(args) / "identity.key"
    if not path.exists():
        raise SwarmError(f"no identity at {path} (start swarm-node with --data-dir once, or "
                         "give the right --data-dir)")
    return Identity.load(path)


def _send(args: argparse.Namespace, body: Any) -> int:
    """Sign `body` as the identity's next transaction and submit it."""
    from swarm._proto.swarm.v1 import ledger_pb2
    from swarm._types import PeerId
    from swarm.staking import Ack, Transaction, sign

    if args.amount <= 0:
        raise SwarmError("the amount must be a positive integer")
    identity = _identity(args)
    account = _account(args, str(identity.peer_id))
    latest: dict[str, int] = {}
    for credit in account.pending:
        latest[credit.source] = max(latest.get(credit.source, 0), credit.seq)
    acks = tuple(Ack(PeerId(source), seq) for source, seq in sorted(latest.items())[:64])
    tx = Transaction(bytes(account.chain), identity.peer_id, account.seq + 1, body,
                     epoch=account.epoch, acks=acks)
    reply = _call(args, "Submit", ledger_pb2.SubmitRequest(wire=sign(tx, identity).wire))
    if args.json:
        print(json.dumps({"outcome": reply.outcome, "seq": tx.seq}))
    else:
        print(f"{reply.outcome}: {type(body).__name__.lower()} {args.amount} "
              f"(transaction {tx.seq} of {identity.peer_id})")
    return 0 if reply.outcome in ("applied", "buffered", "duplicate") else 1


def _bond(args: argparse.Namespace) -> int:
    from swarm.staking import Bond

    return _send(args, Bond(args.amount))


def _unbond(args: argparse.Namespace) -> int:
    from swarm.staking import Unbond

    return _send(args, Unbond(args.amount))


def _transfer(args: argparse.Namespace) -> int:
    from swarm._types import PeerId
    from swarm.staking import Transfer

    return _send(args, Transfer(PeerId(args.to), args.amount))


def _status(args: argparse.Namespace) -> int:
    peer = args.account or str(_identity(args).peer_id)
    return _print_account(args, _account(args, peer))


def _balance(args: argparse.Namespace) -> int:
    return _print_account(args, _account(args, _who(args)))


def _who(args: argparse.Namespace) -> str:
    return str(args.account or _identity(args).peer_id)


def _genesis(args: argparse.Namespace) -> int:
    from swarm._types import PeerId
    from swarm.protocol import Identity
    from swarm.staking import Genesis, GenesisAccount, Params

    accounts = []
    for spec in args.account:
        who, sep, amounts = spec.partition("=")
        balance, _, bonded = amounts.partition(":")
        if not sep or not balance.isdigit() or (bonded and not bonded.isdigit()):
            raise SwarmError(f"--account {spec!r}: use WHO=BALANCE or WHO=BALANCE:BONDED")
        peer = PeerId(who) if who.startswith("12D3") else \
            Identity.load_or_create(Path(who).expanduser() / "identity.key").peer_id
        accounts.append(GenesisAccount(peer, int(balance), int(bonded or 0)))
    keeper = Identity.load_or_create(args.timekeeper_key.expanduser())
    genesis = Genesis(Params(name=args.name, timekeeper=keeper.peer_id,
                             epoch_seconds=args.epoch_seconds, min_stake=args.min_stake,
                             unbonding_epochs=args.unbonding_epochs,
                             inflation_ppm=args.inflation_ppm), tuple(accounts))
    args.out.write_text(genesis.to_toml())
    print(f"wrote {args.out}: network {args.name}, chain {genesis.chain.hex()[:16]}, "
          f"supply {genesis.supply}, timekeeper {keeper.peer_id}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from swarm._proto.swarm.v1 import ledger_pb2

    account = _who(args)
    rows: list[Any] = []
    start, end = 0, _log_length(args)
    while len(rows) < args.limit and start < end:  # each page scans a bounded stretch
        reply = _call(args, "GetHistory", ledger_pb2.GetHistoryRequest(
            peer=account, start=start, limit=min(1000, args.limit - len(rows))))
        rows += reply.entries
        if reply.next <= start:
            break
        start = reply.next
    if args.json:
        print(json.dumps([{"position": r.position, "sender": r.sender, "seq": r.seq,
                           "kind": r.kind, "summary": r.summary} for r in rows]))
        return 0
    for r in rows:
        print(f"{r.position:>8}  {r.sender[:16]}..#{r.seq:<5} {r.summary}")
    return 0


def _log_length(args: argparse.Namespace) -> int:
    from swarm._proto.swarm.v1 import ledger_pb2

    return int(_call(args, "GetSupply", ledger_pb2.GetSupplyRequest()).log_length)


def _supply(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from swarm._proto.swarm.v1 import ledger_pb2

    reply = _call(args, "GetSupply", ledger_pb2.GetSupplyRequest())
    if args.json:
        fields = json_format.MessageToDict(reply, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)
        fields.pop("chain", None)
        print(json.dumps({k: int(v) for k, v in fields.items()} | {"chain": reply.chain.hex()}))
        return 0
    print(f"supply      {reply.supply}  (genesis {reply.genesis_supply} + minted "
          f"{reply.minted} - burned {reply.burned})")
    print(f"bonded      {reply.bonded}")
    print(f"epoch       {reply.epoch}")
    print(f"log         {reply.log_length} transactions ({reply.buffered} waiting)")
    print(f"chain       {reply.chain.hex()}")
    return 0


_COMMANDS = {
    ("stake", "bond"): _bond, ("stake", "unbond"): _unbond, ("stake", "status"): _status,
    ("ledger", "balance"): _balance, ("ledger", "history"): _history,
    ("ledger", "supply"): _supply, ("ledger", "transfer"): _transfer,
    ("ledger", "genesis"): _genesis,
}
