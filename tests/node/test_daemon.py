"""The real `swarm-node run` process: serving the CLI, identity, SIGTERM drain, start-up errors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

import swarm
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node._runtime import Model
from swarm.protocol import Identity
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0


def command(tool: str, module: str) -> list[str]:
    script = BIN / tool
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


SWARM_NODE = command("swarm-node", "swarm.node._cli")
SWARM = command("swarm", "swarm.cli")


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["SWARM_P2P_PORT"] = "-1"  # no peer-to-peer in these tests (ignored where unsupported)
    env["SWARM_TORCH_THREADS"] = "1"
    return env


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    peer_id: str
    grpc: str
    metrics: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


async def run(*argv: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment())
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def daemon(data_dir: Path, *extra: str) -> AsyncIterator[Daemon]:
    """`swarm-node run` on free ports; stopped (SIGTERM, then SIGKILL) when the block ends."""
    stderr = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *SWARM_NODE, "run", "--data-dir", str(data_dir), "--grpc-port", "0",
            "--metrics-port", "0", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=environment())
    try:
        assert proc.stdout is not None
        fields: dict[str, str] = {}
        deadline = time.monotonic() + START_TIMEOUT
        while not {"peer id", "grpc", "metrics"} <= fields.keys():
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            if not line:
                raise AssertionError(f"swarm-node exited before serving:\n{stderr.read_text()}")
            text = line.decode().rstrip()
            if text.startswith("  "):
                key, _, value = text.strip().partition("  ")
                fields[key] = value.strip()
        yield Daemon(proc, fields["peer id"], fields["grpc"], fields["metrics"], stderr)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.text()


def mlp_request(rows: int, seed: int = 0) -> tuple[np.ndarray, pb.ModelInferRequest]:
    x = np.random.default_rng(seed).standard_normal((rows, 512)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="builtin/mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[rows, 512])
    request.raw_input_contents.append(x.tobytes())
    return x, request


# --------------------------------------------------------------------------- tests


async def test_daemon_serves_the_cli_and_keeps_its_identity(tmp_path: Path, mlp: Model) -> None:
    data = tmp_path / "data"
    x = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    async with daemon(data, "--serve", "builtin/mlp") as node:
        key = data / "identity.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        (code, out, err), (mcode, mout, merr), (bad, _, bad_err), (icode, iout, _) = \
            await asyncio.gather(
                run(*SWARM, "infer", "--node", node.grpc, "builtin/mlp", "--json",
                    json.dumps(x.tolist())),
                run(*SWARM, "models", "--node", node.grpc, "--json"),
                run(*SWARM, "infer", "--node", node.grpc, "no/such-model", "--json", "[[1]]"),
                run(*SWARM_NODE, "id", "--data-dir", str(data)))
        assert code == 0, err
        np.testing.assert_allclose(np.array(json.loads(out)["output"], np.float32),
                                   mlp.execute({"input": x})["output"], rtol=1e-5, atol=1e-5)
        assert mcode == 0, merr
        models = json.loads(mout)
        assert [m["name"] for m in models] == ["builtin/mlp"]
        assert models[0]["versions"] == [str(mlp.digest)]
        assert models[0]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 512]}]
        assert bad == 1
        assert "no/such-model" in bad_err
        assert icode == 0
        assert iout.splitlines()[:2] == [node.peer_id, f"grpc {node.grpc}"]
        assert (data / "node.json").exists()
        node.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(node.process.wait(), 30) == 0, node.log()
    assert not (data / "node.json").exists()
    async with daemon(data) as again:  # same data dir: same identity
        assert again.peer_id == node.peer_id
    code, out, _ = await run(*SWARM_NODE, "id", "--data-dir", str(data))
    assert (code, out.strip()) == (0, node.peer_id)


async def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    drain_timeout = 30.0
    count, rows = 32, 256  # one request per batch, each tens of milliseconds of compute
    async with daemon(tmp_path / "data", "--serve", "builtin/mlp", "--max-batch-size", str(rows),
                      "--drain-timeout", str(drain_timeout), "--device", "cpu") as node:
        metrics = node.metrics

        async def scrape() -> dict[str, float]:
            _, text = await http_get(metrics)
            values = {}
            for line in text.splitlines():
                if line.startswith(('swarm_queue_depth{model="builtin/mlp"}',
                                    'swarm_requests_total{model="builtin/mlp",status="OK"}')):
                    name, value = line.rsplit(" ", 1)
                    values[name.split("{")[0]] = float(value)
            return values

        async with grpc.aio.insecure_channel(node.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            requests = [mlp_request(rows, seed=i) for i in range(count)]

            finished: list[float] = []

            async def call(request: pb.ModelInferRequest) -> grpc.StatusCode | pb.ModelInferResponse:
                try:
                    return await stub.ModelInfer(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                finally:
                    finished.append(time.monotonic())

            calls = [asyncio.create_task(call(r)) for _, r in requests]

            async def all_accepted() -> bool:
                # Every request is queued, executing (one at a time) or done.
                values = await scrape()
                done = values.get("swarm_requests_total", 0)
                return done < count and values.get("swarm_queue_depth", 0) + done + 1 >= count

            await wait_until(all_accepted, timeout=20, what="every request accepted")
            stopped_at = time.monotonic()
            node.process.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                try:
                    status, _ = await http_get(metrics.replace("/metrics", "/readyz"))
                except aiohttp.ClientError:
                    return True  # already gone
                return status == 503

            await wait_until(draining, timeout=20, what="the node reports draining")
            # New work is refused at once, not left to hang. grpc core answers CANCELLED
            # instead of UNAVAILABLE for a call it received but never handed to the server
            # before stopping (grpc/grpc#41785); the SDK reports both as UnavailableError.
            refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
            async with grpc.aio.insecure_channel(node.grpc) as fresh:
                late_stub = pb_grpc.GRPCInferenceServiceStub(fresh)
                for late in (stub, late_stub):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await late.ModelInfer(mlp_request(1)[1], timeout=10)
                    assert info.value.code() in refused
            async with swarm.AsyncClient(node.grpc, timeout=10) as client:
                with pytest.raises(swarm.UnavailableError):
                    await client.infer("builtin/mlp", mlp_request(1)[0])
            results = await asyncio.gather(*calls)
        exit_code = await asyncio.wait_for(node.process.wait(), drain_timeout + 10)
        elapsed = time.monotonic() - stopped_at
    codes = [r for r in results if isinstance(r, grpc.StatusCode)]
    assert codes == [], f"accepted requests failed during drain: {codes}\n{node.log()}"
    for response in results:
        assert isinstance(response, pb.ModelInferResponse)
        assert list(response.outputs[0].shape) == [rows, 512]
    # The drain was exercised: some accepted requests were still in flight at SIGTERM.
    assert sum(t > stopped_at for t in finished) >= 1
    assert exit_code == 0, node.log()
    assert elapsed < drain_timeout


async def test_start_up_errors_exit_with_a_clear_message(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('grpc_port = "seventy"\n')
    loose = tmp_path / "loose"
    key = loose / "identity.key"
    Identity.load_or_create(key)
    key.chmod(0o644)
    results = await asyncio.gather(
        run(*SWARM_NODE, "run", "--config", str(bad_toml), "--data-dir", str(tmp_path / "a")),
        run(*SWARM_NODE, "run", "--serve", "Not A Model", "--data-dir", str(tmp_path / "b")),
        run(*SWARM_NODE, "run", "--data-dir", str(loose), "--grpc-port", "0",
            "--metrics-port", "-1"),
    )
    (c1, _, e1), (c2, _, e2), (c3, _, e3) = results
    assert c1 == 2
    assert "configuration error" in e1
    assert "grpc_port" in e1
    assert c2 == 2
    assert "Not A Model" in e2
    assert c3 == 2
    assert "chmod 600" in e3
    for err in (e1, e2, e3):
        assert "Traceback" not in err
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # left for the owner to fix


async def test_port_in_use_is_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run(*SWARM_NODE, "run", "--data-dir", str(tmp_path / "d"),
                                 "--grpc-port", str(port), "--metrics-port", "-1")
    assert code == 2, err
    assert "configuration error" in err
    assert str(port) in err
    assert "Traceback" not in err


async def test_the_banner_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """simnet and service managers read the banner from a file that also gets the logs:
    a log line from another thread must not be able to split a banner line."""
    from swarm.node import NodeConfig
    from swarm.node._cli import _run

    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            if "p2p" in text or "model" in text:  # the banner is out: stop the node
                os.kill(os.getpid(), signal.SIGTERM)
            return len(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    config = NodeConfig.local(tmp_path, serve=("builtin/mlp",), device="cpu", metrics_port=-1)
    await asyncio.wait_for(_run(config), 60)
    banner = [w for w in writes if "serving" in w]
    assert len(banner) == 1
    assert "  grpc     127.0.0.1:" in banner[0]
    assert "  model    builtin/mlp  sha256:" in banner[0]
    assert banner[0].endswith("\n")
