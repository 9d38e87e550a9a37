"""The provider agent: loads models, serves them over gRPC, exports metrics, drains on stop.

    async with Node(config) as node:      # started, models warm, ports bound
        ...                               # node.grpc_address, node.metrics_port
    # leaving the block drains in-flight requests, then stops

`Node.run()` is the same lifecycle for the daemon: it returns after `request_stop()`
(SIGTERM) once in-flight work has finished or `drain_timeout` passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import torch
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from swarm import __version__
from swarm._errors import ConfigError, SwarmError
from swarm._proto import _pool
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm.node._batching import Batcher, BatcherHooks, BatchTiming
from swarm.node._cache import ResponseCache
from swarm.node._config import NodeConfig
from swarm.node._hardware import detect_hardware, free_accelerator_memory
from swarm.node._metrics import NodeMetrics
from swarm.node._models import BatchStat, ModelTable, ServedModel, load_model, policy_for
from swarm.node._runtime import Model, select_device
from swarm.node._service import InferenceService, NodeStatusService
from swarm.protocol._identity import Identity

__all__ = ["Node", "NodeState"]

log = logging.getLogger("swarm.node")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
NODE_SERVICE = "swarm.v1.NodeService"


class NodeState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Node:
    def __init__(self, config: NodeConfig, *, identity: Identity | None = None,
                 models: list[Model] | None = None) -> None:
        self.config = config
        self.identity = identity
        self.state = NodeState.NEW
        self.metrics = NodeMetrics()
        self.table = ModelTable()
        self.cache = ResponseCache(max_bytes=config.cache_max_bytes)
        self.device = select_device(config.device)
        self.grpc_port = 0
        self.metrics_port = 0
        self.started_at = time.time()
        self._preloaded = models or []
        self._owned: list[Model] = []
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._health = health.aio.HealthServicer()

    # ------------------------------------------------------------------ public surface

    @property
    def grpc_address(self) -> str:
        return f"{self.config.advertise_host}:{self.grpc_port}"

    @property
    def peer_id(self) -> str:
        if self.identity is None:
            raise SwarmError("node identity is not loaded yet")
        return str(self.identity.peer_id)

    def is_ready(self) -> bool:
        return self.state is NodeState.SERVING

    def request_stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def start(self) -> None:
        """Run the node in a task of its own; return once it serves (or raise why it could not)."""
        if self.state is not NodeState.NEW:
            raise SwarmError(f"a node cannot be started twice (state {self.state.value})")
        self._run_task = asyncio.create_task(self.run(), name="node")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self._run_task  # re-raises the start-up failure
            raise SwarmError("node stopped during start-up")

    async def wait_stopped(self) -> None:
        if self._run_task is not None:
            await self._run_task

    async def stop(self) -> None:
        """Drain and stop a node started with start()."""
        self.request_stop()
        await self.wait_stopped()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if self.state not in (NodeState.NEW,):
            raise SwarmError(f"a node cannot be started twice (state {self.state.value})")
        self.state = NodeState.STARTING
        config = self.config
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        data_dir = config.data_dir.expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.identity is None:
            self.identity = await asyncio.to_thread(Identity.load_or_create, config.key_path)
        models = list(self._preloaded)
        for ref in config.serve:
            model = await asyncio.to_thread(self._load, ref)
            self._owned.append(model)
            models.append(model)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ])
        site_runner: web.AppRunner | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                for model in models:
                    served = self._serve_model(model)
                    tg.create_task(served.batcher.run(), name=f"batcher:{model.name}")
                self._add_services(server)
                self.grpc_port = self._bind(server)
                await server.start()
                site_runner = await self._start_http()
                await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
                await self._health.set(INFERENCE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
                self.state = NodeState.SERVING
                self.metrics.models_ready.set(len(self.table))
                self._write_state_file()
                log.info("node serving", extra={
                    "peer": self.peer_id, "grpc": self.grpc_address,
                    "metrics": self.metrics_port, "models": ",".join(m.name for m in models),
                    "device": str(self.device)})
                self._ready.set()
                await self._stop.wait()
                await self._drain(server)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self.state = NodeState.STOPPED
            await server.stop(None)
            if site_runner is not None:
                await site_runner.cleanup()
            for model in self._owned:  # preloaded models belong to the caller
                model.close()
            self._remove_state_file()
            log.info("node stopped")

    async def _drain(self, server: grpc.aio.Server) -> None:
        self.state = NodeState.DRAINING
        log.info("draining", extra={"timeout_s": self.config.drain_timeout})
        await self._health.enter_graceful_shutdown()
        # Stops accepting RPCs now; in-flight ones get drain_timeout to finish.
        await server.stop(self.config.drain_timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for served in self.table:
                    await served.batcher.drain()

    def _load(self, ref: str) -> Model:
        started = time.perf_counter()
        model = load_model(ref, self.device)
        model.warmup()
        log.info("model loaded", extra={
            "model": model.name, "digest": model.digest.short, "device": str(model.device),
            "seconds": round(time.perf_counter() - started, 2)})
        return model

    def _serve_model(self, model: Model) -> ServedModel:
        options = self.config.model_options(model.name)
        name = model.name
        batch_size = self.metrics.batch_size.labels(name)
        depth = self.metrics.queue_depth.labels(name)
        expired = self.metrics.expired.labels(name)
        served: ServedModel

        def on_batch(timing: BatchTiming) -> None:
            stats = served.stats
            stats.execution_count += 1
            stats.compute_input.add(timing.input_seconds, timing.requests)
            stats.compute_infer.add(timing.infer_seconds, timing.requests)
            stats.compute_output.add(timing.output_seconds, timing.requests)
            b = stats.batches.setdefault(timing.batch_size, BatchStat())
            b.compute_input.add(timing.input_seconds)
            b.compute_infer.add(timing.infer_seconds)
            b.compute_output.add(timing.output_seconds)
            batch_size.observe(timing.batch_size)

        hooks = BatcherHooks(on_batch=on_batch, on_expired=expired.inc, on_queue_depth=depth.set)
        batcher = Batcher(model, policy_for(model, options), hooks=hooks)
        served = ServedModel(model, batcher, options)
        self.table.add(served)
        return served

    def _add_services(self, server: grpc.aio.Server) -> None:
        inference = InferenceService(self.table, self.metrics, self.cache, version=__version__,
                                     is_ready=self.is_ready)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
        node_pb2_grpc.add_NodeServiceServicer_to_server(NodeStatusService(self.status), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, NODE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server, pool=_pool.POOL)

    def _bind(self, server: grpc.aio.Server) -> int:
        address = f"{self.config.listen_host}:{self.config.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen for gRPC on {address}")
        return int(port)

    async def _start_http(self) -> web.AppRunner | None:
        if self.config.metrics_port < 0:
            return None
        app = web.Application()
        app.router.add_get("/metrics", self._http_metrics)
        app.router.add_get("/healthz", self._http_live)
        app.router.add_get("/readyz", self._http_ready)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.listen_host, self.config.metrics_port,
                           reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen for metrics on port {self.config.metrics_port}: "
                              f"{exc}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.metrics_port = sockets[0].getsockname()[1] if sockets else self.config.metrics_port
        return runner

    async def _http_metrics(self, request: web.Request) -> web.Response:
        for served in self.table:
            self.metrics.queue_depth.labels(served.name).set(served.batcher.queue_depth)
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _http_live(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _http_ready(self, request: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.Response(text="ready\n" if ready else f"{self.state.value}\n",
                            status=200 if ready else 503)

    # ------------------------------------------------------------------ status

    def status(self) -> node_pb2.NodeStatus:
        hw = detect_hardware(self.device)
        return node_pb2.NodeStatus(
            peer_id=self.peer_id,
            software_version=__version__,
            grpc_endpoints=[self.grpc_address],
            models=[node_pb2.ServedModel(
                digest=str(s.digest), name=s.name,
                max_batch_size=s.batcher.policy.max_batch_size,
                items_per_second=s.batcher.items_per_second,
                queue_depth=s.batcher.queue_depth, ready=self.is_ready()) for s in self.table],
            hardware=node_pb2.Hardware(device_kind=hw.device_kind, device_count=hw.device_count,
                                       memory_bytes=hw.memory_bytes, device_name=hw.device_name),
            free_accelerator_memory_bytes=free_accelerator_memory(self.device),
            started_at_unix_ns=int(self.started_at * 1e9),
            draining=self.state is NodeState.DRAINING,
        )

    # ------------------------------------------------------------------ state file

    @property
    def state_file(self) -> Path:
        return self.config.data_dir.expanduser() / "node.json"

    def _state(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "peer_id": self.peer_id, "grpc": self.grpc_address,
                "metrics_port": self.metrics_port}

    def _write_state_file(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state()) + "\n")
        tmp.replace(self.state_file)

    def _remove_state_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(self.state_file.read_text()).get("pid") == os.getpid():
                self.state_file.unlink()


class _Stopped(Exception):
    """Raised inside the node's TaskGroup to cancel its long-running tasks on stop."""
