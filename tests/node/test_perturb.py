"""Real processes: two honest nodes and one started with --test-perturb-outputs; a client
that verifies every request produces evidence that names the perturbing node (and never an
honest one), that FaultEvidence.check() accepts, and that slashes it on a ledger."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from swarm import AsyncClient
from swarm._types import PeerId
from swarm.simnet._cluster import ClusterConfig, start_cluster
from swarm.simnet._scenario import NodeSpec
from swarm.staking import (
    FaultEvidence,
    Genesis,
    GenesisAccount,
    Ledger,
    Outcome,
    Params,
    SlashingTable,
    eligible,
)
from tests.staking import TIMEKEEPER
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def test_the_option_is_hidden_from_help() -> None:
    from swarm.node._cli import _parser

    parser = _parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    assert "perturb" not in run.format_help()
    args = parser.parse_args(["run", "--test-perturb-outputs", "0.5"])
    assert args.test_perturb_outputs == 0.5


async def test_a_perturbing_node_is_outvoted_reported_and_slashed(tmp_path: Path) -> None:
    # The perturbing node is the cheapest and the client routes by price: it answers first,
    # an honest node checks it. Routed by latency, the scheduler could send the cheater (a
    # process measured slower on a loaded host) too few requests to catch it in the bound:
    # 80 requests once brought no evidence in a full-suite run.
    specs = [NodeSpec(index=i, models=("builtin/mlp",), price_per_request=0 if i == 2 else 10)
             for i in range(3)]
    config = ClusterConfig(log_dir=tmp_path, advert_interval=1.0, stop_grace=5.0,
                           drain_timeout=2.0, torch_threads=1,
                           node_args={2: ("--test-perturb-outputs", "0.5",
                                          "--test-perturb-seed", "7")})
    reports: list[bytes] = []

    async def report(wire: bytes) -> None:
        reports.append(wire)

    async with start_cluster(specs, config) as swarm:
        nodes = [h for h in swarm.nodes if h is not None]
        peers = [PeerId(h.peer_id) for h in nodes]
        cheater = PeerId(nodes[2].peer_id)
        bootstrap = [a for h in nodes for a in h.p2p]
        client = AsyncClient(bootstrap=bootstrap, timeout=20, hedge=False, verify_fraction=1.0,
                             preference="price", rng=random.Random(0), report=report)
        try:
            await client.start()
            await wait_until(lambda: len(client.router.view) >= 3, timeout=30,
                             what="three providers in the view")
            rng = np.random.default_rng(0)
            # Bounded: 80 requests at most, stop at the second report (half the cheater's
            # answers are wrong: two reports come within a few requests).
            for _ in range(80):
                x = rng.standard_normal((1, 512)).astype(np.float32)
                result = await client.infer("builtin/mlp", x)
                assert isinstance(result, np.ndarray)
                if len(reports) >= 2:
                    break
        finally:
            await client.close()
    assert reports, "no evidence after 80 verified requests"
    assert client.verifier.verified >= 1
    genesis = Genesis(Params(name="perturb-test", timekeeper=TIMEKEEPER.peer_id),
                      tuple(GenesisAccount(p, 0, 1000) for p in peers))
    ledger = Ledger(genesis)
    for wire in reports:
        evidence = FaultEvidence.decode(wire, bytes(32))  # the client's default chain id
        evidence.check(SlashingTable())
        assert evidence.offender_peer == cheater
        assert cheater not in {w.signer for w in evidence.witnesses}
        # The same evidence made for this ledger's chain slashes there.
        rebuilt = FaultEvidence.make(genesis.chain, 0, evidence.tolerance, evidence.offender,
                                     list(evidence.witnesses))
        assert ledger.receive(rebuilt.wire) is Outcome.FAULT
    assert not eligible(ledger.state, cheater, 1)
    assert all(eligible(ledger.state, p, 1) for p in peers[:2])
