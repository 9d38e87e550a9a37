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
import functools
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict

import grpc
import torch
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from swarm import __version__
from swarm._errors import (
    ClosedError,
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    SwarmError,
    first_failure,
)
from swarm._proto import _pool
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm._types import Digest, ModelRef, PeerId
from swarm.node._autoscaler import Autoscaler, DemandMeter, Measured, NodeHost
from swarm.node._batching import Batcher, BatcherHooks, BatchTiming
from swarm.node._builtins import BUILTINS
from swarm.node._cache import ResponseCache
from swarm.node._certs import CertificateRotation, load_certificate
from swarm.node._config import NodeConfig, check_ports
from swarm.node._export import ExportedModel
from swarm.node._gateway import OpenAIGateway, RoutingGateway
from swarm.node._generate import (
    GENERATIVE_BUILTINS,
    ChatAPI,
    GenerateAPI,
    GenerationConfig,
    GenerationMetrics,
    GenerationStreams,
    GenerativeModel,
    generative_offer,
)
from swarm.node._hardware import detect_hardware, free_accelerator_memory
from swarm.node._ledger import LEDGER_SERVICE, LedgerAgent, add_ledger_service
from swarm.node._metrics import NodeMetrics
from swarm.node._models import (
    BatchStat,
    ModelTable,
    ServedModel,
    load_model,
    policy_for,
    served_batch_size,
)
from swarm.node._replicas import NodeReplicaHost, Replicas, canonical_device
from swarm.node._rest import OpenInferenceHTTP
from swarm.node._runtime import (
    Model,
    ThreadPolicy,
    local_devices,
    select_device,
    set_thread_policy,
)
from swarm.node._service import InferenceService, NodeStatusService, Perturb, RejectUndecodable
from swarm.protocol import (
    Advert,
    Gossip,
    Hardware,
    Identity,
    Membership,
    MembershipConfig,
    MeshAgent,
    MeshOptions,
    ModelOffer,
    NodeCertificate,
    PeerView,
    Price,
    endpoint_for,
)
from swarm.registry import (
    DEFAULT_TAG,
    BlobStore,
    ManifestStore,
    ModelFormat,
    RegistryAgent,
    RegistryConfig,
    RegistryServicer,
    Rollout,
    RolloutConfig,
    ServiceConfig,
    add_registry_service,
    owner_keys,
)
from swarm.routing import Router
from swarm.scheduler import SchedulerConfig
from swarm.staking import eligible

__all__ = ["Node", "NodeState"]

log = logging.getLogger("swarm.node")
# Seconds a relayed generation (OpenAI API of a gateway) may take from start to end.
RELAY_TIMEOUT = 600.0

INFERENCE_SERVICE = "inference.GRPCInferenceService"
NODE_SERVICE = "swarm.v1.NodeService"
REGISTRY_SERVICE = "swarm.v1.RegistryService"


def _generation_config(config: NodeConfig) -> GenerationConfig:
    """The generation engine's limits from the node's settings (generation_*)."""
    return GenerationConfig(max_num_seqs=config.generation_max_seqs,
                            max_batched_tokens=config.generation_step_tokens,
                            max_model_len=config.generation_max_len,
                            kv_cache_tokens=config.generation_kv_tokens,
                            weights=config.generation_weights)


def registry_ref(ref: str) -> ModelRef | None:
    """The registry model a --serve reference names (None: a built-in or a .pt2 file)."""
    if ref.endswith(".pt2"):
        return None
    parsed = ModelRef.parse(ref)
    return None if parsed.name in BUILTINS else parsed


class NodeState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


GossipFactory = Callable[[Identity, NodeConfig], Awaitable[Gossip]]


async def libp2p_gossip(identity: Identity, config: NodeConfig) -> Gossip:
    from swarm.protocol import Libp2pConfig, Libp2pGossip

    return await Libp2pGossip.start(identity, Libp2pConfig(
        host=config.listen_host, port=config.p2p_port, bootstrap=config.bootstrap,
        enable_mdns=config.mdns))


class Node:
    """`gossip_factory` replaces libp2p (simnet and tests pass the in-memory transport)."""

    def __init__(self, config: NodeConfig, *, identity: Identity | None = None,
                 models: list[Model] | None = None,
                 gossip_factory: GossipFactory | None = None,
                 registry_config: RegistryConfig | None = None,
                 rollout_config: RolloutConfig | None = None,
                 perturb: Perturb | None = None) -> None:
        self.config = config
        # Test only: swarm-node run --test-perturb-outputs (InferenceService's Perturb).
        self.perturb = perturb
        self.identity = identity
        self.state = NodeState.NEW
        self.metrics = NodeMetrics(max_forwarded_models=config.max_forwarded_models)
        self.table = ModelTable()
        self.cache = ResponseCache(max_bytes=config.cache_max_bytes)
        # With `devices`, models load on the first of them; more instances go on the rest.
        self.device = select_device(config.devices[0] if config.devices and config.device == "auto"
                                    else config.device)
        self.devices = _devices(config, self.device)
        self.grpc_port = 0
        # TLS gRPC port (advertised to peers; 0: none) and the certificate it serves.
        self.tls_port = 0
        self.certificates: CertificateRotation | None = None
        self.metrics_port = 0
        self.started_at = time.time()
        self._preloaded = models or []
        self._owned: list[Model] = []
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._health = health.aio.HealthServicer()
        self._gossip_factory = gossip_factory or libp2p_gossip
        self.gossip: Gossip | None = None
        self.membership: Membership | None = None
        self.http_port = 0
        # The WireGuard mesh (--mesh), up while the node runs.
        self.mesh: MeshAgent | None = None
        # Routes requests for models this node does not serve (gateway), over its peer view.
        # With a genesis, only providers eligible on our own ledger get forwarded work.
        self.router = (Router(self._peer_view, signed_tags=self._signed_targets,
                              config=SchedulerConfig(stake_ok=self._stake_ok))
                       if config.p2p_port >= 0 else None)
        self._service: InferenceService | None = None
        self._hardware = detect_hardware(self.device)
        self._registry_config = registry_config or RegistryConfig(
            replication_factor=config.replication_factor,
            allowlist={ns: owner_keys(keys) for ns, keys in config.allowlist.items()},
            max_namespaces_per_key=config.registry_max_namespaces_per_key,
            max_tags_per_namespace=config.registry_max_tags_per_namespace,
            max_tags=config.registry_max_tags)
        self._rollout_config = rollout_config or RolloutConfig()
        self.manifests: ManifestStore | None = None
        self.registry: RegistryAgent | None = None
        self.rollout: Rollout[Model] | None = None
        # Versions stored here in full (advertised; cached: computing it reads the disk).
        self._stored: tuple[Digest, ...] = ()
        self._tg: asyncio.TaskGroup | None = None
        self._batchers: dict[Digest, asyncio.Task[None]] = {}
        # Registry models named by tag on --serve: served as their tags move.
        self._follow: list[ModelRef] = []
        # Generative models (builtin/smollm2) by name: served by their engines, not the batcher.
        self.generative: dict[str, GenerativeModel] = {}
        self.metrics.registry.register(_RegistryCollector(self))
        self._generation_metrics = GenerationMetrics(
            self.metrics.registry, lambda: {n: g.engine for n, g in self.generative.items()})
        # Autoscaling (swarm.autoscale): the demand signal every advert carries, the driver
        # when enabled, and versions being released (no longer advertised).
        self._meter = DemandMeter(window=config.advert_interval)
        self.autoscaler: Autoscaler | None = None
        self.releasing: set[Digest] = set()
        self._model_bytes: dict[Digest, int] = {}
        # Local replicas: how each served version loads again on a device ("cuda:1"), and
        # the driver (mode auto with several devices).
        self.sources: dict[Digest, Callable[[str], Model]] = {}
        self.replicas: Replicas | None = None
        # The staking ledger (--genesis), open while the node runs.
        self.ledger: LedgerAgent | None = None
        self.metrics.registry.register(_LedgerCollector(self))

    # ------------------------------------------------------------------ public surface

    @property
    def certificate(self) -> NodeCertificate:
        """The certificate the TLS listeners serve now."""
        if self.certificates is None:
            raise ConfigError("the node has no certificate yet (start the node first)")
        return self.certificates.current

    @property
    def grpc_address(self) -> str:
        """The plaintext gRPC address (loopback unless --insecure-listen)."""
        if self._plaintext_host() == self.config.listen_host:
            return f"{self.config.advertise_host}:{self.grpc_port}"
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def tls_address(self) -> str:
        """The TLS gRPC address peers dial (what the advert carries); "" without one."""
        return f"{self.config.advertise_host}:{self.tls_port}" if self.tls_port else ""

    def _plaintext_host(self) -> str:
        """Nothing listens in plaintext beyond loopback unless the operator says so."""
        config = self.config
        return config.listen_host if config.loopback_only or config.insecure_listen \
            else "127.0.0.1"

    @property
    def http_tls(self) -> bool:
        """Whether the HTTP listeners (OpenAI API, metrics) serve TLS."""
        config = self.config
        return config.tls_http or not (config.loopback_only or config.insecure_listen)

    def _http_tls(self) -> ssl.SSLContext | None:
        if not self.http_tls:
            return None
        assert self.certificates is not None
        context = self.certificates.current.server_context()
        self.certificates.contexts.append(context)
        return context

    @property
    def peer_id(self) -> str:
        if self.identity is None:
            raise ConfigError("node identity is not loaded yet (start the node first)")
        return str(self.identity.peer_id)

    def waiting_for(self) -> list[str]:
        """The `--serve` references not served yet (a registry version still fetching)."""
        waiting = []
        for ref in self._follow:
            try:
                self.table.resolve(str(ref))
            except ModelNotFoundError:
                waiting.append(str(ref))
        return waiting

    def is_ready(self) -> bool:
        """Triton's strict readiness: serving, and every model it was told to serve is loaded.

        Liveness (the process answers) is separate: a node fetching a version is live and
        not ready, so a load balancer or orchestrator waits for it.
        """
        return self.state is NodeState.SERVING and not self.waiting_for()

    def request_stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def start(self) -> None:
        """Run the node in a task of its own; return once it serves (or raise why it could not)."""
        if self.state is not NodeState.NEW:
            raise ClosedError(f"a node cannot be started twice (state {self.state.value})")
        self._run_task = asyncio.create_task(self.run(), name="node")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self._run_task  # re-raises the start-up failure
            raise ClosedError("node stopped during start-up")

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
            raise ClosedError(f"a node cannot be started twice (state {self.state.value})")
        self.state = NodeState.STARTING
        config = self.config
        try:
            # Every busy port in one error, before the identity and the models (seconds).
            check_ports(config)
        except ConfigError:
            self.state = NodeState.STOPPED
            raise
        # Intra-op threads that spin on a core the event loop needs make small batches
        # 25x slower on a 2-core machine (bench/RESULTS.md): short passes leave a core to
        # gRPC, long ones (big batches) use them all.
        set_thread_policy(ThreadPolicy.for_machine(os.cpu_count() or 2, config.torch_threads))
        data_dir = config.data_dir.expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.identity is None:
            self.identity = await asyncio.to_thread(Identity.load_or_create, config.key_path)
        certificate = await asyncio.to_thread(load_certificate, config, self.identity)
        self.certificates = CertificateRotation(config, self.identity, certificate)
        models = list(self._preloaded)
        follow = self._follow
        for ref in config.serve:
            if ref in GENERATIVE_BUILTINS:
                generative = await asyncio.to_thread(GENERATIVE_BUILTINS[ref], self.device,
                                                     _generation_config(config))
                self._generation_metrics.attach(ref, generative.engine)
                self.generative[ref] = generative
                continue
            tagged = registry_ref(ref)
            if tagged is not None:  # served once fetched; follows its tag (rollout/rollback)
                follow.append(tagged)
                if tagged.digest is None:
                    self.table.follow(tagged.name, tagged.tag or DEFAULT_TAG)
                continue
            model = await asyncio.to_thread(self._load, ref)
            self._owned.append(model)
            models.append(model)
            self.sources[model.digest] = functools.partial(self._load_on, ref)
        self.manifests = ManifestStore(BlobStore(data_dir / "registry"))
        if config.genesis is not None:
            # On the loop's thread: the SQLite connection stays on the thread that opened it.
            self.ledger = self._open_ledger(data_dir)
        self._stored = tuple(await asyncio.to_thread(self.manifests.complete_versions))
        server = grpc.aio.server(interceptors=[RejectUndecodable()], options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ])
        site_runner: web.AppRunner | None = None
        openai_runner: web.AppRunner | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for model in models:
                    self._start_serving(model, default=True)
                for name, generative in self.generative.items():
                    tg.create_task(generative.engine.run(), name=f"engine:{name}")
                if config.p2p_port >= 0:
                    # Before the services: the registry service answers from the agent's tags.
                    self.gossip = await self._gossip_factory(self.identity, config)
                    self.registry = RegistryAgent(
                        self.gossip, self.manifests, view=self._peer_view,
                        config=self._registry_config, on_stored=self._on_stored)
                    # The signed tags saved before a restart, re-verified, before the
                    # registry service answers from them and before --serve follows them.
                    await self.registry.load()
                elif follow:
                    raise ConfigError("serving registry models needs peer-to-peer (p2p_port >= 0)")
                elif config.autoscale.enabled:
                    raise ConfigError("autoscaling needs peer-to-peer (p2p_port >= 0)")
                if self.ledger is not None:
                    self.ledger.attach(self.gossip, self._peer_view, identity=self.identity,
                                       price_per_request=config.price_per_request,
                                       price_per_1k_items=config.price_per_1k_items)
                if config.mesh:
                    self.mesh = await self._start_mesh(data_dir)
                self._add_services(server)
                self.grpc_port = self._bind(server)
                self.tls_port = self._bind_tls(server)
                if self.mesh is not None:
                    self._bind_overlay(server, self.mesh)
                await server.start()
                site_runner = await self._start_http()
                openai_runner = await self._start_openai()
                if self.gossip is not None and self.registry is not None:
                    self.membership = Membership(
                        self.gossip, identity=self.identity, source=self.advert,
                        config=MembershipConfig(advert_interval=config.advert_interval),
                        trust=self._stake_trust)
                    tg.create_task(self.membership.run(), name="membership")
                    tg.create_task(self.registry.run(), name="registry")
                    if self.ledger is not None:
                        tg.create_task(self.ledger.run(), name="ledger")
                    if self.mesh is not None:
                        tg.create_task(self.mesh.run(
                            self._membership_view, period=min(0.5, config.advert_interval / 4)),
                            name="mesh")
                    self.rollout = Rollout(_NodeDeployment(self), self._load_version,
                                           config=self._rollout_config)
                    for tagged in follow:
                        tg.create_task(self.rollout.follow(
                            tagged.name, self.registry.watch(tagged), self.registry.ensure),
                            name=f"follow:{tagged}")
                    if config.autoscale.enabled:
                        self.autoscaler = Autoscaler(NodeHost(self), config.autoscale)
                        tg.create_task(self.autoscaler.run(), name="autoscale")
                if config.replicas.mode == "auto" and len(self.devices) > 1:
                    self.replicas = Replicas(NodeReplicaHost(self), self.devices,
                                             config.replicas)
                    tg.create_task(self.replicas.run(), name="replicas")
                await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
                await self._health.set(INFERENCE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
                self.state = NodeState.SERVING
                self.metrics.models_ready.set(len(self.table))
                self._write_state_file()
                if self._follow:
                    log.info("not ready until these are fetched and loaded", extra={
                        "waiting_for": ",".join(str(ref) for ref in self._follow)})
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
        except* SwarmError as group:
            # A start-up failure inside the TaskGroup (a port in use) surfaces as itself,
            # with any other failure of the group noted on it.
            raise first_failure(group) from None
        finally:
            self.state = NodeState.STOPPED
            if self.gossip is not None:
                await self.gossip.close()
            await server.stop(None)
            for runner in (site_runner, openai_runner):
                if runner is not None:
                    await runner.cleanup()
            if self.router is not None:
                await self.router.close()
            if self.mesh is not None:
                await self.mesh.close()
            if self.ledger is not None:
                await self.ledger.aclose()
            for model in self._owned:  # preloaded models belong to the caller
                model.close()
            for generative in self.generative.values():
                generative.close()
            self._remove_state_file()
            log.info("node stopped")

    async def _drain(self, server: grpc.aio.Server) -> None:
        self.state = NodeState.DRAINING
        log.info("draining", extra={"timeout_s": self.config.drain_timeout})
        if self.membership is not None:  # tell clients first, so they route elsewhere
            with contextlib.suppress(Exception):
                await self.membership.publish_now()
        await self._health.enter_graceful_shutdown()
        # The service now refuses new inference with UNAVAILABLE (a status clients retry
        # elsewhere) while in-flight requests finish; only then does the server stop.
        # Stopping the server first would answer some new calls CANCELLED (grpc#41785).
        # Generation engines take no new sequences and finish the running ones (streams
        # still open past the deadline end with finish_reason "abort"; the SDK and the
        # gateway resume them on another provider).
        assert self._service is not None
        deadline = self.config.drain_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await asyncio.gather(self._service.wait_idle(),
                                     *(g.engine.drain(deadline) for g in self.generative.values()))
        await server.stop(1.0)

    def _load(self, ref: str, device: torch.device | None = None) -> Model:
        started = time.perf_counter()
        model = load_model(ref, device or self.device)
        model.warmup()
        log.info("model loaded", extra={
            "model": model.name, "digest": model.digest.short, "device": str(model.device),
            "seconds": round(time.perf_counter() - started, 2)})
        return model

    def _load_on(self, ref: str, device: str) -> Model:
        """Another instance of a --serve model, on `device` (a local replica; a thread)."""
        return self._load(ref, torch.device(device))

    def _version_on(self, digest: Digest, device: str) -> Model:
        """Another instance of a registry version, on `device` (a local replica; a thread)."""
        return self._load_version(digest, torch.device(device))

    def _start_serving(self, model: Model, *, default: bool) -> ServedModel:
        """Run a batcher for `model`, then make it reachable (the name's default if asked)."""
        assert self._tg is not None
        served = self._serve_model(model)
        self._batchers[model.digest] = self._tg.create_task(
            served.batcher.run(), name=f"batcher:{model.name}:{model.digest.short}")
        self.table.add(served, default=default)
        self.metrics.models_ready.set(len(self.table))
        if self.membership is not None:
            self.membership.notify_change()
        return served

    def _load_version(self, digest: Digest, device: torch.device | None = None) -> Model:
        """Load and warm up a stored registry version (runs in a thread; Rollout's loader)."""
        assert self.manifests is not None
        manifest = self.manifests.get(digest)
        if manifest.format is not ModelFormat.TORCH_EXPORT or len(manifest.files) != 1:
            raise ModelLoadError(f"{manifest.name} {digest.short}: only single-file "
                                 "torch_export versions are served so far")
        data = self.manifests.blobs.read(manifest.files[0].digest)  # verified
        started = time.perf_counter()
        # The publisher's batch size is a wish: warm-up allocates a batch of it (2**32-1
        # would be 128 GiB), so the node's bound caps it.
        batch = served_batch_size(manifest.batching.max_batch_size,
                                  self.config.model_options(manifest.name),
                                  self.config.max_served_batch_size)
        model = ExportedModel(manifest.name, data, device or self.device,
                              max_batch_size=batch, digest=digest)
        model.warmup()
        log.info("model loaded", extra={
            "model": model.name, "digest": digest.short, "device": str(model.device),
            "seconds": round(time.perf_counter() - started, 2)})
        return model

    def _signed_targets(self, ref: ModelRef) -> tuple[Digest, ...] | None:
        """What the gateway routes a tag to: the targets of its signed records."""
        return None if self.registry is None else self.registry.signed_targets(ref)

    def _tags_of(self, name: str, digest: Digest) -> tuple[str, ...]:
        """Tags this node follows for `name` that point at `digest` now (advertised)."""
        if self.registry is None:
            return ()
        tags = []
        for ref in self._follow:
            if ref.name == name and ref.tag is not None:
                with contextlib.suppress(ModelNotFoundError):
                    if self.registry.resolve(ref) == digest:
                        tags.append(ref.tag)
        return tuple(tags)

    def _on_stored(self, digest: Digest) -> None:
        self._stored = tuple(sorted({*self._stored, digest}, key=lambda d: d.hex))
        if self.membership is not None:
            self.membership.notify_change()

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
        return served

    def deployment(self) -> _NodeDeployment:
        """The served versions as the registry's Deployment (rollout, autoscaling)."""
        return _NodeDeployment(self)

    def model_bytes(self, digest: Digest) -> int:
        """Bytes a served registry version's files take (0: not a registry version)."""
        if digest not in self._model_bytes:
            size = 0
            if self.manifests is not None and self.manifests.has(digest):
                size = sum(f.size for f in self.manifests.get(digest).files)
            self._model_bytes[digest] = size
        return self._model_bytes[digest]

    def _open_ledger(self, data_dir: Path) -> LedgerAgent:
        from swarm.staking import Genesis

        config = self.config
        assert config.genesis is not None
        genesis = Genesis.load(config.genesis.expanduser())
        timekeeper = (Identity.load(config.timekeeper_key.expanduser())
                      if config.timekeeper_key is not None else None)
        agent = LedgerAgent(genesis, data_dir / "ledger.sqlite", timekeeper=timekeeper)
        log.info("staking on", extra={"network": genesis.params.name,
                                      "chain": genesis.chain.hex()[:16],
                                      "log": len(agent.ledger.log),
                                      "timekeeper": timekeeper is not None})
        return agent

    def _stake_ok(self, peer: PeerId) -> bool:
        """The gateway's stake rule: swarm.staking.eligible at the network's minimum."""
        agent = self.ledger
        if agent is None:
            return True
        state = agent.state
        return eligible(state, peer, state.params.min_stake)

    def stake_rule(self) -> Callable[[PeerId], bool] | None:
        """The stake rule (eligible at the network's minimum) when staking is on, else None."""
        return self._stake_ok if self.ledger is not None else None

    def _stake_trust(self, peer: PeerId) -> float:
        """Membership's view budget: bonded stake on our own ledger (unknown: 0)."""
        return float(self.ledger.state.stake(peer)) if self.ledger is not None else 0.0

    def _membership_view(self) -> PeerView:
        return self.membership.view if self.membership is not None else PeerView()

    def _peer_view(self) -> PeerView:
        """The view routing and blob fetches use: mesh peers' overlay endpoints first."""
        view = self._membership_view()
        return self.mesh.prefer_overlay(view) if self.mesh is not None else view

    async def _start_mesh(self, data_dir: Path) -> MeshAgent:
        config = self.config
        endpoint = config.mesh_endpoint or endpoint_for(config.advertise_host, config.mesh_port)
        mesh = MeshAgent(MeshOptions(
            prefix=config.mesh_prefix, listen_port=config.mesh_port, endpoint=endpoint,
            behind_nat=config.mesh_behind_nat, relay=config.mesh_relay, mtu=config.mesh_mtu,
            underlay_host=config.advertise_host), data_dir,
            trust=self._stake_trust if self.ledger is not None else None)
        await mesh.start()
        return mesh

    def _bind_overlay(self, server: grpc.aio.Server, mesh: MeshAgent) -> None:
        """Serve gRPC on the overlay address too, for other members: over identity-bound
        TLS on the TLS port (what peers dial; mesh + TLS), or, with TLS off, plaintext on
        the gRPC port (inside WireGuard)."""
        wanted = self.tls_port or self.grpc_port
        address = f"[{mesh.address}]:{wanted}"
        try:
            if self.tls_port:
                assert self.certificates is not None
                port = server.add_secure_port(address, self.certificates.grpc_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port != wanted:
            raise ConfigError(f"cannot listen for gRPC on {address}")
        mesh.grpc_port = port

    def _add_services(self, server: grpc.aio.Server) -> None:
        config = self.config
        gateway = (RoutingGateway(self.router, max_models=config.max_forwarded_models)
                   if self.router is not None else None)
        inference = InferenceService(self.table, self.metrics, self.cache, version=__version__,
                                     is_ready=self.is_ready, gateway=gateway,
                                     max_stream_in_flight=config.max_stream_in_flight,
                                     identity=self.identity, perturb=self.perturb)
        inference.generation = GenerationStreams(self.generative.get, lambda: self.router)
        self._service = inference
        if self.ledger is not None and self.ledger.payments is not None:
            # With a genesis and a price, unpaid requests are refused (PERMISSION_DENIED).
            inference.payments = self.ledger.payments.charge
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
        node_pb2_grpc.add_NodeServiceServicer_to_server(NodeStatusService(self.status), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = [INFERENCE_SERVICE, NODE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.registry is not None and self.manifests is not None:
            service = ServiceConfig(max_push_bytes=config.registry_max_push_bytes,
                                    push_idle_timeout=config.registry_push_idle_timeout)
            add_registry_service(RegistryServicer(self.manifests, self.registry, config=service,
                                                  on_stored=self._on_stored), server)
            services.append(REGISTRY_SERVICE)
        if self.ledger is not None:
            add_ledger_service(self.ledger, server)
            services.append(LEDGER_SERVICE)
        reflection.enable_server_reflection(tuple(services), server, pool=_pool.POOL)

    def _bind_tls(self, server: grpc.aio.Server) -> int:
        port = self.config.tls_listen_port
        if port < 0:
            return 0
        assert self.certificates is not None
        address = f"{self.config.listen_host}:{port}"
        credentials = self.certificates.grpc_credentials()
        try:
            bound = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for TLS gRPC on {address}: {exc}") from exc
        if bound == 0:
            raise ConfigError(f"cannot listen for TLS gRPC on {address}")
        return int(bound)

    def _bind(self, server: grpc.aio.Server) -> int:
        address = f"{self._plaintext_host()}:{self.config.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen for gRPC on {address}")
        return int(port)

    async def _serve_http(self, app: web.Application, port: int,
                          what: str) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.listen_host, port, reuse_port=False,
                           ssl_context=self._http_tls())
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen for {what} on port {port}: {exc}") from exc
        sockets = getattr(site._server, "sockets", None) or []
        return runner, (sockets[0].getsockname()[1] if sockets else port)

    async def _start_http(self) -> web.AppRunner | None:
        if self.config.metrics_port < 0:
            return None
        app = web.Application()
        app.router.add_get("/metrics", self._http_metrics)
        app.router.add_get("/healthz", self._http_live)
        app.router.add_get("/readyz", self._http_ready)
        runner, self.metrics_port = await self._serve_http(app, self.config.metrics_port,
                                                           "metrics")
        return runner

    async def _start_openai(self) -> web.AppRunner | None:
        if self.config.http_port < 0:
            return None
        assert self._service is not None
        gateway = OpenAIGateway(self._service, self.table, lambda: self.router,
                                metrics=self.metrics,
                                max_body_bytes=self.config.http_max_body_bytes,
                                max_json_depth=self.config.http_max_json_depth,
                                generative=self.generative.keys)
        app = gateway.app()
        streams = GenerationStreams(self.generative.get, lambda: self.router)
        # Generation routes first: /v2/models/NAME/generate must not reach the KServe
        # routes' model path (a percent-encoded NAME is one segment there).
        ChatAPI(self.generative.get,
                relay=lambda request: streams.stream(request, RELAY_TIMEOUT)).add_routes(app)
        GenerateAPI(self.generative.get,
                    relay=lambda request: streams.stream(request, RELAY_TIMEOUT)).add_routes(app)
        OpenInferenceHTTP(self._service, metrics=self.metrics,
                          max_body_bytes=self.config.http_max_body_bytes,
                          max_json_depth=self.config.http_max_json_depth).mount(app)
        runner, self.http_port = await self._serve_http(
            app, self.config.http_port, "the HTTP APIs (OpenAI, KServe v2)")
        return runner

    async def _http_metrics(self, request: web.Request) -> web.Response:
        for served in self.table:
            self.metrics.queue_depth.labels(served.name).set(served.batcher.queue_depth)
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _http_live(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _http_ready(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.Response(text="ready\n", status=200)
        waiting = self.waiting_for() if self.state is NodeState.SERVING else []
        text = f"waiting for {', '.join(waiting)}\n" if waiting else f"{self.state.value}\n"
        return web.Response(text=text, status=503)

    # ------------------------------------------------------------------ status

    @property
    def multiaddrs(self) -> list[str]:
        # A wildcard listen address is not dialable: advertise the advertised host instead.
        return [a.replace("/ip4/0.0.0.0/", f"/ip4/{self.config.advertise_host}/", 1)
                for a in getattr(self.gossip, "listen_addrs", [])]

    def advert(self) -> Advert:
        """What this node offers now (Membership adds sequence, timestamp and TTL)."""
        assert self.identity is not None
        hw = self._hardware
        served = [s for s in self.table if s.digest not in self.releasing]
        demand = self._meter.measure(served)
        offers = tuple(ModelOffer(
            digest=s.digest, name=s.name, tags=self._tags_of(s.name, s.digest),
            max_batch_size=s.batcher.policy.max_batch_size,
            items_per_second=round(s.batcher.items_per_second, 1),
            queue_depth=s.batcher.queue_depth,
            **_demand_fields(demand.get(s.digest)), memory_bytes=self.model_bytes(s.digest),
            autoscaled=self.autoscaler is not None and s.digest in self.autoscaler.managed,
        ) for s in served)
        offers += tuple(generative_offer(g) for g in self.generative.values())
        return Advert(
            peer_id=self.identity.peer_id,
            # Peers dial the TLS port only (they pin its identity-bound certificate).
            endpoints=(self.tls_address,) if self.tls_address else (),
            models=offers,
            sequence=0, timestamp=0.0, ttl=0.0,
            queue_depth=sum(o.queue_depth for o in offers),
            free_accelerator_memory=free_accelerator_memory(self.device),
            hardware=Hardware(hw.device_kind, hw.device_count, hw.memory_bytes, hw.device_name),
            price=Price(self.config.price_per_request, self.config.price_per_1k_items),
            region=self.config.region,
            software_version=__version__,
            draining=self.state is not NodeState.SERVING,
            stored=self._stored,
            p2p_addrs=tuple(self.multiaddrs),
            mesh=self.mesh.member if self.mesh is not None else None,
        )

    def status(self) -> node_pb2.NodeStatus:
        hw = self._hardware
        return node_pb2.NodeStatus(
            peer_id=self.peer_id,
            software_version=__version__,
            grpc_endpoints=[self.grpc_address],
            models=[node_pb2.ServedModel(
                digest=str(s.digest), name=s.name,
                max_batch_size=s.batcher.policy.max_batch_size,
                items_per_second=s.batcher.items_per_second,
                queue_depth=s.batcher.queue_depth, ready=self.is_ready(),
                instance_devices=[canonical_device(str(m.device)) for m in s.batcher.instances],
                replicas_reason=(self.replicas.latest.get(s.digest, "")
                                 if self.replicas is not None else ""))
                for s in self.table],
            hardware=node_pb2.Hardware(device_kind=hw.device_kind, device_count=hw.device_count,
                                       memory_bytes=hw.memory_bytes, device_name=hw.device_name),
            price=node_pb2.Price(per_request_micros=self.config.price_per_request,
                                 per_1k_items_micros=self.config.price_per_1k_items),
            region=self.config.region,
            free_accelerator_memory_bytes=free_accelerator_memory(self.device),
            started_at_unix_ns=int(self.started_at * 1e9),
            draining=self.state is not NodeState.SERVING,
            autoscale=self.autoscaler is not None,
            scaling=[node_pb2.ScalingEvent(
                at_unix_ns=int(e.at * 1e9), action=e.action.value, model=e.name,
                digest=str(e.digest), reason=e.reason, outcome=e.outcome, error=e.error)
                for e in (self.autoscaler.events if self.autoscaler is not None else ())],
            replicas=self.config.replicas.mode, devices=self.devices,
            replica_scaling=[node_pb2.ScalingEvent(
                at_unix_ns=int(e.at * 1e9), action=e.action, model=e.name, digest=str(e.digest),
                reason=e.reason, outcome=e.outcome, error=e.error, device=e.device)
                for e in (self.replicas.events if self.replicas is not None else ())],
        )

    # ------------------------------------------------------------------ state file

    @property
    def state_file(self) -> Path:
        return self.config.data_dir.expanduser() / "node.json"

    def _state(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "peer_id": self.peer_id, "grpc": self.grpc_address,
                "tls": self.tls_address,
                "metrics_port": self.metrics_port, "multiaddrs": self.multiaddrs}

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


def _devices(config: NodeConfig, device: torch.device) -> list[str]:
    """The devices instances of a model may run on (canonical names; the first: `device`).
    Named ones must exist (checked here: the config check has no torch)."""
    if not config.devices:
        return [canonical_device(str(d)) for d in local_devices(device)]
    count = torch.cuda.device_count() if config.devices[0] != "cpu" else 0
    for name in config.devices:
        if name != "cpu":
            index = torch.device(name).index or 0
            if index >= count:
                raise ConfigError(f"devices: {name} does not exist here ({count} CUDA "
                                  "device(s))")
    return [canonical_device(d) for d in config.devices]


class _Demand(TypedDict, total=False):
    arrival_rate: float
    queue_wait: float
    utilization: float


def _demand_fields(measured: Measured | None) -> _Demand:
    if measured is None:
        return {}
    return {"arrival_rate": round(measured.arrival_rate, 3),
            "queue_wait": round(measured.queue_wait, 4),
            "utilization": round(measured.utilization, 3)}


class _LedgerCollector:
    """The staking ledger's totals and item counters (nothing without --genesis)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        agent = self._node.ledger
        if agent is None:
            return
        yield from agent.metrics()
        if self._node.identity is not None:
            yield agent.balance_metric(self._node.identity.peer_id)


class _RegistryCollector:
    """The registry agent's and rollout's event counters as Prometheus counters."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for prefix, source in (("registry", self._node.registry), ("rollout", self._node.rollout)):
            family = CounterMetricFamily(f"swarm_{prefix}_events", f"{prefix.capitalize()} events "
                                         "(tags, fetches, chunks rejected, rollouts).",
                                         labels=["event"])
            for event, count in (source.counters if source is not None else {}).items():
                family.add_metric([event], count)
            yield family
        if self._node.mesh is not None:
            mesh = CounterMetricFamily("swarm_mesh_events", "WireGuard mesh events (peers "
                                       "added, removed, refused; wireguard-go restarts).",
                                       labels=["event"])
            for event, count in self._node.mesh.counters.items():
                mesh.add_metric([event], count)
            yield mesh
        membership = self._node.membership
        if membership is not None:
            adverts = CounterMetricFamily(
                "swarm_gossip_adverts", "Adverts by what became of them (accepted, refused by "
                "the view's bounds, forged, rate_limited, introduce_limited, relay_limited, "
                "published, ...) and snapshot pulls: how a flood shows.", labels=["event"])
            for event, count in (membership.counters | membership.snapshot_counters).items():
                adverts.add_metric([event], count)
            yield adverts
        refused = CounterMetricFamily(
            "swarm_tls_peer_refused", "TLS handshakes refused because the server did not "
            "prove the expected peer id (impersonation or a stale advert).", labels=["client"])
        router, registry = self._node.router, self._node.registry
        for client, channels in (("router", router.channels if router is not None else None),
                                 ("registry", registry.channels if registry is not None
                                  else None)):
            refused.add_metric([client], channels.refused if channels is not None else 0)
        yield refused
        scaler = self._node.autoscaler
        actions = CounterMetricFamily(
            "swarm_autoscale_actions", "Autoscaling actions by kind and outcome (started, done, "
            "failed); swarm-node status shows the latest with their reasons.",
            labels=["action", "outcome"])
        for (action, outcome), count in (scaler.counters.by if scaler is not None else {}).items():
            actions.add_metric([action, outcome], count)
        yield actions
        if scaler is not None:
            managed = GaugeMetricFamily("swarm_autoscale_managed_models",
                                        "Model versions the autoscaler loaded here.")
            managed.add_metric([], len(scaler.managed))
            yield managed
        instances = GaugeMetricFamily(
            "swarm_model_instances", "Instances serving each model's queue here (local "
            "replicas: one per device as load requires; versions of a name summed).",
            labels=["model"])
        by_name: dict[str, int] = {}
        for served in self._node.table:
            by_name[served.name] = by_name.get(served.name, 0) + len(served.batcher.instances)
        for name, count in sorted(by_name.items()):
            instances.add_metric([name], count)
        yield instances
        replicas = self._node.replicas
        local = CounterMetricFamily(
            "swarm_replica_actions", "Local replica actions by kind (add_instance, "
            "remove_instance) and outcome (started, done, failed); swarm-node status shows "
            "the latest with their reasons.", labels=["action", "outcome"])
        for (action, outcome), count in (replicas.counters.by if replicas is not None
                                         else {}).items():
            local.add_metric([action, outcome], count)
        yield local


class _Withdrawn:
    """A version taken out of the table, finishing its queue (swarm.registry.Served)."""

    def __init__(self, node: Node, served: ServedModel, batcher: asyncio.Task[None] | None) -> None:
        self._node = node
        self._served = served
        self._batcher = batcher

    async def drain(self) -> None:
        await self._served.batcher.drain()

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        for model in {self._served.model, *self._served.batcher.instances}:  # local replicas too
            if model in self._node._owned:  # preloaded models belong to the caller
                self._node._owned.remove(model)
                model.close()


class _NodeDeployment:
    """The node's ModelTable and batchers as a swarm.registry.Deployment."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def current(self, name: str) -> Digest | None:
        try:
            return self._node.table.resolve(name).digest
        except ModelNotFoundError:
            return None

    def has(self, name: str, digest: Digest) -> bool:
        return any(s.digest == digest for s in self._node.table.versions(name))

    async def add(self, model: Model, *, default: bool) -> None:
        node = self._node
        node._owned.append(model)  # closed when withdrawn, or when the node stops
        node.sources[model.digest] = functools.partial(node._version_on, model.digest)
        node._start_serving(model, default=default)

    def set_default(self, name: str, digest: Digest) -> None:
        table = self._node.table
        table.add(table.resolve(name, digest.hex), default=True)

    def withdraw(self, name: str, digest: Digest) -> _Withdrawn | None:
        node = self._node
        served = node.table.remove(name, digest)
        if served is None:
            return None
        if not any(s.digest == digest for s in node.table):
            node.sources.pop(digest, None)
        node.metrics.models_ready.set(len(node.table))
        if node.membership is not None:
            node.membership.notify_change()
        return _Withdrawn(node, served, node._batchers.pop(digest, None))
