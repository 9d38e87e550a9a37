"""The node's gRPC services: Open Inference Protocol v2 and swarm.v1.NodeService.

This is the edge where protobuf meets the project's own types: requests are
decoded and checked against the model's declared specs here, so that the
batcher and the runtime only ever see valid numpy inputs. Every failure maps
to a precise gRPC status; nothing a client sends can take the node down.

With a gateway (swarm/node/_gateway.py), every per-model call for a model this node
does not serve works as if it did: ModelInfer, ModelStreamInfer, ModelMetadata,
ModelConfig and ModelReady are forwarded to a provider; ModelStatistics answers with
the gateway's own statistics of the requests it forwarded (what a client measuring
its own traffic through this node wants; any one provider's numbers would mix in
everyone else's). A call a gateway forwarded carries a mark (the FORWARDED request
parameter, the FORWARDED_HEADER metadata key) and is never forwarded again: one hop,
whatever the adverts say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import (
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    SwarmError,
    UnavailableError,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.inference import model_config_pb2 as mc
from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm._tensors import decode_contents, decode_raw, encode_raw
from swarm._types import Digest, ModelRef
from swarm.node._cache import ResponseCache, cache_key
from swarm.node._metrics import NodeMetrics
from swarm.node._models import ModelStats, ModelTable, ServedModel
from swarm.node._runtime import ModelSpec, TensorSpec
from swarm.protocol import Identity, sign_response
from swarm.routing import ADMISSION_HEADER, DEPTH_TRAILER, FORWARDED, status_of
from swarm.scheduler import AdmissionPolicy, admits

__all__ = ["FORWARDED", "FORWARDED_HEADER", "Gateway", "InferenceService", "NodeStatusService",
           "RejectUndecodable", "decode_request"]

log = logging.getLogger("swarm.node")

SERVER_NAME = "swarm-node"
EXTENSIONS = ("model_configuration", "statistics", "binary_tensor_data", "schedule_policy")
MAX_ELEMENTS = 1 << 28
# gRPC metadata key a gateway sets on the calls it forwards (ModelInfer also carries the
# FORWARDED parameter, which survives a request being re-sent without its metadata).
FORWARDED_HEADER = "swarm-forwarded"
# Longest status message sent: messages quote names a client chose, and gRPC refuses
# trailers over 16 KiB (the client would see RESOURCE_EXHAUSTED, not the real status).
MAX_DETAILS = 1000


def status_details(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS] + "..."


SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a request that is no valid protobuf message decodes to (RejectUndecodable)."""

    message: str


class RejectUndecodable(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for an inference request that is no valid protobuf message.

    grpc answers UNKNOWN when a request fails to parse (bad wire format, a string
    that is not UTF-8). Here the request parses to an Undecodable instead: unary
    methods abort with INVALID_ARGUMENT, and ModelStreamInfer answers that request
    with an error response, as it does for any failed request.
    """

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if (handler is None or handler.request_deserializer is None
                or not details.method.startswith(f"/{SERVICE}/")):
            return handler
        parse = handler.request_deserializer
        what = details.method.rsplit("/", 1)[-1]

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return Undecodable(f"the {what} request is not a valid protobuf message")

        if handler.unary_unary is None:
            return handler._replace(request_deserializer=deserialize)
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await _abort(context, InvalidInputError(request.message))
            return await behavior(request, context)

        return handler._replace(request_deserializer=deserialize, unary_unary=unary)


class Gateway(Protocol):
    """Routes calls for models this node does not serve (see swarm/node/_gateway.py).

    `resolve` raises ModelNotFoundError (or InvalidReferenceError) for a model no one
    serves; the rest take the digest it returned.
    """

    def resolve(self, model: str, version: str) -> Digest: ...

    async def ready(self, request: pb.ModelReadyRequest, digest: Digest,
                    deadline: float | None) -> bool: ...

    async def forward(self, request: pb.ModelInferRequest, digest: Digest,
                      deadline: float | None) -> pb.ModelInferResponse: ...

    async def metadata(self, request: pb.ModelMetadataRequest, digest: Digest,
                       deadline: float | None) -> pb.ModelMetadataResponse: ...

    async def config(self, request: pb.ModelConfigRequest, digest: Digest,
                     deadline: float | None) -> pb.ModelConfigResponse: ...

    def statistics(self) -> Mapping[Digest, tuple[str, ModelStats]]: ...


_DATATYPE_ENUM = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32, "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32, "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64, "BYTES": mc.TYPE_STRING,
}


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    items: int
    outputs: tuple[str, ...]
    # Extra seconds the client allows (Triton's "timeout" parameter, microseconds).
    timeout: float | None


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(spec.shape):
        raise InvalidInputError(
            f"input {spec.name!r}: shape {list(shape)} has rank {len(shape)}, the model "
            f"expects {list(spec.shape)}"
        )
    for got, want in zip(shape[1:], spec.shape[1:], strict=True):
        if want != -1 and got != want:
            raise InvalidInputError(
                f"input {spec.name!r}: shape {list(shape)} does not match {list(spec.shape)}"
            )


def decode_request(request: pb.ModelInferRequest, spec: ModelSpec,
                   max_batch_size: int) -> DecodedRequest:
    """Check a request against the model's declared inputs and decode its tensors."""
    if not request.inputs:
        raise InvalidInputError("request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; they must match"
        )
    specs = {s.name: s for s in spec.inputs}
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        ispec = specs.get(tensor.name)
        if ispec is None:
            raise InvalidInputError(
                f"unknown input {tensor.name!r} (the model takes {', '.join(specs)})"
            )
        if tensor.name in inputs:
            raise InvalidInputError(f"input {tensor.name!r} given twice")
        if tensor.datatype != ispec.datatype:
            raise InvalidInputError(
                f"input {tensor.name!r}: datatype {tensor.datatype or '(none)'}, the model "
                f"expects {ispec.datatype}"
            )
        shape = tuple(tensor.shape)
        _check_shape(ispec, shape)
        if shape[0] > max_batch_size:  # before decoding: an oversized batch costs nothing
            raise InvalidInputError(
                f"batch of {shape[0]} exceeds the model's max batch size {max_batch_size}"
            )
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input {tensor.name!r} has both typed contents and raw_input_contents"
                )
            array = decode_raw(tensor.datatype, shape, raw[i], name=tensor.name,
                               max_elements=MAX_ELEMENTS)
        else:
            array = decode_contents(tensor.datatype, shape, tensor.contents, name=tensor.name,
                                    max_elements=MAX_ELEMENTS)
        inputs[tensor.name] = array
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise InvalidInputError(f"missing inputs: {', '.join(missing)}")
    batch_sizes = {a.shape[0] for a in inputs.values()}
    if len(batch_sizes) != 1:
        raise InvalidInputError(f"inputs disagree on the batch dimension: {sorted(batch_sizes)}")
    items = batch_sizes.pop()
    if items < 1:
        raise InvalidInputError("batch dimension is 0: nothing to infer")
    if items > max_batch_size:
        raise InvalidInputError(
            f"batch of {items} exceeds the model's max batch size {max_batch_size}"
        )
    outputs = tuple(o.name for o in request.outputs)
    known = {o.name for o in spec.outputs}
    for out in request.outputs:
        if out.name not in known:
            raise InvalidInputError(f"unknown output {out.name!r} (the model has {', '.join(known)})")
        if "classification" in out.parameters:
            raise InvalidInputError("the classification extension is not supported")
    timeout = None
    param = request.parameters.get("timeout")
    if param is not None and param.WhichOneof("parameter_choice") == "int64_param":
        if param.int64_param < 0:
            raise InvalidInputError("timeout parameter must be >= 0 microseconds")
        if param.int64_param > 0:
            timeout = param.int64_param / 1e6
    return DecodedRequest(inputs, items, outputs, timeout)


def _tensor_meta(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def _duration(stat: Any) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=stat.count, ns=stat.ns)


def _statistics(name: str, digest: Digest, st: ModelStats,
                memory: list[pb.MemoryUsage]) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=str(digest),
        last_inference=st.last_inference_ms,
        inference_count=st.inference_count,
        execution_count=st.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(st.success), fail=_duration(st.fail),
            queue=_duration(st.queue), compute_input=_duration(st.compute_input),
            compute_infer=_duration(st.compute_infer),
            compute_output=_duration(st.compute_output),
            cache_hit=_duration(st.cache_hit), cache_miss=_duration(st.cache_miss)),
        batch_stats=[pb.InferBatchStatistics(
            batch_size=size, compute_input=_duration(b.compute_input),
            compute_infer=_duration(b.compute_infer),
            compute_output=_duration(b.compute_output))
            for size, b in sorted(st.batches.items())],
        memory_usage=memory,
    )


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
    if isinstance(error, OverloadedError) and error.queue_depth is not None:  # a refusal
        await context.abort(status_of(error), status_details(error),
                            trailing_metadata=((DEPTH_TRAILER, str(error.queue_depth)),))
    await context.abort(status_of(error), status_details(error))
    raise error  # abort() raises; this line only tells type checkers so


def _marked(context: grpc.aio.ServicerContext) -> bool:
    """The call was forwarded by a gateway (it must not be forwarded again)."""
    return any(key == FORWARDED_HEADER for key, _ in context.invocation_metadata() or ())


def _refusable(context: grpc.aio.ServicerContext) -> bool:
    """The caller (a swarm Router) allows an admission refusal: it will try elsewhere."""
    return any(key == ADMISSION_HEADER for key, _ in context.invocation_metadata() or ())


def _admission(served: ServedModel) -> None:
    """Refuse a refusable request when the model's queue is past its admission bound
    (swarm.scheduler.admits, the rule the simulator's providers run too)."""
    batcher = served.batcher
    policy = AdmissionPolicy(served.options.admission_wait)
    if not admits(policy, batcher.queued_items, batcher.items_per_second,
                  batcher.policy.max_batch_size, batcher.executing_left):
        depth = batcher.queue_depth
        raise OverloadedError(
            f"{served.name}: {depth} requests queued, past this node's admission bound "
            f"({policy.target_wait:g} s of work): try another provider", queue_depth=depth)


class Generation(Protocol):
    """Generation over ModelStreamInfer (swarm.node._generate.GenerationStreams)."""

    def handles(self, request: pb.ModelInferRequest, served_here: bool,
                forwarded: bool) -> bool: ...

    def stream(self, request: pb.ModelInferRequest,
               deadline_s: float | None) -> AsyncIterator[pb.ModelInferResponse]: ...


class Perturb:
    """Test only: makes a seeded `fraction` of answers wrong (noise far beyond any model's
    tolerance on every float output), for the tests and simulations that must catch a
    provider returning wrong results. Never on unless `--test-perturb-outputs` is given."""

    def __init__(self, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the perturbed fraction is in [0, 1]")
        self.fraction = fraction
        self._rng = np.random.default_rng(seed)
        self.perturbed = 0

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self._rng.random() >= self.fraction:
            return outputs
        self.perturbed += 1
        changed = {}
        for name, array in outputs.items():
            if array.dtype.kind == "f":
                noise = self._rng.normal(0.0, 1.0, array.shape) + 0.5
                array = (array + noise).astype(array.dtype)
            changed[name] = array
        return changed


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService backed by a ModelTable."""

    def __init__(self, table: ModelTable, metrics: NodeMetrics, cache: ResponseCache,
                 *, version: str, is_ready: Callable[[], bool],
                 clock: Clock = SYSTEM_CLOCK,
                 gateway: Gateway | None = None,
                 max_stream_in_flight: int = 16,
                 identity: Identity | None = None,
                 perturb: Perturb | None = None) -> None:
        self._table = table
        # Test only (swarm-node run --test-perturb-outputs): wrong answers, signed as usual.
        self._perturb = perturb
        # Signs every response this node computes (swarm.protocol.sign_response).
        self._identity = identity
        self._gateway = gateway
        self._stream_window = max_stream_in_flight
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics
        self._cache = cache
        self._version = version
        self._is_ready = is_ready
        self._clock = clock
        # Set by the node when it serves generative models or may relay their streams.
        self.generation: Generation | None = None
        # Set by a node that charges (staking): takes the payment a request carries (its
        # string parameters, its items) or raises PermissionDeniedError.
        self.payments: Callable[[Mapping[str, str], int], None] | None = None

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version,
                                         extensions=list(EXTENSIONS))

    async def _resolve(self, name: str, version: str,
                       context: grpc.aio.ServicerContext) -> ServedModel:
        try:
            return self._table.resolve(name, version)
        except InferenceError as exc:
            await _abort(context, exc)

    def _elsewhere(self, name: str, context: grpc.aio.ServicerContext) -> Gateway | None:
        """The gateway, when calls for `name` go to it: served elsewhere, not yet forwarded."""
        if self._gateway is None or self._table.versions(name) or _marked(context):
            return None
        return self._gateway

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        gateway = self._elsewhere(request.name, context)
        if gateway is not None:
            try:
                digest = gateway.resolve(request.name, request.version)
                ready = await gateway.ready(request, digest, self._deadline(context))
            except SwarmError:
                ready = False
            return pb.ModelReadyResponse(ready=self._is_ready() and ready)
        try:
            self._table.resolve(request.name, request.version)
        except InferenceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._is_ready())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        gateway = self._elsewhere(request.name, context)
        if gateway is not None:
            try:
                digest = gateway.resolve(request.name, request.version)
                return await gateway.metadata(request, digest, self._deadline(context))
            except SwarmError as exc:
                await _abort(context, exc)
        served = await self._resolve(request.name, request.version, context)
        spec = served.model.spec
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(s.digest) for s in self._table.versions(served.name)],
            platform=spec.platform,
            inputs=[_tensor_meta(s) for s in spec.inputs],
            outputs=[_tensor_meta(s) for s in spec.outputs],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        gateway = self._elsewhere(request.name, context)
        if gateway is not None:
            try:
                digest = gateway.resolve(request.name, request.version)
                return await gateway.config(request, digest, self._deadline(context))
            except SwarmError as exc:
                await _abort(context, exc)
        served = await self._resolve(request.name, request.version, context)
        spec = served.model.spec
        policy = served.batcher.policy
        config = mc.ModelConfig(
            name=served.name,
            platform=spec.platform,
            backend="swarm",
            runtime="torch",
            max_batch_size=policy.max_batch_size,
            input=[mc.ModelInput(name=s.name, data_type=_DATATYPE_ENUM[s.datatype],
                                 dims=list(s.shape[1:])) for s in spec.inputs],
            output=[mc.ModelOutput(name=s.name, data_type=_DATATYPE_ENUM[s.datatype],
                                   dims=list(s.shape[1:])) for s in spec.outputs],
            instance_group=[mc.ModelInstanceGroup(
                count=1,
                kind=mc.ModelInstanceGroup.KIND_GPU if served.model.device.type == "cuda"
                else mc.ModelInstanceGroup.KIND_CPU)],
            response_cache=mc.ModelResponseCache(enable=served.options.cache),
            parameters={"digest": mc.ModelParameter(string_value=str(served.digest))},
        )
        if policy.enabled:
            config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
                preferred_batch_size=list(policy.preferred_batch_sizes),
                max_queue_delay_microseconds=int(policy.max_queue_delay * 1e6)))
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        gateway = self._elsewhere(request.name, context) if request.name else None
        if gateway is not None:  # the gateway's own: the requests it forwarded
            try:
                digest = gateway.resolve(request.name, request.version)
            except SwarmError as exc:
                await _abort(context, exc)
            name, stats = gateway.statistics().get(
                digest, (ModelRef.parse(request.name).name, ModelStats()))
            return pb.ModelStatisticsResponse(model_stats=[_statistics(name, digest, stats, [])])
        if request.name:
            served_models = ([await self._resolve(request.name, request.version, context)]
                             if request.version else self._table.versions(request.name))
            if not served_models:
                await _abort(context, ModelNotFoundError(
                    f"model {request.name!r} is not served here"))
        else:
            served_models = list(self._table)
        out = [_statistics(served.name, served.digest, served.stats, [pb.MemoryUsage(
            type="GPU" if served.model.device.type == "cuda" else "CPU",
            id=served.model.device.index or 0,
            byte_size=served.model.memory_bytes())]) for served in served_models]
        if not request.name and self._gateway is not None:
            out += [_statistics(name, digest, stats, [])
                    for digest, (name, stats) in self._gateway.statistics().items()]
        return pb.ModelStatisticsResponse(model_stats=out)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        ready = self._is_ready()
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=s.name, version=str(s.digest), state="READY" if ready else "UNAVAILABLE",
                reason="" if ready else "node is draining")
            for s in self._table
        ]
        if request.ready:
            models = [m for m in models if m.state == "READY"]
        return pb.RepositoryIndexResponse(models=models)

    # ------------------------------------------------------------------ inference

    async def wait_idle(self) -> None:
        """Return once no inference request is in flight."""
        await self._idle.wait()

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None,
                    *, forwarded: bool = False, refusable: bool = False) -> pb.ModelInferResponse:
        """Serve one request unless the node is draining (then UNAVAILABLE).

        `forwarded`: a gateway sent it (the call was marked); never forward it again.
        `refusable`: the caller allows an admission refusal (RESOURCE_EXHAUSTED with the
        queue depth) when the model's queue is past its bound.
        """
        if not self._is_ready():
            raise UnavailableError("node is draining: send this request elsewhere")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._infer(request, deadline, forwarded or FORWARDED in request.parameters,
                                     refusable)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None,
                     forwarded: bool, refusable: bool = False) -> pb.ModelInferResponse:
        """Serve one request; raises SwarmError subclasses (mapped to statuses by callers).

        A model this node does not serve goes to the gateway (if any), which routes it
        to a provider through the scheduler; a request that was already forwarded
        once is never forwarded again.
        """
        started = self._clock.monotonic()
        if (self._gateway is not None and not forwarded
                and not self._table.versions(request.model_name)):
            return await self._forward(self._gateway, request, deadline, started)
        try:
            served = self._table.resolve(request.model_name, request.model_version)
        except SwarmError as exc:  # a name a client made up must not become a metrics label
            self._metrics.requests.labels(self._metrics.unknown_label(),
                                          status_of(exc).name).inc()
            raise
        name = served.name
        stats = served.stats
        try:
            decoded = decode_request(request, served.model.spec, served.batcher.policy.max_batch_size)
            served.model.check(decoded.inputs)
            if decoded.timeout is not None:
                limit = started + decoded.timeout
                deadline = limit if deadline is None else min(deadline, limit)
            key = None
            outputs: Mapping[str, np.ndarray] | None = None
            if served.options.cache:
                key = cache_key(served.digest, decoded.inputs)
                outputs = self._cache.get(key)
                if outputs is not None:
                    self._metrics.cache_hits.labels(name).inc()
                    stats.cache_hit.add(self._clock.monotonic() - started)
                else:
                    self._metrics.cache_misses.labels(name).inc()
            if outputs is None and refusable:
                _admission(served)  # before the charge: a refused attempt is not paid for
            if self.payments is not None:
                self.payments({k: p.string_param for k, p in request.parameters.items()
                               if k.startswith("swarm_")}, decoded.items)
            queue_s = compute_s = 0.0
            batch_items = decoded.items
            if outputs is None:
                lookup_done = self._clock.monotonic()
                result = await served.batcher.submit(decoded.inputs, decoded.items, deadline)
                outputs = result.outputs
                queue_s, compute_s = result.queue_seconds, result.compute_seconds
                batch_items = result.batch_size
                if key is not None:
                    self._cache.put(key, outputs)
                    stats.cache_miss.add(lookup_done - started)
                self._metrics.queue_time.labels(name).observe(queue_s)
                self._metrics.compute_time.labels(name).observe(compute_s)
                stats.queue.add(queue_s)
            if self._perturb is not None:
                outputs = self._perturb(outputs)
            response = self._response(request, served, outputs, decoded.outputs)
            # Server timing and current load, so routing clients can tell network from
            # queueing from compute and learn load fresher than adverts.
            params = response.parameters
            params["swarm_queue_us"].int64_param = round(queue_s * 1e6)
            params["swarm_compute_us"].int64_param = round(compute_s * 1e6)
            params["swarm_batch_items"].int64_param = batch_items
            params["swarm_queue_depth"].int64_param = served.batcher.queue_depth
            if self._identity is not None:
                sign_response(self._identity, request, response)
        except SwarmError as exc:
            elapsed = self._clock.monotonic() - started
            stats.fail.add(elapsed)
            self._metrics.requests.labels(name, status_of(exc).name).inc()
            raise
        except asyncio.CancelledError:  # the client gave up, or its deadline passed
            self._metrics.requests.labels(name, "CANCELLED").inc()
            raise
        elapsed = self._clock.monotonic() - started
        stats.success.add(elapsed)
        stats.inference_count += decoded.items
        stats.last_inference_ms = int(self._clock.time() * 1000)
        self._metrics.requests.labels(name, "OK").inc()
        self._metrics.latency.labels(name).observe(elapsed)
        return response

    async def _forward(self, gateway: Gateway, request: pb.ModelInferRequest,
                       deadline: float | None, started: float) -> pb.ModelInferResponse:
        try:
            digest = gateway.resolve(request.model_name, request.model_version)
        except SwarmError as exc:
            self._metrics.requests.labels(self._metrics.unknown_label(),
                                          f"FORWARD_{status_of(exc).name}").inc()
            raise
        name = self._metrics.forwarded_label(request.model_name)
        try:
            response = await gateway.forward(request, digest, deadline)
        except SwarmError as exc:
            self._metrics.requests.labels(name, f"FORWARD_{status_of(exc).name}").inc()
            raise
        except asyncio.CancelledError:
            self._metrics.requests.labels(name, "CANCELLED").inc()
            raise
        self._metrics.requests.labels(name, "FORWARDED").inc()
        self._metrics.latency.labels(name).observe(self._clock.monotonic() - started)
        return response

    def _response(self, request: pb.ModelInferRequest, served: ServedModel,
                  outputs: Mapping[str, np.ndarray], wanted: tuple[str, ...]) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(
            model_name=served.name, model_version=str(served.digest), id=request.id)
        for spec in served.model.spec.outputs:
            if wanted and spec.name not in wanted:
                continue
            datatype, shape, raw = encode_raw(outputs[spec.name])
            response.outputs.add(name=spec.name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self._clock.monotonic() + remaining

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            return await self.infer(request, self._deadline(context), forwarded=_marked(context),
                                    refusable=_refusable(context))
        except SwarmError as exc:
            await _abort(context, exc)
        except Exception:
            log.exception("unexpected error in ModelInfer", extra={"model": request.model_name})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    async def ModelStreamInfer(
            self, request_iterator: AsyncIterator[pb.ModelInferRequest | Undecodable],
            context: grpc.aio.ServicerContext) -> None:
        """Requests are served concurrently; responses go out as they complete.

        A failed request gets a response with error_message set (and its id), and the
        stream stays open, as Triton's streaming API does.

        At most `max_stream_in_flight` responses are in flight per stream (computing, or
        computed and not yet taken by the transport). At the bound the node stops
        reading the stream's requests, so a client that sends without reading is held
        back by gRPC flow control instead of making the node buffer all it sends.
        Responses are written with context.write from this coroutine (not yielded from
        a generator): a cancelled stream then cancels its task group like any call.
        """
        window = asyncio.Semaphore(self._stream_window)
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        stream_deadline = self._deadline(context)
        forwarded = _marked(context)

        async def handle(req: pb.ModelInferRequest) -> None:
            if self.generation is not None and self.generation.handles(
                    req, bool(self._table.versions(req.model_name)), forwarded):
                await self._generate(self.generation, req, stream_deadline, window, done)
                return
            try:
                response = pb.ModelStreamInferResponse(
                    infer_response=await self.infer(req, stream_deadline, forwarded=forwarded))
            except SwarmError as exc:
                response = pb.ModelStreamInferResponse(
                    error_message=f"{status_of(exc).name}: {status_details(exc)}",
                    infer_response=pb.ModelInferResponse(
                        model_name=req.model_name, model_version=req.model_version, id=req.id))
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                response = pb.ModelStreamInferResponse(
                    error_message="INTERNAL: internal error",
                    infer_response=pb.ModelInferResponse(id=req.id))
            done.put_nowait(response)

        async def read() -> None:
            requests = aiter(request_iterator)
            async with asyncio.TaskGroup() as handlers:
                while True:
                    if window.locked():
                        self._metrics.stream_backpressure.inc()
                    await window.acquire()  # released once a response is written
                    try:
                        req = await anext(requests)
                    except StopAsyncIteration:
                        break
                    if isinstance(req, Undecodable):
                        done.put_nowait(pb.ModelStreamInferResponse(
                            error_message=f"INVALID_ARGUMENT: {req.message}"))
                        continue
                    handlers.create_task(handle(req))
            done.put_nowait(None)

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            while (response := await done.get()) is not None:
                try:
                    await context.write(response)
                except Exception as exc:  # grpc's own error type: the client is gone
                    log.debug("stream closed by the client",
                              extra={"error": type(exc).__name__})
                    reader.cancel()  # and with it the requests still computing
                    break
                window.release()


    async def _generate(self, generation: Generation, req: pb.ModelInferRequest,
                        deadline: float | None, window: asyncio.Semaphore,
                        done: asyncio.Queue[pb.ModelStreamInferResponse | None]) -> None:
        """A decoupled answer: many responses to one request, each taking a window place."""
        first = True
        timeout = None if deadline is None else max(0.0, deadline - self._clock.monotonic())
        try:
            async for response in generation.stream(req, timeout):
                if not first:
                    await window.acquire()
                first = False
                done.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
        except SwarmError as exc:
            if not first:
                await window.acquire()
            done.put_nowait(pb.ModelStreamInferResponse(
                error_message=f"{status_of(exc).name}: {status_details(exc)}",
                infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id)))


class NodeStatusService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, status: Callable[[], node_pb2.NodeStatus]) -> None:
        self._status = status

    async def GetStatus(self, request: node_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> node_pb2.NodeStatus:
        return self._status()
