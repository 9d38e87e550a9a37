"""KServe's generate extension: `POST /v2/models/{name}[/versions/{v}]/generate` and
`/generate_stream`, over the same engines (or relayed, as the OpenAI routes are).

Body: `{"text_input": "...", "parameters": {"max_tokens", "temperature", "top_p", "seed",
"stop"}}`. Answer: `{"model_name", "model_version", "text_output", "finish_reason"}`;
the stream sends one such event per chunk of text (Server-Sent Events, `data: {...}`),
the last with its finish_reason. Errors: `{"error": "..."}` with 400/404/429/503.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from swarm._errors import SwarmError, code_of
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm.node._generate._engine import Delta
from swarm.node._generate._model import GenerativeModel
from swarm.node._generate._openai import (
    _Asked,
    _Bad,
    _grpc_request,
    _integer,
    _local,
    _number,
    _relayed,
    _started,
    _stop,
)

__all__ = ["GenerateAPI"]

_PARAMETERS = {"max_tokens", "temperature", "top_p", "seed", "stop"}
_HTTP = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
         "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _asked(body: Any) -> _Asked:
    if not isinstance(body, dict):
        raise _Bad("body must be a JSON object")
    unknown = sorted(set(body) - {"text_input", "parameters", "id"})
    if unknown:
        raise _Bad(f"unsupported field(s): {', '.join(unknown)}", unknown[0])
    text = body.get("text_input")
    if not isinstance(text, str) or not text:
        raise _Bad("'text_input' must be a non-empty string", "text_input")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _Bad("'parameters' must be an object", "parameters")
    unknown = sorted(set(params) - _PARAMETERS)
    if unknown:
        raise _Bad(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0])
    limit = _integer(params, "max_tokens")
    if limit is not None and limit < 1:
        raise _Bad("max_tokens must be at least 1", "max_tokens")
    seed = _integer(params, "seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise _Bad("'seed' must be in [0, 2^63)", "seed")
    return _Asked(None, text, limit, _number(params, "temperature", 1.0, 0.0, 2.0),
                  _number(params, "top_p", 1.0, 1e-9, 1.0), seed, _stop(params), False,
                  False, False)


class GenerateAPI:
    def __init__(self, models: Callable[[str], GenerativeModel | None],
                 relay: Callable[[pb.ModelInferRequest], AsyncIterator[pb.ModelInferResponse]]
                 | None = None) -> None:
        self._models = models
        self._relay = relay

    def add_routes(self, app: web.Application) -> None:
        for suffix in ("/versions/{version}", ""):  # the longer first: names hold "/"
            app.router.add_post("/v2/models/{name:.+}" + suffix + "/generate", self.generate)
            app.router.add_post("/v2/models/{name:.+}" + suffix + "/generate_stream",
                                self.generate_stream)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, stream=False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, stream=True)

    async def _handle(self, request: web.Request, *, stream: bool) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        try:
            asked = _asked(body)
            model = self._models(name)
            deltas: AsyncIterator[Delta]
            if model is not None:
                prompt, params = _local(asked, model, chat=False)
                deltas = model.engine.submit(prompt, params)
                version = str(model.digest)
            elif self._relay is None:
                return _error(404, f"model {name!r} is not served here")
            else:
                deltas = await _started(_relayed(self._relay(_grpc_request(name, asked))))
                version = ""
        except _Bad as exc:
            return _error(400, str(exc))
        except SwarmError as exc:
            return _error(_HTTP.get(code_of(exc), 500), str(exc))
        try:
            if not stream:
                parts = [d async for d in deltas]
                return web.json_response({
                    "model_name": name, "model_version": version,
                    "text_output": "".join(d.text for d in parts),
                    "finish_reason": parts[-1].finish_reason})
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                async for delta in deltas:
                    if delta.finish_reason == "abort":
                        return response
                    event = {"model_name": name, "model_version": version,
                             "text_output": delta.text, "finish_reason": delta.finish_reason}
                    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            except ConnectionError:
                return response
            await response.write_eof()
            return response
        except SwarmError as exc:
            return _error(_HTTP.get(code_of(exc), 500), str(exc))
        finally:
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()
