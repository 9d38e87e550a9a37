"""The README, run as a new user runs it: every command and snippet, in order, on one machine.

The test reads README.md, takes every shell command (indented `.venv/bin/...` lines) and every
```python / ```toml block in the order written, and runs each against the nodes the README
itself started. A README command this test does not know how to run fails it, so the README
cannot grow a step that nobody ran. Placeholders are filled from the nodes' start-up banners:
the multiaddr (`/ip4/127.0.0.1/tcp/PORT/p2p/PEERID`, `ADDR`) and `HOST:PORT` are the first
node of "Joining a swarm", `N` the second node's HTTP port. HOME is a temporary directory, so
`~/.swarm` and the publisher key land there. The fixed ports (7070, 7071, 7072 of "Serving
models" and 9090; 8000 of "Text generation") are used as written when they are free; on a
machine where something holds them, free ports stand in and commands that rely on the default
node get `--node` with the stand-in.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.registry.programs import export
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
START_TIMEOUT = 90.0
JOIN = "/ip4/127.0.0.1/tcp/PORT/p2p/PEERID"
# The two top-level commands: CI runs the second (it runs this test); the simnet tests run
# the demo's code at a small size.
NOT_RUN_HERE = {"./scripts/demo", "./scripts/test"}


@dataclass
class Block:
    section: str
    kind: str  # "shell", "python", "toml"
    text: str


def readme_blocks(text: str) -> list[Block]:
    """Shell commands (continuations joined), python and toml blocks, in README order."""
    blocks: list[Block] = []
    section = ""
    pending = ""
    fence: str | None = None
    fenced: list[str] = []
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                if fence in ("python", "toml"):
                    blocks.append(Block(section, fence, "\n".join(fenced)))
                fence, fenced = None, []
            else:
                fenced.append(line)
            continue
        if line.startswith("```"):
            fence = line[3:].strip()
            continue
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        stripped = line.strip()
        if pending:
            pending += " " + stripped
        elif line.startswith(("    .venv/bin/", "    ./scripts/", "    curl ")):
            pending = stripped
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        blocks.append(Block(section, "shell", pending))
        pending = ""
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Walk:
    """What the README's steps have started and what its placeholders stand for."""

    home: Path
    env: dict[str, str]
    ports: dict[str, str] = field(default_factory=dict)  # README's fixed port -> the one used
    banners: dict[str, dict[str, str]] = field(default_factory=dict)  # data dir -> banner
    pushed: dict[str, str] = field(default_factory=dict)  # registry tag -> digest pushed
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def default_node(self) -> str:
        return f"127.0.0.1:{self.ports['7070']}"

    def first(self) -> dict[str, str]:
        return self.banners["/tmp/a"]

    def fill(self, text: str) -> str:
        """The README text with its placeholders and fixed ports replaced by what runs."""
        for readme, used in self.ports.items():
            text = re.sub(rf"\b{readme}\b", used, text)
        if "/tmp/a" in self.banners:
            text = text.replace(JOIN, self.first()["p2p"])
            text = re.sub(r"\bADDR\b", self.first()["p2p"], text)
            text = text.replace("HOST:PORT", self.first()["grpc"])
        if "/tmp/b" in self.banners:  # the gateway's HTTP port (its banner's openai line)
            http = self.banners["/tmp/b"]["openai"].removeprefix("http://").removesuffix("/v1")
            text = re.sub(r"127\.0\.0\.1:N\b", http, text)
        return text.replace("/tmp/", f"{self.home}/tmp/")

    def argv(self, command: str) -> list[str]:
        words = shlex.split(self.fill(command), comments=True)
        assert words[0].startswith(".venv/bin/"), command
        words[0] = str(BIN / words[0].removeprefix(".venv/bin/"))
        return words

    async def run(self, command: str, *extra: str, stdin: bytes = b"",
                  timeout: float = 120.0) -> tuple[int, str, str]:
        argv = self.argv(command) + list(extra)
        if self.ports["7070"] != "7070" and argv[1] in ("infer", "served") \
                and "--node" not in argv and "--bootstrap" not in argv:
            argv[2:2] = ["--node", self.default_node]  # the stand-in for the default node
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.home)
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def must(self, command: str) -> str:
        code, out, err = await self.run(command)
        assert code == 0, f"{command}\nexit {code}\n{out}\n{err}"
        return out

    async def start_node(self, command: str) -> dict[str, str]:
        """Start a `swarm-node run` in the background; its banner once it serves."""
        argv = self.argv(command)
        data_dir = argv[argv.index("--data-dir") + 1].replace(f"{self.home}/", "/") \
            if "--data-dir" in argv else "~"
        log = self.home / f"node{len(self.procs)}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=self.env, cwd=self.home)
        self.procs.append(proc)
        banner = await read_banner(proc, log)
        self.banners[data_dir] = banner
        return banner

    async def python(self, code: str, check: str) -> None:
        """Run a README snippet (placeholders filled) followed by the test's own asserts."""
        script = self.fill(code) + "\n" + textwrap.dedent(check)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.home)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"{script}\n{out.decode()}\n{err.decode()}"


async def read_banner(proc: asyncio.subprocess.Process, log: Path) -> dict[str, str]:
    """The `  key  value` lines a node prints once it serves (until its p2p line)."""
    assert proc.stdout is not None
    fields: dict[str, str] = {}
    models: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while "p2p" not in fields:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        if not line:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"swarm-node exited before serving:\n{output}")
        text = line.decode().rstrip()
        if text.startswith("  "):
            key, _, value = text.strip().partition("  ")
            if key == "model":
                models.append(value.split()[0])
            fields.setdefault(key, value.strip())
    fields["models"] = " ".join(models)
    return fields


async def wait_ready(url: str) -> None:
    async def ready() -> bool:
        async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status == 200

    await wait_until(ready, timeout=START_TIMEOUT, what=f"{url} saying ready")


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def step(walk: Walk, block: Block) -> None:
    """Run one README block and check what it printed or did."""
    command = block.text
    words = shlex.split(command, comments=True) if block.kind == "shell" else []
    tool = words[0] if words else ""
    verb = words[1:3] if len(words) > 2 else words[1:]
    if block.kind == "toml":
        # The config example: read by the node's own loader (it names fixed ports that the
        # node of the same section already holds, so it is checked, not started).
        from swarm.node._config import load_config

        path = walk.home / "node.toml"
        path.write_text(command)
        config = load_config(path)
        assert config.models["builtin/mlp"].max_batch_size == 128
    elif block.kind == "python" and "chat.completions" in command:
        await walk.python(command, "assert text.strip()")
    elif block.kind == "python" and "client.chat(" in command:
        await walk.python("import swarm\n" + command, "assert answer.strip()")
    elif block.kind == "python" and "bootstrap=" in command:
        await walk.python(
            "import numpy as np\nmany_arrays = [np.full((1, 512), i, np.float32) for i in range(8)]\n"
            "import swarm\n" + command,
            "assert len(outputs) == 8 and outputs[3].shape == (1, 512)")
    elif block.kind == "python" and "OpenAI(" in command:
        await walk.python(command,
                          "assert len(result.data) == 1 and len(result.data[0].embedding) == 384")
    elif block.kind == "python" and "tritonclient.http" in command:
        await walk.python(command, "assert y.shape == (4, 512)")
    elif block.kind == "python":
        await walk.python("import numpy as np\nx = np.ones((2, 512), np.float32)\n" + command,
                          "assert vectors.shape == (1, 384) and y.shape == (2, 512)")
    elif tool == "curl":
        done = await asyncio.to_thread(
            subprocess.run, shlex.split(walk.fill(command)), capture_output=True, text=True,
            timeout=60, check=True)
        outputs = json.loads(done.stdout)["outputs"]
        assert outputs[0]["shape"] == [1, 384], outputs
    elif tool in NOT_RUN_HERE:
        pass
    elif words[1:2] == ["run"] and tool.endswith("swarm-node"):
        banner = await walk.start_node(command)
        served = set(banner["models"].split())
        asked = {words[i + 1] for i, w in enumerate(words) if w == "--serve"}
        builtin = {name for name in asked if name.startswith("builtin/")}
        assert builtin <= served, f"{command}: serves {served}"
        if asked - builtin:  # registry models load after start: ready once they serve
            await wait_ready(banner["metrics"].replace("/metrics", "/readyz"))
            out = await walk.must(f".venv/bin/swarm served --node {banner['grpc']}")
            assert all(name.split(":")[0] in out for name in asked - builtin), out
        if "~/.swarm" in command:
            # The README shows what a second node with the same ports says: run it.
            code, _, err = await walk.run(command)
            assert code == 2, err
            assert "cannot listen on 127.0.0.1" in err
            assert f"gRPC port {walk.ports['7070']} (--grpc-port): Address already in use" in err
            assert f"libp2p port {walk.ports['7071']} (--p2p-port): Address already in use" in err
    elif words[1:2] == ["peers"]:
        wanted = {b["peer id"] for key, b in walk.banners.items() if key.startswith("/tmp/")}
        seen: set[str] = set()

        async def listed() -> bool:  # adverts reach a joining light peer within an interval
            code, out, _ = await walk.run(command, "--json")
            seen.update(re.findall(r'"peer_id": "(\w+)"', out))
            return code == 0 and wanted <= seen

        await wait_until(listed, timeout=START_TIMEOUT,
                         what=lambda: f"swarm peers listing {wanted} (saw {seen})")
    elif verb[:1] == ["infer"]:
        if "--file" in words:
            with (walk.home / words[words.index("--file") + 1]).open("w") as f:
                for i in range(3):
                    f.write(json.dumps([[float(i)] * 512]) + "\n")
        lines = json_lines(await walk.must(command))
        key = "embedding" if "builtin/minilm" in words else "output"
        assert lines, command
        assert all(list(line) == [key] for line in lines), lines
        assert len(lines) == (3 if "--file" in words else 1)
    elif verb[:1] == ["chat"]:
        code, out, err = await walk.run(command, stdin=b"What is the capital of France?\n")
        assert code == 0, f"{command}\nexit {code}\n{out}\n{err}"
        assert out.strip(), f"swarm chat answered nothing: {err}"
    elif verb[:1] == ["served"]:
        out = await walk.must(command)
        assert "builtin/minilm" in out, out
        assert "builtin/mlp" in out, out
    elif verb == ["model", "push"]:
        target = walk.home / words[3]
        export(target, 2.0 if "v2" in target.name else 1.0)
        out = await walk.must(command)
        digests = re.findall(r"sha256:[0-9a-f]{64}", out)
        assert digests, out
        walk.pushed[words[words.index("--tag") + 1]] = digests[0]
    elif verb == ["model", "tag"]:
        out = await walk.must(command)
        assert words[3] in out or words[4] in out, out
    elif verb == ["model", "ls"]:
        out = await walk.must(command)
        for shown in ("acme/classifier", "stable", "v1", "v2"):
            assert shown in out, out
    elif verb == ["model", "rollback"]:
        out = await walk.must(command)
        assert "acme/classifier:stable" in out, out
        assert walk.pushed["v1"] in out, f"rollback did not go back to v1: {out}"
    elif verb == ["model", "pull"]:
        await walk.must(command)
        assert any((walk.home / ".local/share/swarm-node/registry").rglob("*")), \
            "pull kept nothing in the default store"
    elif verb == ["model", "key"]:
        out = (await walk.must(command)).strip()
        assert re.fullmatch(r"[0-9a-f]{64}", out), out
    elif verb == ["ledger", "genesis"]:
        out = await walk.must(command)
        assert "supply 10000" in out, out
    elif verb == ["stake", "status"]:
        out = await walk.must(command)
        assert re.search(r"bonded\s+600\b", out), out
        assert re.search(r"eligible\s+yes", out), out
    elif verb == ["ledger", "supply"]:
        out = await walk.must(command)
        assert re.search(r"supply\s+10000\b", out), out
    elif verb == ["ledger", "history"]:
        out = await walk.must(command)
        assert "bond 1000" in out, out
        assert "unbond 400" in out, out
    elif verb[:1] in (["stake"], ["ledger"]):
        out = await walk.must(command)
        assert out.startswith("applied"), out
    else:
        raise AssertionError(f"README step that this test does not run: {command!r}")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_readme_runs_in_order_on_one_machine(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    assert len(blocks) > 20
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    walk = Walk(home=tmp_path, env=env)
    fixed = ("7070", "7071", "7072", "9090", "8000")
    if all(port_free(int(p)) for p in fixed):
        walk.ports = {p: p for p in fixed}
    else:
        walk.ports = {p: str(free_port()) for p in fixed}
    (tmp_path / "tmp").mkdir()
    try:
        for block in blocks:
            await step(walk, block)
        for proc in walk.procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in walk.procs]
        assert codes == [0] * len(walk.procs)
    finally:
        for proc in walk.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_readme_blocks_are_found_in_order() -> None:
    text = textwrap.dedent("""\
        ## One
            .venv/bin/swarm-node run --a \\
                --b
        ```python
        x = 1
        ```
            not a command
        ## Two
            ./scripts/demo
        ```toml
        a = 1
        ```
        """)
    blocks = readme_blocks(text)
    assert [(b.section, b.kind, b.text) for b in blocks] == [
        ("One", "shell", ".venv/bin/swarm-node run --a --b"),
        ("One", "python", "x = 1"),
        ("Two", "shell", "./scripts/demo"),
        ("Two", "toml", "a = 1"),
    ]
