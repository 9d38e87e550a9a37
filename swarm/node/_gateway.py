"""The gateway: serve clients that cannot join the swarm.

A node's gRPC inference service forwards requests for models it does not serve
through the same scheduler the SDK uses (`swarm.routing.Router` over the
node's own peer view). `swarm-node run --http-port N` adds an OpenAI-compatible
HTTP API (`POST /v1/embeddings`, `GET /v1/models`) routed the same way, so the
official `openai` client works against a node.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from swarm._errors import InferenceError, InvalidInputError, NoProviderError, SwarmError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import decode_raw, encode_bytes_elements
from swarm.node._models import ModelTable
from swarm.node._service import InferenceService
from swarm.routing import FORWARDED, Router, RoutingOptions, error_from_rpc

__all__ = ["OpenAIGateway", "RoutingGateway"]

MAX_EMBEDDING_INPUTS = 2048


class RoutingGateway:
    """Forwards OIP requests for non-local models to providers chosen by the scheduler."""

    def __init__(self, router: Router, *, clock: Callable[[], float] = time.monotonic,
                 default_timeout: float = 30.0) -> None:
        self.router = router
        self._clock = clock
        self._default_timeout = default_timeout

    def can_serve(self, model: str) -> bool:
        try:
            self.router.resolve(model)
        except (NoProviderError, ValueError):
            return False
        return True

    async def forward(self, request: pb.ModelInferRequest,
                      deadline: float | None) -> pb.ModelInferResponse:
        target = request.model_name
        if request.model_version:
            target = f"{target}@{request.model_version}" if request.model_version.startswith(
                "sha256:") else target
        try:
            digest = self.router.resolve(target)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        except NoProviderError as exc:
            raise _not_found(exc) from exc
        forwarded = pb.ModelInferRequest()
        forwarded.CopyFrom(request)
        forwarded.model_version = str(digest)
        forwarded.parameters[FORWARDED].bool_param = True
        items = max((t.shape[0] for t in request.inputs if t.shape), default=1)
        timeout = self._default_timeout if deadline is None else deadline - self._clock()
        if timeout <= 0:
            from swarm._errors import DeadlineExceededError

            raise DeadlineExceededError("deadline passed before forwarding")
        try:
            routed = await self.router.send(forwarded, digest, max(1, items),
                                            RoutingOptions(timeout=timeout))
        except NoProviderError as exc:
            raise _not_found(exc) from exc
        return routed.response

    async def metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        try:
            digest = self.router.resolve(request.name)
        except (NoProviderError, ValueError) as exc:
            raise _not_found(exc) from exc
        last: SwarmError | None = None
        for entry in self.router.view.providers(digest)[:3]:
            channel = grpc.aio.insecure_channel(entry.advert.endpoints[0])
            try:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                response: pb.ModelMetadataResponse = await stub.ModelMetadata(
                    pb.ModelMetadataRequest(name=request.name, version=str(digest)), timeout=5)
                return response
            except grpc.aio.AioRpcError as exc:
                last = error_from_rpc(exc, entry.advert.endpoints[0])
            finally:
                await channel.close()
        raise last or InferenceError(f"no provider answered for {request.name}", code="UNAVAILABLE")


def _not_found(exc: Exception) -> InferenceError:
    from swarm._errors import ModelNotFoundError

    return ModelNotFoundError(f"model not served here or in the swarm: {exc}")


# --------------------------------------------------------------------------- OpenAI API

_OPENAI_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "DEADLINE_EXCEEDED": (504, "timeout"),
    "UNAVAILABLE": (503, "service_unavailable"),
}


def _error(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


class OpenAIGateway:
    """`POST /v1/embeddings` and `GET /v1/models`, served by the node or routed to the swarm."""

    def __init__(self, service: InferenceService, table: ModelTable,
                 router: Callable[[], Router | None]) -> None:
        self._service = service
        self._table = table
        self._router = router

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 << 20)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name:.+}", self.model)
        return app

    def _model_ids(self) -> list[str]:
        names = {s.name for s in self._table}
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

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid_request_error", "body must be JSON")
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
        if len(texts) > MAX_EMBEDDING_INPUTS:
            return _error(400, "invalid_request_error",
                          f"at most {MAX_EMBEDDING_INPUTS} inputs per request", "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _error(400, "invalid_request_error",
                          "encoding_format must be 'float' or 'base64'", "encoding_format")
        try:
            vectors = await self._embed(model, texts)
        except SwarmError as exc:
            code = exc.code if isinstance(exc, InferenceError) else "UNAVAILABLE"
            status, kind = _OPENAI_STATUS.get(code, (500, "server_error"))
            return _error(status, kind, str(exc))
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
            response = await self._service.infer(req, time.monotonic() + 60)
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
