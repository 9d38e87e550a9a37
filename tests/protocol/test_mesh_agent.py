"""The mesh's edges: what --mesh needs and says when it lacks it, the key file, and a
crashed run's leftovers (a live wireguard-go and its interface) cleaned at the next start."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarm._errors import ConfigError
from swarm.node import main as node_main
from swarm.protocol import _wireguard
from swarm.protocol._mesh import interface_name
from swarm.protocol._wireguard import check_mesh_prerequisites, load_or_create_key
from tests.waiting import wait_until


def test_missing_prerequisites_are_named_with_how_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wireguard.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(_wireguard.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as caught:
        check_mesh_prerequisites()
    text = str(caught.value)
    assert "root (running as uid 1000)" in text
    assert "wg, ip" in text
    assert "apt-get install wireguard-tools wireguard-go iproute2" in text


def test_run_mesh_fails_at_start_saying_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_wireguard.shutil, "which", lambda name: None)
    code = node_main(["run", "--mesh", "--data-dir", str(tmp_path), "--grpc-port", "0",
                      "--p2p-port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--mesh needs" in err
    assert "apt-get install wireguard-tools wireguard-go iproute2" in err
    assert not (tmp_path / "identity.key").exists()  # refused before anything else


def test_mesh_needs_peer_to_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert node_main(["run", "--mesh", "--data-dir", str(tmp_path), "--p2p-port", "-1"]) == 2
    assert "--mesh needs peer-to-peer" in capsys.readouterr().err


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    private, public = load_or_create_key(tmp_path / "mesh.key")
    assert (tmp_path / "mesh.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "mesh.key") == (private, public)
    assert len(public) == 32
    (tmp_path / "bad.key").write_text("not base64!\n")
    with pytest.raises(ConfigError, match="not a WireGuard private key"):
        load_or_create_key(tmp_path / "bad.key")


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


AGENT = """
import asyncio, json, sys
from pathlib import Path
from swarm.protocol import MeshAgent, MeshOptions
async def main():
    agent = MeshAgent(MeshOptions(prefix="fd5a:7761:726d::/48", listen_port=0,
                                  endpoint="10.9.9.9:0", behind_nat=False, relay=False),
                      Path(sys.argv[1]))
    await agent.start()
    print(json.dumps(json.loads((Path(sys.argv[1]) / "mesh.json").read_text())), flush=True)
    await agent.close()
asyncio.run(main())
"""


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or any(shutil.which(t) is None
                                             for t in ("ip", "wg", "wireguard-go")),
                    reason="needs root, iproute2, wireguard-tools and wireguard-go")
async def test_a_crashed_runs_wireguard_go_and_interface_are_cleaned_at_next_start(
        tmp_path: Path) -> None:
    namespace = f"swarm-meshtest-{os.getpid()}"
    _, public = load_or_create_key(tmp_path / "mesh.key")
    interface = interface_name(public)
    sh("ip", "netns", "add", namespace)
    stale: subprocess.Popen[bytes] | None = None
    try:
        # What a SIGKILLed node leaves: its wireguard-go, running, with the interface.
        stale = spawn("ip", "netns", "exec", namespace, "wireguard-go", "-f", interface)
        sock = _wireguard.UAPI_DIR / f"{interface}.sock"
        await wait_until(sock.exists, timeout=10, what="the stale wireguard-go's socket")
        (tmp_path / "mesh.json").write_text(json.dumps(
            {"owner_pid": 999999999, "interface": interface, "wireguard_go_pid": stale.pid}))
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", namespace, sys.executable, "-c", AGENT, str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()[-2000:]
        state = json.loads(out)
        assert state["interface"] == interface
        assert state["wireguard_go_pid"] != stale.pid
        assert state["public_key"] == base64.b64encode(public).decode()
        assert stale.poll() is not None  # the stale child was stopped
        assert not sock.exists()
        assert interface not in sh("ip", "-n", namespace, "-o", "link")
        assert not (tmp_path / "mesh.json").exists()
    finally:
        if stale is not None and stale.poll() is None:
            stale.kill()
            stale.wait()
        sh("ip", "netns", "del", namespace)


def test_mesh_settings_from_flags_and_file(tmp_path: Path) -> None:
    from swarm.node._config import load_config

    file = tmp_path / "node.toml"
    file.write_text('mesh = true\nmesh_port = 51999\nmesh_prefix = "fd00:1:2::/48"\n')
    config = load_config(file, env={}, flags={"mesh_behind_nat": True})
    assert (config.mesh, config.mesh_port, config.mesh_prefix, config.mesh_behind_nat) == (
        True, 51999, "fd00:1:2::/48", True)
    for bad, why in (("mesh_port = 70000", "mesh_port"), ("mesh_mtu = 500", "mesh_mtu"),
                     ("mesh = true\np2p_port = -1", "peer-to-peer")):
        file.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=why):
            load_config(file, env={})


@pytest.mark.parametrize("prefix", ["10.0.0.0/8", "fd00::/120", "fd00::1/48", "nonsense"])
def test_bad_mesh_prefix_is_refused_before_anything_is_created(tmp_path: Path,
                                                               prefix: str) -> None:
    from swarm.protocol import MeshAgent, MeshOptions

    with pytest.raises(ConfigError, match="mesh prefix"):
        MeshAgent(MeshOptions(prefix=prefix, listen_port=0, endpoint="", behind_nat=True,
                              relay=False), tmp_path)
    assert not (tmp_path / "mesh.key").exists()
