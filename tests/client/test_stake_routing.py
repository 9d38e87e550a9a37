"""Routing by stake with real processes: the SDK routes only to providers eligible on the
ledger of the node it joined through, never on a provider's own word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swarm import AsyncClient
from swarm._errors import NoProviderError
from swarm.protocol import Identity
from swarm.staking import Genesis, GenesisAccount, Params
from tests.node.test_daemon import SWARM, run
from tests.node.test_ledger_daemon import daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


async def test_unstaked_and_falsely_staked_providers_get_no_traffic(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("ledger", "staked", "unstaked")}
    ids = {name: Identity.load_or_create(d / "identity.key") for name, d in dirs.items()}
    timekeeper = Identity.load_or_create(tmp_path / "timekeeper.key")
    params = Params(name="stake-net", timekeeper=timekeeper.peer_id, min_stake=500)
    genesis = tmp_path / "genesis.toml"
    genesis.write_text(Genesis(params, (
        GenesisAccount(ids["staked"].peer_id, balance=0, bonded=1000),
        GenesisAccount(ids["unstaked"].peer_id, balance=1000))).to_toml())
    # The unstaked provider runs a ledger of its own making, in which it is rich and bonded.
    forged = tmp_path / "forged.toml"
    forged.write_text(Genesis(params, (
        GenesisAccount(ids["unstaked"].peer_id, balance=0, bonded=10**6),)).to_toml())
    async with daemon(dirs["ledger"], "--genesis", str(genesis)) as ledger, \
            daemon(dirs["staked"], "--genesis", str(genesis), "--serve", "builtin/mlp",
                   "--bootstrap", ledger.p2p), \
            daemon(dirs["unstaked"], "--genesis", str(forged), "--serve", "builtin/mlp",
                   "--bootstrap", ledger.p2p):
        client = AsyncClient(bootstrap=[ledger.p2p], timeout=15)
        try:
            await client.start()
            await wait_until(lambda: len(client.router.view.providers(
                client.router.resolve("builtin/mlp"))) == 2, timeout=30,
                what="both providers in the view")
            x = np.zeros((1, 512), dtype=np.float32)
            peers = set()
            for _ in range(12):
                _, routed = await client.infer_routed("builtin/mlp", x)
                peers.add(str(routed.peer))
            assert peers == {str(ids["staked"].peer_id)}
            with pytest.raises(NoProviderError, match="stake"):
                await client.infer("builtin/mlp", x, min_stake=5000)
            # Once the unstaked provider bonds on the real ledger, it is routed to as well.
            code, _, err = await run(*SWARM, "stake", "bond", "600", "--data-dir",
                                     str(dirs["unstaked"]), "--node", ledger.grpc)
            assert code == 0, err

            async def both_used() -> bool:
                for _ in range(8):
                    _, routed = await client.infer_routed("builtin/mlp", x)
                    peers.add(str(routed.peer))
                return len(peers) == 2

            await wait_until(both_used, timeout=30, what="the newly staked provider used")
        finally:
            await client.close()
