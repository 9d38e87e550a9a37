"""The first hour with `swarm-node`: fast --help and id, busy ports (the README itself runs
in tests/test_readme.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from swarm._errors import ConfigError
from swarm.node import Node, NodeConfig, NodeState
from swarm.node._cli import _config as cli_config
from swarm.node._cli import _parser as cli_parser
from swarm.node._config import check_ports

BIN = Path(sys.executable).parent
# What the `swarm-node` console script runs; through `python -c` so -X importtime applies.
CLI = [sys.executable, "-X", "importtime", "-c",
       "import sys; from swarm.node._cli import main; sys.exit(main())"]


def command(tool: str, module: str) -> list[str]:
    script = BIN / tool
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without SWARM_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(extra)
    return env


async def run(*argv: str, env: dict[str, str] | None = None,
              timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else environment())
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def imported(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def messages(stderr: str) -> str:
    """stderr without the -X importtime lines."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


HEAVY = ("torch", "libp2p", "trio")


def heavy_imports(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


@contextmanager
def busy_ports(count: int) -> Iterator[list[int]]:
    """`count` loopback ports that another process (this one) listens on."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            ports.append(sock.getsockname()[1])
        yield ports


# --------------------------------------------------------------------------- start-up cost


@pytest.mark.slow
async def test_help_and_id_do_not_import_torch_or_libp2p(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    (hcode, hout, herr), (rcode, rout, rerr), (icode, iout, ierr) = await asyncio.gather(
        run(*CLI, "--help"), run(*CLI, "run", "--help"), run(*CLI, "id", "--data-dir", str(data)))
    assert (hcode, rcode, icode) == (0, 0, 0), messages(herr + rerr + ierr)
    for err in (herr, rerr, ierr):
        modules = imported(err)
        assert "swarm.node._cli" in modules  # the importtime report is there
        assert heavy_imports(modules) == set()
    assert "usage: swarm-node" in hout
    # Every setting's help shows its default (argparse wraps lines to the terminal).
    words = " ".join(rout.split())
    assert "gRPC port; 0 = any free port (default: 7070)" in words
    assert "-1 = off (default: 0)" in words  # the metrics port: any free one
    assert "(default: ~/.local/share/swarm-node)" in words
    # A data dir that does not exist yet gets a new identity, and says where.
    key = data / "identity.key"
    assert f"creating a new one at {key}" in messages(ierr)
    assert key.exists()
    peer_id = iout.strip()
    assert peer_id.startswith("12D3KooW")
    code, again, err = await run(*CLI, "id", "--data-dir", str(data))
    assert (code, again.strip()) == (0, peer_id)
    assert "creating" not in messages(err)


@pytest.mark.slow
async def test_id_and_run_use_the_same_data_dir(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    code, out, err = await run(*command("swarm-node", "swarm.node._cli"), "id",
                               env=environment(HOME=str(home)))
    assert code == 0, err
    default_key = home / ".local/share/swarm-node/identity.key"
    assert default_key.exists()
    assert str(default_key) in err
    # run, parsed the same way with the same environment, names that identity too.
    for name in [k for k in os.environ if k.startswith("SWARM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    config = cli_config(cli_parser().parse_args(["run"]))
    assert config.key_path.expanduser() == default_key
    # SWARM_DATA_DIR moves both.
    elsewhere = tmp_path / "elsewhere"
    code, out2, _ = await run(*command("swarm-node", "swarm.node._cli"), "id",
                              env=environment(HOME=str(home), SWARM_DATA_DIR=str(elsewhere)))
    assert code == 0
    assert (elsewhere / "identity.key").exists()
    assert out2 != out
    monkeypatch.setenv("SWARM_DATA_DIR", str(elsewhere))
    assert cli_config(cli_parser().parse_args(["run"])).data_dir == elsewhere


# --------------------------------------------------------------------------- busy ports


@pytest.mark.slow
async def test_busy_ports_are_reported_together_before_anything_loads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with busy_ports(3) as (grpc_port, p2p_port, metrics_port):
        config = tmp_path / "node.toml"
        config.write_text(f'grpc_port = {grpc_port}\np2p_port = {p2p_port}\n'
                          f'metrics_port = {metrics_port}\nserve = ["builtin/mlp"]\n')
        code, out, err = await run(*CLI, "run", "--config", str(config), "--data-dir", str(data))
    text = messages(err)
    assert code == 2, text
    assert text.count("configuration error") == 1, text
    for port, flag in ((grpc_port, "--grpc-port"), (p2p_port, "--p2p-port"),
                       (metrics_port, "--metrics-port")):
        assert f"port {port} ({flag})" in text
        assert f"{flag} 0" in text  # what to pass instead
    assert "add_port.cc" not in err  # no grpc C-core log line: grpc never tried
    assert "Traceback" not in text
    assert "model loaded" not in text
    # Nothing slow happened first: torch was never imported, no identity was created.
    assert heavy_imports(imported(err)) == set()
    assert not data.exists()
    assert out == ""


def test_check_ports_names_every_conflict_and_skips_free_and_off_ports() -> None:
    with busy_ports(2) as (taken, other):
        with pytest.raises(ConfigError) as info:
            check_ports(NodeConfig(grpc_port=taken, metrics_port=other, http_port=-1,
                                   p2p_port=other))
        message = str(info.value)
        assert f"gRPC port {taken} (--grpc-port)" in message
        assert f"metrics port {other} (--metrics-port)" in message
        assert f"libp2p port {other} (--p2p-port) is also the metrics port" in message
        assert "--grpc-port 0 --metrics-port 0 --p2p-port 0" in message
        # A free suggestion for each, distinct from each other and from the busy ones.
        suggested = re.findall(r"--(?:grpc|metrics|p2p)-port (\d+)", message.split(" or ")[-1])
        assert len(suggested) == 3
        assert len(set(suggested) | {str(taken), str(other)}) == 5
    check_ports(NodeConfig(grpc_port=0, metrics_port=0, http_port=-1, p2p_port=-1))
    with pytest.raises(ConfigError, match="--listen-host"):
        check_ports(NodeConfig(grpc_port=0, p2p_port=-1, listen_host="no-such-host.invalid"))


async def test_in_process_node_checks_ports_before_its_identity_and_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(Node, "_load", lambda self, ref: loaded.append(ref))
    with busy_ports(2) as (grpc_port, http_port):
        config = NodeConfig.local(tmp_path / "data", serve=("builtin/mlp",), device="cpu",
                                  grpc_port=grpc_port, http_port=http_port)
        node = Node(config)
        with pytest.raises(ConfigError) as info:
            await node.start()
    assert f"port {grpc_port} (--grpc-port)" in str(info.value)
    assert f"port {http_port} (--http-port)" in str(info.value)
    assert loaded == []
    assert not (tmp_path / "data").exists()
    assert node.state is NodeState.STOPPED
