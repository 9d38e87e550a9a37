"""Staking: the ledger of balances, stake, receipts and slashing, without consensus.

_tx.py       transactions (transfer, bond, unbond, deposit, claim, tick), receipts,
             equivocation evidence; canonical wire form; Ed25519 signing (domain-separated)
_genesis.py  Genesis and Params from a TOML file; the chain id (hash of the genesis)
_state.py    State (frozen, immutables.Map inside), Account, Channel, Credit; canonical encoding
_fault.py    FaultEvidence: wrong-result evidence (offender's signed outputs outvoted by two
             witnesses within the model's tolerance), its wire form and check()
_eligible.py eligible(): who routing may send work to, from the ledger alone
_apply.py    the pure state machine: apply / settle / void / waiting_on, and which rules come
             from which paper (Guerraoui et al. PODC 2019, FastPay, Astro)
_rewards.py  rewards(): the per-epoch inflation rule, the only mint
_ledger.py   Ledger: verify, buffer until ready, settle, detect equivocations, replay;
             MemoryLog; replay()
_store.py    LedgerStore: SQLite (WAL) append-only log + snapshot; rebuild from the log
_payments.py what a request costs; receipts as request parameters
_wire.py     decode_wire / wire_of: every ledger item on the wire, told apart by its magic
             (transactions, evidence; other kinds `register_wire` theirs)
_errors.py   LedgerError and its subclasses (tree in its docstring)
"""

from swarm.staking._apply import apply, fault, settle, void, waiting_on
from swarm.staking._eligible import eligible
from swarm.staking._errors import (
    AlreadyClaimedError,
    BadSignatureError,
    BufferFullError,
    GenesisError,
    InsufficientStakeError,
    InvalidEvidenceError,
    LedgerCorruptError,
    LedgerError,
    MalformedTransactionError,
    MissingDependencyError,
    NoDepositError,
    NotReadyError,
    OverdraftError,
    ReceiptError,
    RejectedError,
    SequenceGapError,
    StaleSequenceError,
    TransactionFailedError,
)
from swarm.staking._fault import (
    FAULT_MAGIC,
    MAX_FAULT_BYTES,
    FaultEvidence,
    FaultKey,
    SignedOutputs,
    signed_outputs,
)
from swarm.staking._genesis import PPM, Genesis, GenesisAccount, Params, SlashingTable
from swarm.staking._ledger import Ledger, LedgerConfig, MemoryLog, Outcome, TransactionLog, replay
from swarm.staking._payments import (
    PAYER_PARAM,
    RECEIPT_PARAM,
    charge,
    receipt_from_params,
    receipt_params,
)
from swarm.staking._rewards import Rewards, rewards
from swarm.staking._state import Account, Channel, Credit, State
from swarm.staking._store import LedgerStore
from swarm.staking._tx import (
    RECEIPT_DOMAIN,
    TX_DOMAIN,
    Ack,
    Body,
    Bond,
    Claim,
    Deposit,
    Evidence,
    Kind,
    Receipt,
    SignedTransaction,
    Tick,
    Transaction,
    Transfer,
    Unbond,
    WorkReport,
    check_receipt,
    decode_transaction,
    sign,
    sign_receipt,
)
from swarm.staking._wire import (
    EVIDENCE_MAGIC,
    MAX_WIRE_BYTES,
    TX_MAGIC,
    decode_wire,
    wire_of,
)
from swarm.staking._wire import register as register_wire

__all__ = [
    "EVIDENCE_MAGIC",
    "FAULT_MAGIC",
    "MAX_FAULT_BYTES",
    "MAX_WIRE_BYTES",
    "PAYER_PARAM",
    "PPM",
    "RECEIPT_DOMAIN",
    "RECEIPT_PARAM",
    "TX_DOMAIN",
    "TX_MAGIC",
    "Account",
    "Ack",
    "AlreadyClaimedError",
    "BadSignatureError",
    "Body",
    "Bond",
    "BufferFullError",
    "Channel",
    "Claim",
    "Credit",
    "Deposit",
    "Evidence",
    "FaultEvidence",
    "FaultKey",
    "Genesis",
    "GenesisAccount",
    "GenesisError",
    "InsufficientStakeError",
    "InvalidEvidenceError",
    "Kind",
    "Ledger",
    "LedgerConfig",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerStore",
    "MalformedTransactionError",
    "MemoryLog",
    "MissingDependencyError",
    "NoDepositError",
    "NotReadyError",
    "Outcome",
    "OverdraftError",
    "Params",
    "Receipt",
    "ReceiptError",
    "RejectedError",
    "Rewards",
    "SequenceGapError",
    "SignedOutputs",
    "SignedTransaction",
    "SlashingTable",
    "StaleSequenceError",
    "State",
    "Tick",
    "Transaction",
    "TransactionFailedError",
    "TransactionLog",
    "Transfer",
    "Unbond",
    "WorkReport",
    "apply",
    "charge",
    "check_receipt",
    "decode_transaction",
    "decode_wire",
    "eligible",
    "fault",
    "receipt_from_params",
    "receipt_params",
    "register_wire",
    "replay",
    "rewards",
    "settle",
    "sign",
    "sign_receipt",
    "signed_outputs",
    "void",
    "waiting_on",
    "wire_of",
]
