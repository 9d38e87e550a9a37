"""The node's gRPC services: Open Inference Protocol v2 and swarm.v1.NodeService.

This is the edge where protobuf meets the project's own types: requests are
decoded and checked against the model's declared specs here, so that the
batcher and the runtime only ever see valid numpy inputs. Every failure maps
to a precise gRPC status; nothing a client sends can take the node down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from swarm._errors import (
    InferenceError,
    InvalidInputError,
    SwarmError,
    UnavailableError,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.inference import model_config_pb2 as mc
from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm._tensors import decode_contents, decode_raw, encode_raw
from swarm.node._cache import ResponseCache, cache_key
from swarm.node._metrics import NodeMetrics
from swarm.node._models import ModelTable, ServedModel
from swarm.node._runtime import ModelSpec, TensorSpec
from swarm.routing import FORWARDED

__all__ = ["FORWARDED", "Gateway", "InferenceService", "NodeStatusService", "decode_request"]

log = logging.getLogger("swarm.node")

SERVER_NAME = "swarm-node"
EXTENSIONS = ("model_configuration", "statistics", "binary_tensor_data", "schedule_policy")
MAX_ELEMENTS = 1 << 28

class Gateway(Protocol):
    """Routes requests for models this node does not serve (see swarm/node/_gateway.py)."""

    def can_serve(self, model: str) -> bool: ...

    async def forward(self, request: pb.ModelInferRequest,
                      deadline: float | None) -> pb.ModelInferResponse: ...

    async def metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse: ...


_STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}

_DATATYPE_ENUM = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32, "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32, "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64, "BYTES": mc.TYPE_STRING,
}


def status_of(error: SwarmError) -> grpc.StatusCode:
    code = error.code if isinstance(error, InferenceError) else "INTERNAL"
    return _STATUS.get(code, grpc.StatusCode.INTERNAL)


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


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService backed by a ModelTable."""

    def __init__(self, table: ModelTable, metrics: NodeMetrics, cache: ResponseCache,
                 *, version: str, is_ready: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic,
                 gateway: Gateway | None = None) -> None:
        self._table = table
        self._gateway = gateway
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics
        self._cache = cache
        self._version = version
        self._is_ready = is_ready
        self._clock = clock

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
            await context.abort(status_of(exc), str(exc))
            raise  # abort raises; this keeps type checkers honest

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self._table.resolve(request.name, request.version)
        except InferenceError:
            if self._gateway is not None and self._gateway.can_serve(request.name):
                return pb.ModelReadyResponse(ready=self._is_ready())
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._is_ready())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        if self._gateway is not None and not self._table.versions(request.name):
            try:
                return await self._gateway.metadata(request)
            except SwarmError as exc:
                await context.abort(status_of(exc), str(exc))
                raise
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
        if request.name:
            served_models = ([await self._resolve(request.name, request.version, context)]
                             if request.version else self._table.versions(request.name))
            if not served_models:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"model {request.name!r} is not served here")
        else:
            served_models = list(self._table)
        out = []
        for served in served_models:
            st = served.stats
            out.append(pb.ModelStatistics(
                name=served.name,
                version=str(served.digest),
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
                memory_usage=[pb.MemoryUsage(
                    type="GPU" if served.model.device.type == "cuda" else "CPU",
                    id=served.model.device.index or 0,
                    byte_size=served.model.memory_bytes())],
            ))
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

    async def infer(self, request: pb.ModelInferRequest,
                    deadline: float | None) -> pb.ModelInferResponse:
        """Serve one request unless the node is draining (then UNAVAILABLE)."""
        if not self._is_ready():
            raise UnavailableError("node is draining: send this request elsewhere")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._infer(request, deadline)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _infer(self, request: pb.ModelInferRequest,
                     deadline: float | None) -> pb.ModelInferResponse:
        """Serve one request; raises SwarmError subclasses (mapped to statuses by callers).

        A model this node does not serve goes to the gateway (if any), which routes it
        to a provider through the scheduler; a request that was already forwarded
        once is never forwarded again.
        """
        started = self._clock()
        if (self._gateway is not None and not self._table.versions(request.model_name)
                and FORWARDED not in request.parameters):
            return await self._forward(request, deadline, started)
        served = self._table.resolve(request.model_name, request.model_version)
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
                    stats.cache_hit.add(self._clock() - started)
                else:
                    self._metrics.cache_misses.labels(name).inc()
            queue_s = compute_s = 0.0
            batch_items = decoded.items
            if outputs is None:
                lookup_done = self._clock()
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
            response = self._response(request, served, outputs, decoded.outputs)
            # Server timing and current load, so routing clients can tell network from
            # queueing from compute and learn load fresher than adverts.
            params = response.parameters
            params["swarm_queue_us"].int64_param = round(queue_s * 1e6)
            params["swarm_compute_us"].int64_param = round(compute_s * 1e6)
            params["swarm_batch_items"].int64_param = batch_items
            params["swarm_queue_depth"].int64_param = served.batcher.queue_depth
        except SwarmError as exc:
            elapsed = self._clock() - started
            stats.fail.add(elapsed)
            self._metrics.requests.labels(name, status_of(exc).name).inc()
            raise
        except asyncio.CancelledError:  # the client gave up, or its deadline passed
            self._metrics.requests.labels(name, "CANCELLED").inc()
            raise
        elapsed = self._clock() - started
        stats.success.add(elapsed)
        stats.inference_count += decoded.items
        stats.last_inference_ms = int(time.time() * 1000)
        self._metrics.requests.labels(name, "OK").inc()
        self._metrics.latency.labels(name).observe(elapsed)
        return response

    async def _forward(self, request: pb.ModelInferRequest, deadline: float | None,
                       started: float) -> pb.ModelInferResponse:
        assert self._gateway is not None
        name = request.model_name
        try:
            response = await self._gateway.forward(request, deadline)
        except SwarmError as exc:
            self._metrics.requests.labels(name, f"FORWARD_{status_of(exc).name}").inc()
            raise
        self._metrics.requests.labels(name, "FORWARDED").inc()
        self._metrics.latency.labels(name).observe(self._clock() - started)
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
        return None if remaining is None else self._clock() + remaining

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            return await self.infer(request, self._deadline(context))
        except SwarmError as exc:
            await context.abort(status_of(exc), str(exc))
            raise
        except Exception:
            log.exception("unexpected error in ModelInfer", extra={"model": request.model_name})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext,
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are served concurrently; responses go out as they complete.

        A failed request yields a response with error_message set (and its id), and
        the stream stays open, as Triton's streaming API does.
        """
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        stream_deadline = self._deadline(context)

        async def handle(req: pb.ModelInferRequest) -> None:
            try:
                response = pb.ModelStreamInferResponse(
                    infer_response=await self.infer(req, stream_deadline))
            except SwarmError as exc:
                response = pb.ModelStreamInferResponse(
                    error_message=f"{status_of(exc).name}: {exc}",
                    infer_response=pb.ModelInferResponse(
                        model_name=req.model_name, model_version=req.model_version, id=req.id))
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                response = pb.ModelStreamInferResponse(
                    error_message="INTERNAL: internal error",
                    infer_response=pb.ModelInferResponse(id=req.id))
            out.put_nowait(response)

        async def read() -> None:
            async with asyncio.TaskGroup() as handlers:
                async for req in request_iterator:
                    handlers.create_task(handle(req))
            out.put_nowait(None)

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            while (item := await out.get()) is not None:
                yield item
            await reader


class NodeStatusService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, status: Callable[[], node_pb2.NodeStatus]) -> None:
        self._status = status

    async def GetStatus(self, request: node_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> node_pb2.NodeStatus:
        return self._status()
