"""The gateway: serve clients that cannot join the swarm.

A node's gRPC inference service forwards requests for models it does not serve
through the same scheduler the SDK uses (`swarm.routing.Router` over the
node's own peer view). `swarm-node run --http-port N` adds an OpenAI-compatible
HTTP API (`POST /v1/embeddings`, `GET /v1/models`) routed the same way, so the
official `openai` client works against a node.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    NoProviderError,
    SwarmError,
    code_of,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import decode_raw, encode_bytes_elements
from swarm._types import Digest, ModelRef
from swarm.node._metrics import NodeMetrics
from swarm.node._models import ModelStats, ModelTable
from swarm.node._service import FORWARDED_HEADER, InferenceService, status_details
from swarm.routing import FORWARDED, Router, RoutingOptions, error_from_rpc

__all__ = ["OpenAIGateway", "RoutingGateway"]

MAX_EMBEDDING_INPUTS = 2048
# Metadata a forwarded call carries: the provider must not forward it again (no loops).
_MARK = ((FORWARDED_HEADER, "1"),)
# Providers asked, and seconds each may take, for one ModelMetadata or ModelConfig answer.
_ASK_ATTEMPTS = 3
_ASK_TIMEOUT = 5.0


class RoutingGateway:
    """Forwards OIP calls for non-local models to providers chosen by the scheduler.

    ModelInfer goes through the Router (retries, hedging). ModelMetadata, ModelConfig
    and ModelReady go to the scheduler's best candidates in turn, marked as forwarded
    (the provider never forwards them again). Adverts the scheduler refuses (no
    endpoint, draining, expired, circuit open) are never called. Statistics of
    forwarded requests are kept for the first `max_models` digests
    (NodeConfig.max_forwarded_models).
    """

    def __init__(self, router: Router, *, clock: Clock = SYSTEM_CLOCK,
                 default_timeout: float = 30.0, max_models: int = 64) -> None:
        self.router = router
        self._clock = clock
        self._default_timeout = default_timeout
        self._max_models = max_models
        self._stats: dict[Digest, tuple[str, ModelStats]] = {}

    def resolve(self, model: str, version: str = "") -> Digest:
        """The digest calls for `model` go to (a `sha256:` version pins it).

        ModelNotFoundError when no provider serves it; InvalidReferenceError
        (INVALID_ARGUMENT) for a malformed name.
        """
        target = f"{model}@{version}" if version.startswith("sha256:") else model
        try:
            return self.router.resolve(target)
        except NoProviderError as exc:
            raise _not_found(exc) from exc

    async def ready(self, request: pb.ModelReadyRequest, digest: Digest,
                    deadline: float | None) -> bool:
        """What a provider the scheduler picks says (False: none can be asked)."""
        ask = pb.ModelReadyRequest(name=request.name, version=str(digest))
        try:
            response: pb.ModelReadyResponse = await self._ask(
                digest, deadline, lambda stub, timeout: stub.ModelReady(
                    ask, timeout=timeout, metadata=_MARK))
        except SwarmError:
            return False
        return response.ready

    def statistics(self) -> Mapping[Digest, tuple[str, ModelStats]]:
        """(model name, statistics) of the requests forwarded, by digest."""
        return self._stats

    def _stats_of(self, model: str, digest: Digest) -> ModelStats | None:
        entry = self._stats.get(digest)
        if entry is None:
            if len(self._stats) >= self._max_models:
                return None  # bounded; the metrics count the excess under model="other"
            entry = self._stats[digest] = (ModelRef.parse(model).name, ModelStats())
        return entry[1]

    async def forward(self, request: pb.ModelInferRequest, digest: Digest,
                      deadline: float | None) -> pb.ModelInferResponse:
        forwarded = pb.ModelInferRequest()
        forwarded.CopyFrom(request)
        forwarded.model_version = str(digest)
        forwarded.parameters[FORWARDED].bool_param = True
        items = max((t.shape[0] for t in request.inputs if t.shape), default=1)
        started = self._clock.monotonic()
        timeout = self._default_timeout if deadline is None else deadline - started
        if timeout <= 0:
            raise DeadlineExceededError("deadline passed before forwarding")
        stats = self._stats_of(request.model_name, digest)
        try:
            routed = await self.router.send(forwarded, digest, max(1, items),
                                            RoutingOptions(timeout=timeout))
        except SwarmError as exc:
            if stats is not None:
                stats.fail.add(self._clock.monotonic() - started)
            if isinstance(exc, NoProviderError):
                raise _not_found(exc) from exc
            raise
        if stats is not None:
            params = routed.response.parameters
            stats.success.add(self._clock.monotonic() - started)
            stats.inference_count += max(1, items)
            stats.execution_count += 1
            stats.last_inference_ms = int(self._clock.time() * 1000)
            # What the provider reported: time queued there, and its batch's compute.
            stats.queue.add(params["swarm_queue_us"].int64_param / 1e6
                            if "swarm_queue_us" in params else 0.0)
            stats.compute_infer.add(params["swarm_compute_us"].int64_param / 1e6
                                    if "swarm_compute_us" in params else 0.0)
        return routed.response

    async def metadata(self, request: pb.ModelMetadataRequest, digest: Digest,
                       deadline: float | None) -> pb.ModelMetadataResponse:
        ask = pb.ModelMetadataRequest(name=request.name, version=str(digest))
        response: pb.ModelMetadataResponse = await self._ask(
            digest, deadline, lambda stub, timeout: stub.ModelMetadata(
                ask, timeout=timeout, metadata=_MARK))
        return response

    async def config(self, request: pb.ModelConfigRequest, digest: Digest,
                     deadline: float | None) -> pb.ModelConfigResponse:
        ask = pb.ModelConfigRequest(name=request.name, version=str(digest))
        response: pb.ModelConfigResponse = await self._ask(
            digest, deadline, lambda stub, timeout: stub.ModelConfig(
                ask, timeout=timeout, metadata=_MARK))
        return response

    async def _ask(self, digest: Digest, deadline: float | None,
                   call: Callable[[pb_grpc.GRPCInferenceServiceStub, float], Awaitable[Any]]) -> Any:
        """One answer about `digest`: from the scheduler's best candidate, else the next ones."""
        try:
            candidates = self.router.candidates(digest, deadline=deadline)
        except NoProviderError as exc:
            raise _not_found(exc) from exc
        last: InferenceError | None = None
        for candidate in candidates[:_ASK_ATTEMPTS]:
            timeout = _ASK_TIMEOUT if deadline is None else min(
                _ASK_TIMEOUT, deadline - self._clock.monotonic())
            if timeout <= 0:
                raise DeadlineExceededError(f"deadline passed asking about {digest}")
            try:
                async with self.router.channel(candidate) as channel:
                    return await call(pb_grpc.GRPCInferenceServiceStub(channel), timeout)
            except InferenceError as exc:  # not the advert's author, or unreachable
                last = exc
            except grpc.aio.AioRpcError as exc:
                last = error_from_rpc(exc, candidate.endpoint)
                if last.code == "INVALID_ARGUMENT":  # the request itself: no one will take it
                    raise last from exc
        assert last is not None  # choose() returns at least one candidate
        raise last


def _not_found(exc: Exception) -> InferenceError:
    return ModelNotFoundError(f"model not served here or in the swarm: {exc}")


# --------------------------------------------------------------------------- OpenAI API

# HTTP status and OpenAI error type per gRPC status name (swarm._errors.STATUS).
_OPENAI_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "DEADLINE_EXCEEDED": (504, "timeout"),
    "UNAVAILABLE": (503, "service_unavailable"),
}


# Seconds between looks at whether an HTTP client is still connected (_unless_hung_up).
_HANG_UP_POLL = 0.05
# Status of the answer to a client that hung up (nginx's "client closed request"; unread).
_CLIENT_CLOSED = 499

T = TypeVar("T")


def _error(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method, ...) in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, "invalid_request_error", exc.reason)


class _BadBody(Exception):
    """A request body the API refuses before any work: `reason` labels the metric."""

    def __init__(self, message: str, reason: str | None) -> None:
        super().__init__(message)
        self.reason = reason


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects in a parsed JSON value nest more than `limit` deep."""
    level = [value]
    for _ in range(limit):
        level = [child for v in level if isinstance(v, list | dict)
                 for child in (v.values() if isinstance(v, dict) else v)]
        if not level:
            return False
    return any(isinstance(v, list | dict) for v in level)


def _unicode(text: str) -> bool:
    """JSON escapes can spell lone surrogates, which no UTF-8 text (nor a model) holds."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class _HungUp(Exception):
    """The HTTP client closed its connection before its answer was ready."""


async def _unless_hung_up(request: web.Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; if the client hangs up first, cancel it and raise _HungUp.

    aiohttp (>= 3.9) no longer cancels a handler when its client disconnects, and has
    no event for it: the transport going away is the sign, looked at while waiting.
    Cancelling drops the work's queued batches before they are computed.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_HANG_UP_POLL)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise _HungUp
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: nobody is left to report it to


class OpenAIGateway:
    """`POST /v1/embeddings` and `GET /v1/models`, served by the node or routed to the swarm."""

    def __init__(self, service: InferenceService, table: ModelTable,
                 router: Callable[[], Router | None], *, metrics: NodeMetrics,
                 max_body_bytes: int = 32 << 20, max_json_depth: int = 32,
                 clock: Clock = SYSTEM_CLOCK,
                 generative: Callable[[], Iterable[str]] = tuple) -> None:
        self._service = service
        self._generative = generative  # names of the generative models served here
        self._table = table
        self._router = router
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._max_depth = max_json_depth
        self._clock = clock  # the service's: request deadlines are on its monotonic()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body, middlewares=[_openai_errors])
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name:.+}", self.model)
        return app

    def _model_ids(self) -> list[str]:
        names = {s.name for s in self._table} | set(self._generative())
        router = self._router()
        if router is not None:
            names |= {o.name for e in router.view for o in e.advert.models}
        return sorted(names)

    @staticmethod
    def _model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": name.split("/")[0]}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [self._model_object(n) for n in self._model_ids()]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._model_ids():
            return _error(404, "invalid_request_error", f"model {name!r} does not exist", "model")
        return web.json_response(self._model_object(name))

    async def _json_body(self, request: web.Request) -> Any:
        """The request's JSON body, within the configured size and nesting bounds."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _BadBody(f"body larger than {self._max_body} bytes", "body_size") from exc
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise _BadBody("body must be UTF-8 JSON", "encoding") from exc
        try:
            body = json.loads(text)
        except RecursionError as exc:  # json's parser stops at Python's recursion limit
            raise _BadBody(f"JSON nests deeper than {self._max_depth}", "json_depth") from exc
        except ValueError as exc:  # not JSON, or an integer of more digits than Python reads
            raise _BadBody(f"body must be JSON: {exc}", None) from exc
        if _nested_deeper(body, self._max_depth):
            raise _BadBody(f"JSON nests deeper than {self._max_depth}", "json_depth")
        return body

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except _BadBody as exc:
            if exc.reason is not None:
                self._metrics.http_rejected.labels(exc.reason).inc()
            status = 413 if exc.reason == "body_size" else 400
            return _error(status, "invalid_request_error", str(exc))
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "invalid_request_error", "'model' is required", "model")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) for t in texts)):
            return _error(400, "invalid_request_error",
                          "'input' must be a string or a non-empty list of strings "
                          "(token arrays are not supported)", "input")
        for param, values in (("model", [model]), ("input", texts)):
            if not all(_unicode(v) for v in values):
                self._metrics.http_rejected.labels("encoding").inc()
                return _error(400, "invalid_request_error",
                              f"'{param}' holds a lone surrogate: not Unicode text", param)
        if len(texts) > MAX_EMBEDDING_INPUTS:
            return _error(400, "invalid_request_error",
                          f"at most {MAX_EMBEDDING_INPUTS} inputs per request", "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _error(400, "invalid_request_error",
                          "encoding_format must be 'float' or 'base64'", "encoding_format")
        try:
            vectors = await _unless_hung_up(request, self._embed(model, texts))
        except _HungUp:
            return web.Response(status=_CLIENT_CLOSED)
        except SwarmError as exc:
            status, kind = _OPENAI_STATUS.get(code_of(exc), (500, "server_error"))
            return _error(status, kind, status_details(exc))
        data = []
        for i, v in enumerate(vectors):
            vector = v.astype("<f4")
            embedding: Any = (base64.b64encode(vector.tobytes()).decode() if encoding == "base64"
                              else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(t.split()) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _embed(self, model: str, texts: list[str]) -> np.ndarray:
        """Split into batches the model takes; each goes through the node's own OIP path."""
        step = self._max_batch(model)
        parts = []
        for i in range(0, len(texts), step):
            chunk = [t.encode() for t in texts[i : i + step]]
            req = pb.ModelInferRequest(model_name=model)
            req.inputs.add(name="text", datatype="BYTES", shape=[len(chunk)])
            req.raw_input_contents.append(encode_bytes_elements(chunk))
            response = await self._service.infer(req, self._clock.monotonic() + 60)
            if not response.outputs:
                raise InferenceError(f"{model} returned no outputs")
            out = response.outputs[0]
            parts.append(decode_raw(out.datatype, tuple(out.shape), response.raw_output_contents[0]))
        return np.concatenate(parts)

    def _max_batch(self, model: str) -> int:
        for served in self._table.versions(model):
            return served.batcher.policy.max_batch_size
        router = self._router()
        if router is not None:
            for entry in router.view:
                for offer in entry.advert.models:
                    if offer.name == model and offer.max_batch_size:
                        return offer.max_batch_size
        return 32
