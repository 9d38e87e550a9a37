"""What a request costs and how a payment travels with it (pure helpers; the ledger rules for
deposits and claims are in _apply).

A paying client signs, with each request to a provider, a receipt for the running total it
owes that provider (swarm.staking.sign_receipt): `cumulative` grows by the request's price.
Two request parameters carry it:

    swarm_payer    the payer's peer id
    swarm_receipt  "<cumulative>:<signature hex>"

The provider keeps the highest receipt per payer and serves while that covers every request
it served the payer (so receipts may arrive out of order), and while the payer's deposit for
it, on its own ledger, covers them too; once per epoch it claims the latest receipt.
"""

from __future__ import annotations

from collections.abc import Mapping

from swarm._types import PeerId
from swarm.staking._errors import MalformedTransactionError
from swarm.staking._tx import Receipt

__all__ = ["PAYER_PARAM", "RECEIPT_PARAM", "charge", "receipt_from_params", "receipt_params"]

PAYER_PARAM = "swarm_payer"
RECEIPT_PARAM = "swarm_receipt"


def charge(price_per_request: int, price_per_1k_items: int, items: int) -> int:
    """The price of one request of `items` items (micro-units, rounded up)."""
    return price_per_request + (items * price_per_1k_items + 999) // 1000


def receipt_params(receipt: Receipt) -> dict[str, str]:
    return {PAYER_PARAM: str(receipt.payer),
            RECEIPT_PARAM: f"{receipt.cumulative}:{receipt.signature.hex()}"}


def receipt_from_params(params: Mapping[str, str], payee: PeerId) -> Receipt | None:
    """The receipt a request carries (None: none); MalformedTransactionError if garbled.
    The signature is not checked here (swarm.staking.check_receipt)."""
    payer, text = params.get(PAYER_PARAM), params.get(RECEIPT_PARAM)
    if payer is None and text is None:
        return None
    try:
        if payer is None or text is None or len(text) > 200:
            raise ValueError("incomplete")
        total, _, signature = text.partition(":")
        cumulative = int(total)
        if not 0 < cumulative < 2**63 or len(signature) != 128:
            raise ValueError("out of range")
        return Receipt(PeerId(payer), payee, cumulative, bytes.fromhex(signature))
    except (ValueError, TypeError) as exc:
        raise MalformedTransactionError(f"garbled payment parameters: {exc}") from exc
