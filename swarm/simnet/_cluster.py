"""Real `swarm-node` processes on this machine, and the faults simnet injects into them.

    async with start_cluster(specs, ClusterConfig(log_dir=...)) as cluster:
        cluster.nodes[0].grpc          # "127.0.0.1:PORT"
        await cluster.kill(1)          # SIGKILL
        await cluster.leave(2)         # SIGTERM: drain, exit
        await cluster.rejoin(2)        # same data dir, so the same identity
        cluster.set_slowdown(0, 4.0)   # runs a quarter of the time

Every node runs in its own temporary data dir and its own process group, with
stdout and stderr in `log_dir/node-<i>.log`. The first node starts alone; the
others bootstrap from its p2p multiaddr (read from its banner). Leaving the
block (normally, by an exception or by cancellation) sends SIGTERM to every
node, then SIGKILL after a grace period; on Linux each node also dies with its
parent (PR_SET_PDEATHSIG, see _child.py), so not even a SIGKILLed simnet leaves
nodes behind.

Slowdown is a SIGSTOP/SIGCONT duty cycle on the node's process group: it slows
the whole process (gRPC, batching, gossip, compute), not only the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import grpc

from swarm._errors import (
    ClosedError,
    ConfigError,
    UnavailableError,
    first_failure,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm.simnet._scenario import SHIPPED_MODELS, NodeSpec, Staking
from swarm.simnet._staking import LedgerSetup, prepare_ledger

__all__ = ["Banner", "Cluster", "ClusterConfig", "NodeHandle", "NodeStatus", "parse_banner",
           "start_cluster"]

log = logging.getLogger("swarm.simnet")

class NodeStatus(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    SLOW = "slow"
    LEFT = "left"    # stopped on purpose with SIGTERM
    DOWN = "down"    # killed, or exited on its own


@dataclass(frozen=True, slots=True)
class Banner:
    """What `swarm-node run` prints on stdout once it serves."""

    peer_id: str = ""
    grpc: str = ""
    metrics: str = ""
    models: tuple[tuple[str, str], ...] = ()  # (name, digest)
    p2p: tuple[str, ...] = ()
    # The TLS gRPC address peers dial (what the node advertises).
    tls: str = ""


def parse_banner(text: str) -> Banner:
    """Read the banner lines (`  grpc     HOST:PORT`, ...) out of a node's stdout."""
    fields: dict[str, str] = {}
    models: list[tuple[str, str]] = []
    p2p: list[str] = []
    for line in text.splitlines():
        if not line.startswith("  "):
            continue
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if key == "peer" and value.startswith("id "):
            fields["peer_id"] = value[3:].strip()
        elif key in ("grpc", "metrics", "tls"):
            fields[key] = value
        elif key == "model":
            name, _, digest = value.partition(" ")
            models.append((name, digest.strip()))
        elif key == "p2p":
            p2p.append(value)
    return Banner(peer_id=fields.get("peer_id", ""), grpc=fields.get("grpc", ""),
                  tls=fields.get("tls", ""),
                  metrics=fields.get("metrics", ""), models=tuple(models), p2p=tuple(p2p))


@dataclass(frozen=True, slots=True)
class NodeHandle:
    """One running incarnation of node `index` (a rejoin makes a new one)."""

    index: int
    incarnation: int
    spec: NodeSpec
    pid: int
    grpc: str
    metrics: str
    peer_id: str
    p2p: tuple[str, ...]
    models: tuple[tuple[str, str], ...]
    data_dir: Path
    log: Path
    # Prices the node advertises (its NodeService status), micro-units.
    price_per_request: int
    price_per_1k_items: int
    # The TLS gRPC address peers (and routing clients) dial.
    tls: str = ""

    def price_of(self, items: int) -> float:
        """Micro-units one request of `items` items costs at this node."""
        return self.price_per_request + self.price_per_1k_items * items / 1000


class NetworkLayer(Protocol):
    """Where nodes live on the network: loopback by default, namespaces with --netns."""

    def host(self, index: int) -> str:
        """Address node `index` listens on and advertises."""
        ...

    def wrap(self, index: int, argv: list[str]) -> list[str]:
        """The command line that runs `argv` inside node `index`'s network."""
        ...

    async def partition(self, index: int, isolated: bool) -> None:
        """Cut (or restore) every link of node `index`."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    # Where node logs go (node-<i>.log).
    log_dir: Path
    # Start nodes with peer-to-peer discovery (falls back to none if it is not available).
    p2p: bool = True
    # Seconds between capacity adverts (None: the node's default).
    advert_interval: float | None = None
    # Seconds a node may take to load its models and serve.
    start_timeout: float = 120.0
    # Seconds to wait for the p2p banner line once the node serves.
    p2p_wait: float = 3.0
    # Seconds a node may drain after SIGTERM before it gets SIGKILL.
    stop_grace: float = 8.0
    # --drain-timeout given to the nodes.
    drain_timeout: float = 3.0
    # Length of one SIGSTOP/SIGCONT cycle of a slowed node, seconds.
    duty_period: float = 0.1
    # --torch-threads per node (0: the machine's cores shared among the nodes).
    torch_threads: int = 0
    log_level: str = "info"
    python: str = sys.executable
    # Nodes join the WireGuard mesh (--mesh; needs a network layer: one namespace per node).
    mesh: bool = False
    # More `swarm-node run` flags for some nodes, by index (e.g. --mesh-behind-nat).
    node_args: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # [autoscale] settings (swarm.autoscale.AutoscaleConfig) of nodes whose spec autoscales.
    autoscale: tuple[tuple[str, Any], ...] = ()
    # [staking]: a genesis bonding every node (node 0 ticks), and the client's wallet.
    staking: Staking | None = None


@dataclass(slots=True, eq=False)
class _Proc:
    process: asyncio.subprocess.Process
    leaving: bool = False
    duty: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Slot:
    spec: NodeSpec
    data_dir: Path
    log: Path
    proc: _Proc | None = None
    starting: bool = False
    slowdown: float = 1.0
    incarnations: int = 0
    history: list[NodeHandle] = field(default_factory=list)


class Cluster:
    """The running nodes. Created by `start_cluster`; every method is safe on any node state."""

    def __init__(self, specs: Sequence[NodeSpec], config: ClusterConfig, workdir: Path,
                 tg: asyncio.TaskGroup, network: NetworkLayer | None) -> None:
        self.config = config
        self.notes: list[str] = []
        self._tg = tg
        self._network = network
        self._p2p = config.p2p
        self._slots = [_Slot(spec=s, data_dir=workdir / f"node-{s.index}",
                             log=config.log_dir / f"node-{s.index}.log") for s in specs]
        self._threads = config.torch_threads or max(1, (os.cpu_count() or 2) // max(1, len(specs)))
        self._children: dict[int, asyncio.subprocess.Process] = {}
        # The run's genesis, node identities and wallet (with [staking]; None: staking off).
        self.ledger: LedgerSetup | None = None
        if config.staking is not None:
            self.ledger = prepare_ledger(config.staking, [s.data_dir for s in self._slots],
                                         workdir)

    # ------------------------------------------------------------------ views

    @property
    def size(self) -> int:
        """Number of nodes (running or not)."""
        return len(self._slots)

    @property
    def nodes(self) -> tuple[NodeHandle | None, ...]:
        """The current (or last) incarnation of each node; None before its first start."""
        return tuple(s.history[-1] if s.history else None for s in self._slots)

    @property
    def history(self) -> tuple[NodeHandle, ...]:
        """Every incarnation ever started, in start order per node."""
        return tuple(h for s in self._slots for h in s.history)

    def status(self, index: int) -> NodeStatus:
        """What node `index` is doing now."""
        slot = self._slots[index]
        if slot.starting or slot.proc is None:
            return NodeStatus.STARTING if slot.starting or not slot.history else NodeStatus.DOWN
        if slot.proc.process.returncode is not None:
            return NodeStatus.LEFT if slot.proc.leaving else NodeStatus.DOWN
        return NodeStatus.SLOW if slot.slowdown > 1 else NodeStatus.UP

    def slowdown(self, index: int) -> float:
        """The node's current slowdown factor (1: full speed)."""
        return self._slots[index].slowdown

    def live_pids(self) -> list[int]:
        """Pids of node processes not yet reaped."""
        return [pid for pid, p in self._children.items() if p.returncode is None]

    def all_pids(self) -> list[int]:
        """Pids of every node process started, in start order."""
        return list(self._children)

    # ------------------------------------------------------------------ faults

    async def kill(self, index: int) -> None:
        """SIGKILL the node and wait until it is gone."""
        proc = self._running(index, "kill")
        await self._stop_duty(proc)
        self._signal(proc.process, signal.SIGKILL)
        await proc.process.wait()
        log.info("node killed", extra={"node": index, "pid": proc.process.pid})

    async def leave(self, index: int) -> None:
        """SIGTERM: the node stops taking work, drains what is in flight and exits."""
        proc = self._running(index, "leave")
        proc.leaving = True
        await self._stop_duty(proc)
        await self._terminate([proc.process])
        log.info("node left", extra={"node": index, "code": proc.process.returncode})

    async def rejoin(self, index: int) -> NodeHandle:
        """Start a stopped node again with the same data dir (same identity)."""
        slot = self._slots[index]
        if slot.proc is not None and slot.proc.process.returncode is None:
            raise ConfigError(f"node {index} is running; it cannot rejoin")
        bootstrap = next((h.p2p[0] for i, h in enumerate(self.nodes)
                          if h is not None and h.p2p and i != index
                          and self.status(i) in (NodeStatus.UP, NodeStatus.SLOW)), None)
        handle = await self._start(index, bootstrap)
        if slot.history[0].peer_id != handle.peer_id:
            self.notes.append(f"node {index} rejoined with a different peer id")
        return handle

    def set_slowdown(self, index: int, factor: float) -> None:
        """Run the node 1/factor of the time from now on (1: full speed)."""
        if factor < 1:
            raise ConfigError(f"slowdown must be >= 1, got {factor}")
        slot = self._slots[index]
        slot.slowdown = factor
        proc = slot.proc
        if proc is None or proc.process.returncode is not None:
            return  # applied when it (re)starts
        old = proc.duty
        proc.duty = None
        if old is not None:
            old.cancel()  # its finally sends SIGCONT
        if factor > 1:
            proc.duty = self._tg.create_task(self._duty_cycle(proc.process, factor, old),
                                             name=f"slowdown:{index}")

    async def partition(self, index: int, isolated: bool) -> None:
        """Cut (or restore) the node's links; needs a network layer (--netns)."""
        if self._network is None:
            raise ConfigError("partition needs --netns (on loopback nodes share one network)")
        await self._network.partition(index, isolated)

    # ------------------------------------------------------------------ lifecycle

    async def _start_all(self) -> None:
        if self._p2p and importlib.util.find_spec("swarm.protocol._libp2p") is None:
            self._p2p = False
            self.notes.append("peer-to-peer is not in this build: nodes run without discovery")
        first = await self._start(0, None)
        if self._p2p and not first.p2p:
            self._p2p = False
            self.notes.append("node 0 printed no p2p address: the other nodes were started "
                              "without --bootstrap and without peer-to-peer")
        bootstrap = first.p2p[0] if first.p2p else None
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(1, self.size):
                    tg.create_task(self._start(i, bootstrap))
        except ExceptionGroup as group:  # the first node that failed, the others noted on it
            raise first_failure(group) from None

    def _node_args(self, slot: _Slot, bootstrap: str | None) -> list[str]:
        spec = slot.spec
        args = ["run", "--data-dir", str(slot.data_dir), "--grpc-port", "0",
                "--metrics-port", "0", "--p2p-port", "0" if self._p2p else "-1",
                "--drain-timeout", str(self.config.drain_timeout),
                "--torch-threads", str(self._threads), "--log-level", self.config.log_level,
                "--price-per-request", str(spec.price_per_request),
                "--price-per-1k-items", str(spec.price_per_1k_items)]
        if spec.region:
            args += ["--region", spec.region]
        for model in spec.models:
            args += ["--serve", model]
        if self._p2p and bootstrap:
            args += ["--bootstrap", bootstrap]
        if self._p2p and self.config.advert_interval is not None:
            args += ["--advert-interval", str(self.config.advert_interval)]
        if self._network is not None:
            host = self._network.host(spec.index)
            # The harness drives and scrapes nodes from outside their namespaces over
            # plaintext; node-to-node traffic stays on the TLS port.
            args += ["--listen-host", host, "--advertise-host", host, "--insecure-listen"]
        if self.config.mesh:
            args += ["--mesh"]
        if self.ledger is not None:
            args += ["--genesis", str(self.ledger.genesis_path)]
            if spec.index == 0:
                args += ["--timekeeper-key", str(self.ledger.timekeeper_key)]
        if spec.perturb_outputs > 0:
            args += ["--test-perturb-outputs", str(spec.perturb_outputs)]
        args += list(self.config.node_args.get(spec.index, ()))
        if spec.autoscale:
            args += ["--autoscale"]
            if self.config.autoscale:
                slot.data_dir.mkdir(parents=True, exist_ok=True)
                path = slot.data_dir / "autoscale.toml"
                path.write_text(_autoscale_toml(self.config.autoscale))
                args += ["--config", str(path)]
        return args

    def _command(self, index: int, args: list[str]) -> list[str]:
        argv = [self.config.python, "-m", "swarm.simnet._child", str(os.getpid()), *args]
        return self._network.wrap(index, argv) if self._network is not None else argv

    async def _start(self, index: int, bootstrap: str | None) -> NodeHandle:
        slot = self._slots[index]
        slot.starting = True
        try:
            handle = await self._launch(slot, bootstrap)
        finally:
            slot.starting = False
        slot.history.append(handle)
        if slot.spec.slowdown > 1 or slot.slowdown > 1:
            self.set_slowdown(index, max(slot.slowdown, slot.spec.slowdown))
        log.info("node up", extra={"node": index, "pid": handle.pid, "grpc": handle.grpc,
                                   "p2p": handle.p2p[0] if handle.p2p else "-"})
        return handle

    async def _launch(self, slot: _Slot, bootstrap: str | None) -> NodeHandle:
        args = self._node_args(slot, bootstrap)
        argv = self._command(slot.spec.index, args)
        slot.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with _open_log(slot.log, f"=== simnet {time.strftime('%H:%M:%S')}: node "
                                 f"{slot.spec.index}: swarm-node {' '.join(args)}") as out:
            offset = out.tell()
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                process_group=0, env=env)
        self._children[process.pid] = process
        slot.incarnations += 1
        proc = _Proc(process=process)
        slot.proc = proc
        want_p2p = self._p2p
        deadline = time.monotonic() + self.config.start_timeout
        banner = await self._await_banner(slot, process, offset, want_p2p, deadline)
        status = await _live_status(banner.grpc, deadline, process)
        handle = NodeHandle(
            index=slot.spec.index, incarnation=slot.incarnations, spec=slot.spec,
            pid=process.pid, grpc=banner.grpc, metrics=banner.metrics, peer_id=banner.peer_id,
            p2p=banner.p2p, models=banner.models, data_dir=slot.data_dir, log=slot.log,
            price_per_request=status.price.per_request_micros,
            price_per_1k_items=status.price.per_1k_items_micros, tls=banner.tls)
        return handle

    async def _await_banner(self, slot: _Slot, process: asyncio.subprocess.Process, offset: int,
                            want_p2p: bool, deadline: float) -> Banner:
        served_since: float | None = None
        while True:
            banner = parse_banner(_read_from(slot.log, offset))
            # Registry models (name:tag) are served later, once their tag resolves.
            loaded_now = [m for m in slot.spec.models if m in SHIPPED_MODELS or m.endswith(".pt2")]
            if banner.grpc and len(banner.models) >= len(loaded_now):
                if not want_p2p or banner.p2p:
                    return banner
                served_since = served_since or time.monotonic()
                if time.monotonic() - served_since > self.config.p2p_wait:
                    return banner
            if process.returncode is not None:
                raise UnavailableError(f"node {slot.spec.index} exited with code {process.returncode} "
                                 f"while starting; its log {slot.log} ends with:\n"
                                 f"{_tail(slot.log)}")
            if time.monotonic() > deadline:
                raise UnavailableError(f"node {slot.spec.index} did not serve within "
                                 f"{self.config.start_timeout:g} s; see {slot.log}")
            await asyncio.sleep(0.05)

    def _running(self, index: int, what: str) -> _Proc:
        proc = self._slots[index].proc
        if proc is None or proc.process.returncode is not None:
            raise ClosedError(f"cannot {what} node {index}: it is not running")
        return proc

    async def _duty_cycle(self, process: asyncio.subprocess.Process, factor: float,
                          previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        period = self.config.duty_period
        stopped = period * (1 - 1 / factor)
        try:
            while process.returncode is None:
                self._signal(process, signal.SIGSTOP)
                await asyncio.sleep(stopped)
                self._signal(process, signal.SIGCONT)
                await asyncio.sleep(period - stopped)
        finally:
            self._signal(process, signal.SIGCONT)

    async def _stop_duty(self, proc: _Proc) -> None:
        task, proc.duty = proc.duty, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _signal(self, process: asyncio.subprocess.Process, sig: int) -> None:
        # returncode is set when the child is reaped: until then its pid (and group) are ours.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)

    async def _terminate(self, processes: Sequence[asyncio.subprocess.Process]) -> None:
        """SIGTERM, then SIGKILL whatever is still there after the grace period."""
        for p in processes:
            self._signal(p, signal.SIGCONT)
            self._signal(p, signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in processes]
        try:
            if waits:
                _, pending = await asyncio.wait(waits, timeout=self.config.stop_grace)
                if pending:
                    for p in processes:
                        self._signal(p, signal.SIGKILL)
                    await asyncio.wait(pending, timeout=self.config.stop_grace)
        finally:
            for w in waits:
                w.cancel()

    async def _stop_all(self) -> None:
        for slot in self._slots:
            if slot.proc is not None:
                await self._stop_duty(slot.proc)
        await self._terminate([p for p in self._children.values() if p.returncode is None])

    def kill_all_now(self) -> None:
        """SIGCONT + SIGKILL every node process not yet reaped (synchronous last resort)."""
        for process in self._children.values():
            self._signal(process, signal.SIGCONT)
            self._signal(process, signal.SIGKILL)


async def _live_status(address: str, deadline: float,
                        process: asyncio.subprocess.Process) -> node_pb2.NodeStatus:
    """Wait until the node answers (ServerLive); return its NodeService status.

    Live, not ready: a node told to serve a registry tag is ready only once it fetched
    and loaded the version, which simnet publishes after every node is up (the run
    then waits until the providers advertise it).
    """
    async with grpc.aio.insecure_channel(address) as channel:
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        status = node_pb2_grpc.NodeServiceStub(channel)
        while True:
            try:
                live = await inference.ServerLive(pb.ServerLiveRequest(), timeout=2.0)
                if live.live:
                    result: node_pb2.NodeStatus = await status.GetStatus(
                        node_pb2.GetStatusRequest(), timeout=2.0)
                    return result
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() > deadline or process.returncode is not None:
                    raise UnavailableError(f"node at {address} is not live: "
                                     f"{exc.code().name}") from exc
            if time.monotonic() > deadline:
                raise UnavailableError(f"node at {address} did not answer")
            await asyncio.sleep(0.1)


def _open_log(path: Path, header: str) -> BinaryIO:
    """The node's log, for appending (a rejoin appends to the same file), after a header."""
    out = open(path, "ab")  # noqa: SIM115 - the caller closes it
    out.write(header.encode() + b"\n")
    out.flush()
    return out


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _autoscale_toml(settings: Sequence[tuple[str, Any]]) -> str:
    """An `[autoscale]` table (numbers, booleans, strings, lists of strings) as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        return "[" + ", ".join(value(x) for x in v) + "]"

    return "[autoscale]\n" + "".join(f"{k} = {value(v)}\n" for k, v in settings)


@contextlib.asynccontextmanager
async def start_cluster(specs: Sequence[NodeSpec], config: ClusterConfig, *,
                        network: NetworkLayer | None = None) -> AsyncIterator[Cluster]:
    """Start one node per spec and yield the Cluster; stop every node on the way out."""
    if not specs:
        raise ConfigError("a cluster needs at least one node")
    if [s.index for s in specs] != list(range(len(specs))):
        raise ConfigError("node specs must be indexed 0..n-1 in order")
    if config.mesh and network is None:
        raise ConfigError("--mesh needs --netns (one network namespace per node: on one "
                          "network, every node's route to the overlay would be the same)")
    config.log_dir.mkdir(parents=True, exist_ok=True)
    cluster: Cluster | None = None
    raised: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="swarm-simnet-") as workdir:
        try:
            async with asyncio.TaskGroup() as tg:
                cluster = Cluster(specs, config, Path(workdir), tg, network)
                try:
                    await cluster._start_all()
                    yield cluster
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    await cluster._stop_all()
        except BaseExceptionGroup as group:
            # The TaskGroup wraps what the caller's block raised: give it back unwrapped.
            if raised is not None and list(group.exceptions) == [raised]:
                raise raised from None
            raise
        finally:
            if cluster is not None:
                cluster.kill_all_now()

