"""The ledger live on real `swarm-node run --genesis` processes: the CLI bonds on one node,
another node learns it (sync on join, then gossip), a restart rebuilds the same state from
the store, and the timekeeper ticks."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from swarm.protocol import Identity
from swarm.staking import Genesis, GenesisAccount, Params
from tests.node.test_daemon import SWARM, SWARM_NODE, environment, run
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

START_TIMEOUT = 60.0


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    grpc: str
    metrics: str
    p2p: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


@asynccontextmanager
async def daemon(data_dir: Path, *extra: str, p2p: bool = True) -> AsyncIterator[Daemon]:
    """`swarm-node run` on free ports (libp2p too, unless `p2p` is False)."""
    stderr = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *SWARM_NODE, "run", "--data-dir", str(data_dir), "--grpc-port", "0",
            "--tls-port", "0", "--metrics-port", "0", "--p2p-port", "0" if p2p else "-1",
            "--advert-interval", "1", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=environment())
    try:
        assert proc.stdout is not None
        fields: dict[str, str] = {}
        wanted = {"grpc", "metrics"} | ({"p2p"} if p2p else set())
        deadline = time.monotonic() + START_TIMEOUT
        while not wanted <= fields.keys():
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            if not line:
                raise AssertionError(f"swarm-node exited before serving:\n{stderr.read_text()}")
            text = line.decode().rstrip()
            if text.startswith("  "):
                key, _, value = text.strip().partition("  ")
                fields.setdefault(key, value.strip())
        yield Daemon(proc, fields["grpc"], fields["metrics"], fields.get("p2p", ""), stderr)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def swarm_json(*argv: str) -> dict[str, object]:
    code, out, err = await run(*SWARM, *argv, "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def write_genesis(tmp_path: Path, rich: Identity, timekeeper: Identity, *,
                  epoch_seconds: int = 3600) -> Path:
    genesis = Genesis(Params(name="test-net", timekeeper=timekeeper.peer_id,
                             epoch_seconds=epoch_seconds, min_stake=500, unbonding_epochs=1),
                      (GenesisAccount(rich.peer_id, balance=10_000),))
    path = tmp_path / "genesis.toml"
    path.write_text(genesis.to_toml())
    return path


async def test_bond_on_one_node_is_seen_on_another_and_survives_a_restart(
        tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    provider = Identity.load_or_create(a_dir / "identity.key")
    timekeeper = Identity.load_or_create(tmp_path / "timekeeper.key")
    genesis = write_genesis(tmp_path, provider, timekeeper)
    me = str(provider.peer_id)
    async with daemon(a_dir, "--genesis", str(genesis)) as a:
        # Bonded through the CLI before B exists: B learns it by syncing on join.
        assert (await swarm_json("stake", "bond", "1000", "--data-dir", str(a_dir)))[
            "outcome"] == "applied"
        async with daemon(b_dir, "--genesis", str(genesis), "--bootstrap", a.p2p) as b:
            async def bonded_on_b(amount: str) -> bool:
                status = await swarm_json("stake", "status", me, "--node", b.grpc)
                return status["bonded"] == amount

            await wait_until(lambda: bonded_on_b("1000"), timeout=30,
                             what=lambda: f"B to sync the bond\n{b.log()}")
            status = await swarm_json("stake", "status", me, "--node", b.grpc)
            assert status["balance"] == "9000"
            assert status["eligible"] is True  # 1000 >= the genesis minimum of 500
            # After the join: gossip carries the next one.
            await swarm_json("stake", "unbond", "600", "--data-dir", str(a_dir))
            await wait_until(lambda: bonded_on_b("400"), timeout=30,
                             what=lambda: f"B to hear the unbond\n{b.log()}")
            status = await swarm_json("stake", "status", me, "--node", b.grpc)
            assert status["unbonding"] == "600"
            assert status["eligible"] is False
            supply_b = await swarm_json("ledger", "supply", "--node", b.grpc)
            history = await swarm_json("ledger", "history", me, "--node", b.grpc)
            assert [h["summary"] for h in history] == ["bond 1000", "unbond 600"]  # type: ignore[index, union-attr]
            async with aiohttp.ClientSession() as http, http.get(a.metrics) as response:
                text = await response.text()
            assert "swarm_ledger_bonded 400.0" in text
            assert 'swarm_ledger_items_total{outcome="applied"}' in text
    # B again, alone (no peer-to-peer): the same state, from its store.
    async with daemon(b_dir, "--genesis", str(genesis), p2p=False) as b:
        assert await swarm_json("ledger", "supply", "--node", b.grpc) == supply_b
        status = await swarm_json("stake", "status", me, "--node", b.grpc)
        assert status["bonded"] == "400"


async def test_a_node_without_genesis_keeps_no_ledger(tmp_path: Path) -> None:
    async with daemon(tmp_path / "n", p2p=False) as node:
        code, _, err = await run(*SWARM, "ledger", "supply", "--node", node.grpc)
    assert code == 1
    assert "keeps no ledger" in err
