"""Genesis: the network's parameters and opening balances, read from TOML.

The chain id every transaction signs is the SHA-256 of the genesis' canonical encoding
(sorted-key JSON), so a transaction made for one network is worthless on another, and two
nodes with different rules cannot mistake each other's ledgers for their own.

    name = "swarm-dev"
    timekeeper = "12D3KooW..."      # the key whose Tick transactions start epochs
    unbonding_epochs = 7
    inflation_ppm = 0               # per-epoch mint (ppm of genesis supply + minted)
    reputation_alpha_ppm = 200000
    initial_reputation_ppm = 500000
    epoch_seconds = 60              # the timekeeper ticks this often
    min_stake = 0                   # bonded stake routing needs by default

    [slashing]
    equivocation_ppm = 500000       # share of bonded + unbonding stake burned
    wrong_result_ppm = 100000       # the same, per proven wrong result (once per offence)
    wrong_result_reputation_ppm = 250000
    witness_min_bond = 1            # least stake of each witness of wrong-result evidence
    min_rtol_ppb = 1000             # tolerance bounds evidence may use (parts per billion)
    min_atol_ppb = 100
    max_rtol_ppb = 100000000
    max_atol_ppb = 100000000

    [[accounts]]
    peer = "12D3KooW..."
    balance = 1000000
    bonded = 0
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from swarm._errors import InvalidReferenceError
from swarm._types import PeerId
from swarm.protocol import public_key_of_peer
from swarm.staking._errors import GenesisError

__all__ = ["MAX_SUPPLY", "PPM", "Genesis", "GenesisAccount", "Params", "SlashingTable"]

# Parts per million: every rate is an integer ppm, so every node rounds identically.
PPM = 1_000_000
# Amounts travel as unsigned 64-bit integers; genesis supply plus everything ever minted
# stays below 2**63, so no sum of holdings can overflow the wire format.
MAX_SUPPLY = 2**62


@dataclass(frozen=True, slots=True)
class SlashingTable:
    """Share of an offender's bonded and unbonding stake burned per offense (ppm), and the
    rules wrong-result evidence must meet (swarm.staking._fault).

    Slashed stake is burned, never paid to the reporter: evidence names no reporter that
    anyone signed for (whoever relays it could claim the reward), and a reward would pay two
    colluding staked providers for framing a third. Burning leaves a framer only costs."""

    # Two different transactions signed with one sequence number.
    equivocation_ppm: int = 500_000
    # Signed outputs outvoted by two other providers beyond the model's tolerance.
    wrong_result_ppm: int = 100_000
    # Reputation (ppm) each proven wrong result takes off the offender's reputation.
    wrong_result_reputation_ppm: int = 250_000
    # Least bonded stake each witness of wrong-result evidence holds (on the judging node).
    witness_min_bond: int = 1
    # Bounds of the tolerance evidence may use, parts per billion: the floor keeps honest
    # float noise from ever being a fault; the cap keeps witnesses from agreeing loosely.
    min_rtol_ppb: int = 1_000
    min_atol_ppb: int = 100
    max_rtol_ppb: int = 100_000_000
    max_atol_ppb: int = 100_000_000


@dataclass(frozen=True, slots=True)
class Params:
    """The rules every node of one network applies (part of the genesis and its chain id)."""

    # Name of the network, for people; the chain id, not the name, tells networks apart.
    name: str
    # The only key whose Tick transactions start epochs: its sequence number n starts epoch n.
    timekeeper: PeerId
    # Epochs between an unbond and the release of its stake to the spendable balance.
    unbonding_epochs: int = 7
    slashing: SlashingTable = field(default_factory=SlashingTable)
    # Mint per epoch, ppm of (genesis supply + minted so far); 0 mints nothing.
    inflation_ppm: int = 0
    # Weight of an epoch's reliability in a worker's reputation (an EWMA), ppm.
    reputation_alpha_ppm: int = 200_000
    # Reputation of a worker the first time a tick reports it, ppm.
    initial_reputation_ppm: int = 500_000
    # Seconds between the timekeeper's ticks (an epoch's length; nodes do not check it).
    epoch_seconds: int = 60
    # Bonded stake a provider needs to be routed to by default (clients may ask for more).
    min_stake: int = 0

    def __post_init__(self) -> None:
        _key_of(self.timekeeper, "timekeeper")
        _check_int(self.unbonding_epochs, "unbonding_epochs", 0, 1 << 32)
        for f in fields(SlashingTable):
            high = PPM if f.name.endswith("_ppm") else MAX_SUPPLY
            _check_int(getattr(self.slashing, f.name), f"slashing.{f.name}", 0, high)
        # More than doubling the supply per epoch is a typo, not a policy.
        _check_int(self.inflation_ppm, "inflation_ppm", 0, PPM)
        _check_int(self.reputation_alpha_ppm, "reputation_alpha_ppm", 0, PPM)
        _check_int(self.initial_reputation_ppm, "initial_reputation_ppm", 0, PPM)
        _check_int(self.epoch_seconds, "epoch_seconds", 1, 1 << 32)
        _check_int(self.min_stake, "min_stake", 0, MAX_SUPPLY)


@dataclass(frozen=True, slots=True)
class GenesisAccount:
    """An account's opening spendable balance and bonded stake."""

    peer: PeerId
    balance: int = 0
    bonded: int = 0


@dataclass(frozen=True, slots=True)
class Genesis:
    """Parameters and opening accounts. Invalid content raises GenesisError."""

    params: Params
    # Sorted by peer id, one entry per peer.
    accounts: tuple[GenesisAccount, ...] = ()
    # SHA-256 of `canonical()`: signed into every transaction and receipt.
    chain: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        peers = [a.peer for a in self.accounts]
        if len(set(peers)) != len(peers):
            raise GenesisError("genesis lists an account twice")
        for account in self.accounts:
            _key_of(account.peer, "account")
            _check_int(account.balance, f"balance of {account.peer}", 0, MAX_SUPPLY)
            _check_int(account.bonded, f"bonded of {account.peer}", 0, MAX_SUPPLY)
        if self.params.timekeeper in peers:
            raise GenesisError("the timekeeper only ticks: it cannot hold an account")
        if self.supply > MAX_SUPPLY:
            raise GenesisError(f"genesis supply {self.supply} exceeds {MAX_SUPPLY}")
        ordered = tuple(sorted(self.accounts, key=lambda a: a.peer.value))
        object.__setattr__(self, "accounts", ordered)
        object.__setattr__(self, "chain", hashlib.sha256(self.canonical()).digest())

    @property
    def supply(self) -> int:
        return sum(a.balance + a.bonded for a in self.accounts)

    def canonical(self) -> bytes:
        """The canonical encoding the chain id is the hash of."""
        return json.dumps(self._as_dict(), sort_keys=True, separators=(",", ":")).encode()

    def _as_dict(self) -> dict[str, Any]:
        p = self.params
        return {
            "name": p.name, "timekeeper": p.timekeeper.value,
            "unbonding_epochs": p.unbonding_epochs, "inflation_ppm": p.inflation_ppm,
            "reputation_alpha_ppm": p.reputation_alpha_ppm,
            "initial_reputation_ppm": p.initial_reputation_ppm,
            "epoch_seconds": p.epoch_seconds, "min_stake": p.min_stake,
            "slashing": {f.name: getattr(p.slashing, f.name) for f in fields(SlashingTable)},
            "accounts": [{"peer": a.peer.value, "balance": a.balance, "bonded": a.bonded}
                         for a in self.accounts],
        }

    def to_toml(self) -> str:
        """The genesis as a TOML file `from_toml` reads back to an equal Genesis."""
        d = self._as_dict()
        lines = [f"{k} = {json.dumps(d[k])}" for k in
                 ("name", "timekeeper", "unbonding_epochs", "inflation_ppm",
                  "reputation_alpha_ppm", "initial_reputation_ppm", "epoch_seconds",
                  "min_stake")]
        lines += ["", "[slashing]", *(f"{k} = {v}" for k, v in sorted(d["slashing"].items()))]
        for a in d["accounts"]:
            lines += ["", "[[accounts]]", f"peer = {json.dumps(a['peer'])}",
                      f"balance = {a['balance']}", f"bonded = {a['bonded']}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Genesis:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GenesisError(f"genesis is not valid TOML: {exc}") from exc
        return cls._from_dict(raw)

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            text = path.read_text()
        except OSError as exc:
            raise GenesisError(f"cannot read genesis {path}: {exc}") from exc
        return cls.from_toml(text)

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any]) -> Genesis:
        top = {f.name for f in fields(Params)} | {"accounts"}
        _no_unknown(raw, top, "genesis")
        if "name" not in raw or "timekeeper" not in raw:
            raise GenesisError("genesis needs `name` and `timekeeper`")
        slashing_raw = raw.get("slashing", {})
        if not isinstance(slashing_raw, Mapping):
            raise GenesisError("[slashing] must be a table")
        _no_unknown(slashing_raw, {f.name for f in fields(SlashingTable)}, "[slashing]")
        kwargs = {k: v for k, v in raw.items() if k not in ("accounts", "slashing", "timekeeper")}
        if not isinstance(raw["name"], str):
            raise GenesisError("name must be a string")
        params = Params(timekeeper=_peer(raw["timekeeper"], "timekeeper"),
                        slashing=SlashingTable(**slashing_raw), **kwargs)
        accounts = []
        for entry in raw.get("accounts", []):
            if not isinstance(entry, Mapping):
                raise GenesisError("each [[accounts]] entry must be a table")
            _no_unknown(entry, {"peer", "balance", "bonded"}, "[[accounts]]")
            accounts.append(GenesisAccount(peer=_peer(entry.get("peer"), "account peer"),
                                           balance=entry.get("balance", 0),
                                           bonded=entry.get("bonded", 0)))
        return cls(params=params, accounts=tuple(accounts))


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GenesisError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _peer(value: object, what: str) -> PeerId:
    if not isinstance(value, str):
        raise GenesisError(f"{what} must be a peer id string")
    try:
        return PeerId(value)
    except InvalidReferenceError as exc:
        raise GenesisError(f"{what}: {exc}") from exc


def _key_of(peer: PeerId, what: str) -> bytes:
    try:
        return public_key_of_peer(peer)
    except (InvalidReferenceError, ValueError) as exc:
        raise GenesisError(f"{what} {peer} does not inline an Ed25519 key") from exc


def _check_int(value: object, what: str, low: int, high: int) -> None:
    # bool is an int in Python; `true` in a genesis file is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise GenesisError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
