from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEligibleRequest(_message.Message):
    __slots__ = ("peers", "min_stake")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MIN_STAKE_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedScalarFieldContainer[str]
    min_stake: int
    def __init__(self, peers: _Optional[_Iterable[str]] = ..., min_stake: _Optional[int] = ...) -> None: ...

class EligibleReply(_message.Message):
    __slots__ = ("eligible", "min_stake", "bonded")
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    MIN_STAKE_FIELD_NUMBER: _ClassVar[int]
    BONDED_FIELD_NUMBER: _ClassVar[int]
    eligible: _containers.RepeatedScalarFieldContainer[str]
    min_stake: int
    bonded: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, eligible: _Optional[_Iterable[str]] = ..., min_stake: _Optional[int] = ..., bonded: _Optional[_Iterable[int]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("wire",)
    WIRE_FIELD_NUMBER: _ClassVar[int]
    wire: bytes
    def __init__(self, wire: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    def __init__(self, outcome: _Optional[str] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("peer",)
    PEER_FIELD_NUMBER: _ClassVar[int]
    peer: str
    def __init__(self, peer: _Optional[str] = ...) -> None: ...

class PendingCredit(_message.Message):
    __slots__ = ("source", "seq", "amount", "deposit")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    source: str
    seq: int
    amount: int
    deposit: bool
    def __init__(self, source: _Optional[str] = ..., seq: _Optional[int] = ..., amount: _Optional[int] = ..., deposit: _Optional[bool] = ...) -> None: ...

class AccountReply(_message.Message):
    __slots__ = ("peer", "balance", "bonded", "unbonding", "reputation_ppm", "seq", "epoch", "equivocations", "eligible", "min_stake", "pending", "chain", "channels", "faults")
    PEER_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    BONDED_FIELD_NUMBER: _ClassVar[int]
    UNBONDING_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_PPM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EQUIVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    MIN_STAKE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    peer: str
    balance: int
    bonded: int
    unbonding: int
    reputation_ppm: int
    seq: int
    epoch: int
    equivocations: int
    eligible: bool
    min_stake: int
    pending: _containers.RepeatedCompositeFieldContainer[PendingCredit]
    chain: bytes
    channels: _containers.RepeatedCompositeFieldContainer[PaymentChannel]
    faults: int
    def __init__(self, peer: _Optional[str] = ..., balance: _Optional[int] = ..., bonded: _Optional[int] = ..., unbonding: _Optional[int] = ..., reputation_ppm: _Optional[int] = ..., seq: _Optional[int] = ..., epoch: _Optional[int] = ..., equivocations: _Optional[int] = ..., eligible: _Optional[bool] = ..., min_stake: _Optional[int] = ..., pending: _Optional[_Iterable[_Union[PendingCredit, _Mapping]]] = ..., chain: _Optional[bytes] = ..., channels: _Optional[_Iterable[_Union[PaymentChannel, _Mapping]]] = ..., faults: _Optional[int] = ...) -> None: ...

class PaymentChannel(_message.Message):
    __slots__ = ("payee", "deposited", "claimed")
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    DEPOSITED_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    payee: str
    deposited: int
    claimed: int
    def __init__(self, payee: _Optional[str] = ..., deposited: _Optional[int] = ..., claimed: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("peer", "start", "limit")
    PEER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    peer: str
    start: int
    limit: int
    def __init__(self, peer: _Optional[str] = ..., start: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("position", "sender", "seq", "kind", "summary")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    position: int
    sender: str
    seq: int
    kind: str
    summary: str
    def __init__(self, position: _Optional[int] = ..., sender: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("entries", "next")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    next: int
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., next: _Optional[int] = ...) -> None: ...

class GetSupplyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SupplyReply(_message.Message):
    __slots__ = ("supply", "genesis_supply", "minted", "burned", "bonded", "epoch", "log_length", "chain", "buffered")
    SUPPLY_FIELD_NUMBER: _ClassVar[int]
    GENESIS_SUPPLY_FIELD_NUMBER: _ClassVar[int]
    MINTED_FIELD_NUMBER: _ClassVar[int]
    BURNED_FIELD_NUMBER: _ClassVar[int]
    BONDED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOG_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    supply: int
    genesis_supply: int
    minted: int
    burned: int
    bonded: int
    epoch: int
    log_length: int
    chain: bytes
    buffered: int
    def __init__(self, supply: _Optional[int] = ..., genesis_supply: _Optional[int] = ..., minted: _Optional[int] = ..., burned: _Optional[int] = ..., bonded: _Optional[int] = ..., epoch: _Optional[int] = ..., log_length: _Optional[int] = ..., chain: _Optional[bytes] = ..., buffered: _Optional[int] = ...) -> None: ...

class GetLogRequest(_message.Message):
    __slots__ = ("start", "limit", "faults")
    START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    start: int
    limit: int
    faults: bool
    def __init__(self, start: _Optional[int] = ..., limit: _Optional[int] = ..., faults: _Optional[bool] = ...) -> None: ...

class LogReply(_message.Message):
    __slots__ = ("entries", "length", "faults")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    length: int
    faults: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entries: _Optional[_Iterable[bytes]] = ..., length: _Optional[int] = ..., faults: _Optional[_Iterable[bytes]] = ...) -> None: ...
