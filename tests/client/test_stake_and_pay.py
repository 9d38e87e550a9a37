"""Routing by stake and paying for work, with real processes (one small swarm):

- the SDK routes only to providers eligible on the ledger of the node it joined through,
  never on a provider's own word: an unstaked provider, running a forged ledger in which
  it is rich and bonded, gets no traffic; `min_stake=` per call raises the bar;
- a client with a wallet deposits and signs a growing receipt per request; the provider
  refuses unpaid requests, claims once per epoch, and its balance grows by exactly what
  the receipts say.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swarm import AsyncClient
from swarm._errors import NoProviderError, PermissionDeniedError
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


async def test_only_staked_providers_get_work_and_paid_work_is_claimed_exactly(
        tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("ledger", "staked", "unstaked")}
    ids = {name: Identity.load_or_create(d / "identity.key") for name, d in dirs.items()}
    wallet = Identity.load_or_create(tmp_path / "wallet.key")
    keeper = tmp_path / "keeper.key"
    params = Params(name="stake-net", timekeeper=Identity.load_or_create(keeper).peer_id,
                    epoch_seconds=2, min_stake=500)
    genesis = tmp_path / "genesis.toml"
    genesis.write_text(Genesis(params, (
        GenesisAccount(ids["staked"].peer_id, balance=0, bonded=1000),
        GenesisAccount(ids["unstaked"].peer_id, balance=1000),
        GenesisAccount(wallet.peer_id, balance=50_000))).to_toml())
    forged = tmp_path / "forged.toml"
    forged.write_text(Genesis(params, (
        GenesisAccount(ids["unstaked"].peer_id, balance=0, bonded=10**6),)).to_toml())
    async with daemon(dirs["ledger"], "--genesis", str(genesis), "--timekeeper-key",
                      str(keeper)) as ledger, \
            daemon(dirs["staked"], "--genesis", str(genesis), "--serve", "builtin/mlp",
                   "--price-per-request", str(PRICE), "--bootstrap", ledger.p2p), \
            daemon(dirs["unstaked"], "--genesis", str(forged), "--serve", "builtin/mlp",
                   "--bootstrap", ledger.p2p):
        x = np.zeros((1, 512), dtype=np.float32)
        unpaid = AsyncClient(bootstrap=[ledger.p2p], timeout=15)
        paying = AsyncClient(bootstrap=[ledger.p2p], timeout=15, wallet=wallet, deposit=1000)
        try:
            await paying.start()
            await wait_until(lambda: len(paying.router.view.providers(
                paying.router.resolve("builtin/mlp"))) == 2, timeout=30,
                what="both providers in the view")
            peers = set()
            for _ in range(10):
                _, routed = await paying.infer_routed("builtin/mlp", x)
                peers.add(routed.peer)
            assert peers == {ids["staked"].peer_id}
            assert paying._payer is not None
            assert paying._payer.cumulative == {ids["staked"].peer_id: 10 * PRICE}
            with pytest.raises(NoProviderError, match="stake"):
                await paying.infer("builtin/mlp", x, min_stake=5000)
            with pytest.raises(PermissionDeniedError, match="charges 7 per request"):
                await unpaid.infer("builtin/mlp", x)

            async def claimed() -> bool:
                status = await account(ledger.grpc, ids["staked"])
                return status["balance"] == str(10 * PRICE)

            await wait_until(claimed, timeout=30, what="the provider's claim on the ledger")
            payer = await account(ledger.grpc, wallet)
            assert payer["balance"] == str(50_000 - 1000)  # the deposit, locked
        finally:
            await unpaid.close()
            await paying.close()
