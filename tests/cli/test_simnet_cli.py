"""`swarm simnet up` end to end, as a user runs it, and how it stops."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.cli import main as swarm_main
from swarm.cli._simnet import add_parser
from tests.simnet.helpers import alive, nodes_started_by, wait_until_gone

MLP_ONLY = """
name = "mlp-only"
description = "two MLP nodes"
duration = 30
seed = 1
[[nodes.group]]
count = 2
models = ["builtin/mlp"]
price_per_request = 3
[workload]
rate = 5
timeout = 5
[[workload.model]]
name = "builtin/mlp"
[promises]
max_lost_requests = 0
p99_ms = 5000
"""


def simnet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarm.cli", "simnet", "up", "--no-live", *args]


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp-only.toml"
    path.write_text(MLP_ONLY)
    return path


def test_parser_hooks_into_a_cli() -> None:
    parser = argparse.ArgumentParser(prog="swarm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simnet", "up", "--nodes", "3", "--duration", "5", "--rate", "2",
                              "--scenario", "failover", "--report", "out", "--seed", "9"])
    assert (args.command, args.simnet_command) == ("simnet", "up")
    assert (args.nodes, args.duration, args.rate, args.seed) == (3, 5.0, 2.0, 9)
    assert args.scenario == "failover"
    assert args.report == Path("out")
    assert not args.netns
    with pytest.raises(SystemExit):
        parser.parse_args(["simnet", "up", "--nodes", "0"])
    args = parser.parse_args(["simnet", "virtual", "--nodes", "2000", "--clients", "20",
                              "--duration", "600", "--quiet"])
    assert args.simnet_command == "virtual"
    assert (args.nodes, args.clients, args.duration, args.quiet) == (2000, 20, 600.0, True)


def test_bad_scenario_exits_2_with_a_clear_message(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("duration = 5\n[workload]\nshape = \"sine\"\n")
    assert swarm_main(["simnet", "up", "--scenario", str(bad)]) == 2
    assert "unknown shape 'sine'" in capsys.readouterr().err
    assert swarm_main(["simnet", "up", "--scenario", "failover", "--nodes", "1"]) == 2
    assert "node 1 is out of range" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the refusal for non-root users")
def test_netns_needs_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert swarm_main(["simnet", "up", "--netns"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_mesh_needs_netns(capsys: pytest.CaptureFixture[str]) -> None:
    assert swarm_main(["simnet", "up", "--mesh"]) == 2
    assert "--mesh needs --netns" in capsys.readouterr().err


@pytest.mark.slow
def test_up_end_to_end(tmp_path: Path, scenario_file: Path) -> None:
    report = tmp_path / "report"
    done = subprocess.run(
        simnet_command("--scenario", str(scenario_file), "--nodes", "2", "--duration", "6",
                       "--rate", "5", "--report", str(report)),
        capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for name in ("report.json", "summary.md", "latency.png", "load.png", "logs/node-0.log",
                 "logs/node-1.log"):
        assert (report / name).stat().st_size > 0, name
    data = json.loads((report / "report.json").read_text())
    summary = data["summary"]
    assert summary["errors"] == {}
    assert summary["lost"] == 0
    assert summary["kept"] is True
    assert summary["requests"] == len(data["requests"]) > 10
    assert set(summary["node_requests"]) == {"0", "1"}
    assert summary["mean_price"] == 3
    assert "PASS" in (report / "summary.md").read_text()
    pids = [int(p) for p in re.findall(r"node \d+  pid (\d+)", done.stdout)]
    assert len(pids) == 2
    assert alive(pids) == []


async def start_simnet(*args: str, tmp: Path) -> tuple[asyncio.subprocess.Process, list[int]]:
    """Start simnet; return it and its node pids once its workload has started."""
    proc = await asyncio.create_subprocess_exec(
        *simnet_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, TMPDIR=str(tmp)))  # node data dirs of a killed simnet stay here
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(90):
        while not lines or "workload started" not in lines[-1]:
            line = (await proc.stdout.readline()).decode()
            assert line, "simnet ended early:\n" + "".join(lines)
            lines.append(line)
    pids = [int(p) for p in re.findall(r"node \d+  pid (\d+)", "".join(lines))]
    assert len(pids) == 2
    assert sorted(nodes_started_by(proc.pid)) == sorted(pids)
    return proc, pids


@pytest.mark.slow
async def test_sigint_stops_every_node(tmp_path: Path, scenario_file: Path) -> None:
    report = tmp_path / "report"
    proc, pids = await start_simnet("--scenario", str(scenario_file), "--report", str(report),
                                    tmp=tmp_path)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 130, out.decode()
    assert alive(pids) == []
    assert nodes_started_by(proc.pid) == []
    data = json.loads((report / "report.json").read_text())
    assert data["summary"]["interrupted"] is True
    assert data["summary"]["kept"] is False
    # Stopped at once: no promise is judged, and rates are over the seconds it ran, not 30.
    text = out.decode()
    assert "not judged" in text
    assert "FAIL" not in text
    assert "FAIL" not in (report / "summary.md").read_text()
    assert 0 < data["summary"]["duration"] < 30


@pytest.mark.slow
async def test_nodes_die_with_a_killed_simnet(tmp_path: Path, scenario_file: Path) -> None:
    proc, pids = await start_simnet("--scenario", str(scenario_file), "--report",
                                    str(tmp_path / "report"), tmp=tmp_path)
    proc.kill()  # no cleanup code runs: the kernel's parent-death signal must do it
    async with asyncio.timeout(30):
        await proc.communicate()
    assert await wait_until_gone(pids) == []


@pytest.mark.slow
async def test_sigint_while_nodes_start(tmp_path: Path, scenario_file: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *simnet_command("--scenario", str(scenario_file), "--report", str(tmp_path / "r")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not (starting := nodes_started_by(proc.pid)):  # the first node is loading
        assert loop.time() < deadline
        assert proc.returncode is None
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 130, out.decode()
    assert "workload started" not in out.decode()
    assert alive(starting) == []
    assert nodes_started_by(proc.pid) == []
