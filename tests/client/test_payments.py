"""Paying for work with real processes: a client with a wallet deposits and signs a growing
receipt per request; the provider refuses unpaid requests, claims once per epoch, and its
balance grows by exactly what the receipts say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swarm import AsyncClient
from swarm._errors import PermissionDeniedError
from swarm.protocol import Identity
from swarm.staking import Genesis, GenesisAccount, Params
from tests.node.test_daemon import SWARM, run
from tests.node.test_ledger_daemon import daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

PRICE = 7


async def account(node: str, peer: Identity) -> dict[str, object]:
    code, out, err = await run(*SWARM, "stake", "status", str(peer.peer_id), "--node", node,
                               "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def test_a_paying_clients_provider_claims_exactly_its_receipts(tmp_path: Path) -> None:
    ledger_dir, provider_dir = tmp_path / "ledger", tmp_path / "provider"
    provider = Identity.load_or_create(provider_dir / "identity.key")
    wallet = Identity.load_or_create(tmp_path / "wallet.key")
    keeper = tmp_path / "keeper.key"
    timekeeper = Identity.load_or_create(keeper)
    genesis = tmp_path / "genesis.toml"
    genesis.write_text(Genesis(Params(name="pay-net", timekeeper=timekeeper.peer_id,
                                      epoch_seconds=2, min_stake=100), (
        GenesisAccount(provider.peer_id, balance=0, bonded=1000),
        GenesisAccount(wallet.peer_id, balance=50_000))).to_toml())
    async with daemon(ledger_dir, "--genesis", str(genesis), "--timekeeper-key",
                      str(keeper)) as ledger, \
            daemon(provider_dir, "--genesis", str(genesis), "--serve", "builtin/mlp",
                   "--price-per-request", str(PRICE), "--bootstrap", ledger.p2p):
        x = np.zeros((1, 512), dtype=np.float32)
        unpaid = AsyncClient(bootstrap=[ledger.p2p], timeout=15)
        paying = AsyncClient(bootstrap=[ledger.p2p], timeout=15, wallet=wallet, deposit=1000)
        try:
            await unpaid.start()
            await wait_until(lambda: unpaid.router.view.providers(
                unpaid.router.resolve("builtin/mlp")), timeout=30, what="the provider")
            with pytest.raises(PermissionDeniedError, match="charges 7 per request"):
                await unpaid.infer("builtin/mlp", x)
            for _ in range(10):
                await paying.infer("builtin/mlp", x)
            assert paying._payer is not None
            assert paying._payer.cumulative == {provider.peer_id: 10 * PRICE}

            async def claimed() -> bool:
                return (await account(ledger.grpc, provider))["balance"] == str(10 * PRICE)

            await wait_until(claimed, timeout=30, what="the provider's claim on the ledger")
            payer = await account(ledger.grpc, wallet)
            assert payer["balance"] == str(50_000 - 1000)  # the deposit, locked
        finally:
            await unpaid.close()
            await paying.close()
