"""OpenAI `POST /v1/chat/completions` and `/v1/completions` over the node's engines.

Request bodies are checked field by field before any work: a field the API does not
implement gets a 400 that names it (so a client never silently gets other semantics),
as do empty or malformed messages, unknown roles, n != 1, and token counts that cannot
fit the model's context. Streams are Server-Sent Events ending with `data: [DONE]`; a
client that goes away cancels its sequence (its KV slot is freed at the next step).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from swarm._errors import SwarmError, code_of
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import encode_bytes_elements
from swarm.node._generate._engine import Delta, SamplingParams
from swarm.node._generate._grpc import text_of
from swarm.node._generate._model import GenerativeModel
from swarm.node._generate._tokenizer import ChatTokenizer

__all__ = ["ChatAPI"]

_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
           "stream_options", "logprobs", "user"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo"}
_ROLES = {"system", "user", "assistant"}
MAX_STOP = 4
MAX_MESSAGES = 512
_STATUS = {"INVALID_ARGUMENT": (400, "invalid_request_error"),
           "NOT_FOUND": (404, "invalid_request_error"),
           "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
           "UNAVAILABLE": (503, "service_unavailable")}


class _Bad(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param,
                                         "code": None}}, status=status)


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _Bad(f"'{key}' must be a number in [{lo}, {hi}]", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"'{key}' must be an integer", key)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stop)):
        raise _Bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP}", "stop")
    return tuple(stop)


def _content(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _Bad(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise _Bad(f"messages[{i}].content must be a string", "messages")
    return content


class ChatAPI:
    """Routes on an aiohttp app; `models` gives the generative model served under a name."""

    def __init__(self, models: Callable[[str], GenerativeModel | None],
                 relay: Callable[[pb.ModelInferRequest], AsyncIterator[pb.ModelInferResponse]]
                 | None = None) -> None:
        self._models = models
        self._relay = relay  # streams of models served elsewhere (None: answer 404)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def _handle(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "body must be a JSON object")
        try:
            if not isinstance(body, dict):
                raise _Bad("body must be a JSON object")
            name = body.get("model")
            if not isinstance(name, str) or not name:
                raise _Bad("'model' is required", "model")
            asked = _parse(body, chat=chat)
            model = self._models(name)
            generation: AsyncIterator[Delta]
            if model is not None:
                prompt, params = _local(asked, model, chat=chat)
                generation = model.engine.submit(prompt, params)
                tokenizer: ChatTokenizer | None = model.tokenizer
            elif self._relay is None:
                raise _NotHere(name)
            else:  # served elsewhere: relayed over gRPC to a provider the scheduler picks
                if asked.logprobs:
                    raise _Bad("logprobs are available only from a node serving the model",
                               "logprobs")
                generation = _relayed(self._relay(_grpc_request(name, asked)))
                generation = await _started(generation)  # a refusal is an HTTP error yet
                tokenizer = None
        except _NotHere as exc:
            return _error(404, "invalid_request_error", str(exc), "model")
        except _Bad as exc:
            return _error(400, "invalid_request_error", str(exc), exc.param)
        except SwarmError as exc:
            status, kind = _STATUS.get(code_of(exc), (500, "server_error"))
            return _error(status, kind, str(exc))
        reply = _Reply(name, tokenizer, generation, chat=chat, logprobs=asked.logprobs)
        try:
            if asked.stream:
                return await reply.stream(request, asked.include_usage)
            return await reply.whole()
        except SwarmError as exc:  # a relayed stream failing before its answer was whole
            status, kind = _STATUS.get(code_of(exc), (500, "server_error"))
            return _error(status, kind, str(exc))
        finally:
            close = getattr(generation, "aclose", None)
            if close is not None:
                await close()


@dataclass(frozen=True, slots=True)
class _Asked:
    """A request's fields, checked without the model (a gateway relays them as they are)."""

    messages: list[dict[str, str]] | None
    text: str | None
    limit: int | None  # max_tokens asked for (None: the default)
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    logprobs: bool
    stream: bool
    include_usage: bool


def _parse(body: Mapping[str, Any], *, chat: bool) -> _Asked:
    unknown = sorted(set(body) - (_CHAT_FIELDS if chat else _COMPLETION_FIELDS))
    if unknown:
        raise _Bad(f"unsupported field(s): {', '.join(unknown)}", unknown[0])
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    if chat:
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise _Bad("'messages' must be a non-empty list", "messages")
        if len(raw) > MAX_MESSAGES:
            raise _Bad(f"at most {MAX_MESSAGES} messages", "messages")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise _Bad(f"messages[{i}].role must be one of {sorted(_ROLES)}", "messages")
            if set(m) - {"role", "content", "name"}:
                extra = sorted(set(m) - {"role", "content", "name"})
                raise _Bad(f"messages[{i}]: unsupported field(s): {', '.join(extra)}",
                           "messages")
            messages.append({"role": m["role"], "content": _content(m, i)})
        if messages[-1]["role"] == "assistant":
            raise _Bad("the last message must not be the assistant's "
                       "(continuing a reply is not supported)", "messages")
        if _integer(body, "top_logprobs"):
            raise _Bad("top_logprobs > 0 is not supported (logprobs of the chosen tokens only)",
                       "top_logprobs")
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise _Bad("'logprobs' must be a boolean", "logprobs")
        limit = _integer(body, "max_completion_tokens")
        if limit is None:
            limit = _integer(body, "max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _Bad("'prompt' must be a non-empty string (one prompt per request)", "prompt")
        text = prompt
        if body.get("echo"):
            raise _Bad("echo is not supported", "echo")
        lp = _integer(body, "logprobs")
        if lp is not None and not 0 <= lp <= 1:
            raise _Bad("'logprobs' may be 0 or 1 (the chosen tokens only)", "logprobs")
        logprobs = lp is not None
        limit = _integer(body, "max_tokens")
    if _integer(body, "n") not in (None, 1):
        raise _Bad("only n=1 is supported", "n")
    if limit is not None and limit < 1:
        raise _Bad("max_tokens must be at least 1", "max_tokens")
    seed = _integer(body, "seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise _Bad("'seed' must be in [0, 2^63)", "seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _Bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _Bad("'stream_options' is only allowed with stream", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} \
                or not isinstance(options.get("include_usage", False), bool):
            raise _Bad("'stream_options' takes only include_usage (a boolean)",
                       "stream_options")
    return _Asked(messages, text, limit, _number(body, "temperature", 1.0, 0.0, 2.0),
                  _number(body, "top_p", 1.0, 1e-9, 1.0), seed, _stop(body), logprobs, stream,
                  bool(options and options.get("include_usage")))


def _local(asked: _Asked, model: GenerativeModel, *, chat: bool) -> tuple[list[int], SamplingParams]:
    """Tokenized, and checked against the model's context."""
    tok = model.tokenizer
    max_len = model.engine.max_len
    if asked.messages is not None:
        prompt = tok.chat_prompt(asked.messages)
        default = max_len - len(prompt)
    else:
        prompt = tok.encode(asked.text or "")
        default = 16
    if not prompt:
        raise _Bad("the prompt is empty", "prompt")
    if len(prompt) >= max_len:
        raise _Bad(f"the prompt is {len(prompt)} tokens; the context is {max_len}",
                   "messages" if chat else "prompt")
    max_tokens = default if asked.limit is None else asked.limit
    if len(prompt) + max_tokens > max_len:
        raise _Bad(f"max_tokens must be in [1, {max_len - len(prompt)}] for this prompt "
                   f"({len(prompt)} of the {max_len} tokens of context)", "max_tokens")
    return prompt, SamplingParams(max_tokens=max_tokens, temperature=asked.temperature,
                                  top_p=asked.top_p, seed=asked.seed, stop=asked.stop,
                                  logprobs=asked.logprobs)


def _grpc_request(model: str, asked: _Asked) -> pb.ModelInferRequest:
    """The ModelStreamInfer request a gateway relays (swarm.node._generate._grpc)."""
    request = pb.ModelInferRequest(model_name=model)
    if asked.messages is not None:
        name, value = "messages", json.dumps(asked.messages)
    else:
        name, value = "text_input", asked.text or ""
    request.inputs.add(name=name, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes_elements([value.encode()]))
    p = request.parameters
    if asked.limit is not None:
        p["max_tokens"].int64_param = asked.limit
    p["temperature"].double_param = asked.temperature
    p["top_p"].double_param = asked.top_p
    if asked.seed is not None:
        p["seed"].int64_param = asked.seed
    if asked.stop:
        p["stop"].string_param = json.dumps(list(asked.stop))
    return request


async def _relayed(responses: AsyncIterator[pb.ModelInferResponse]) -> AsyncIterator[Delta]:
    async for response in responses:
        params = response.parameters
        final = "triton_final_response" in params
        yield Delta(text_of(response),
                    finish_reason=params["finish_reason"].string_param if final else None,
                    prompt_tokens=params["prompt_tokens"].int64_param if final else 0,
                    completion_tokens=params["completion_tokens"].int64_param if final else 0)


async def _started(deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """`deltas` with its first item already awaited (its errors raised here)."""
    first = await anext(deltas)

    async def chained() -> AsyncIterator[Delta]:
        try:
            yield first
            async for delta in deltas:
                yield delta
        finally:
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()

    return chained()


class _NotHere(_Bad):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is not served here", "model")


class _Reply:
    def __init__(self, name: str, tokenizer: ChatTokenizer | None,
                 generation: AsyncIterator[Delta], *, chat: bool, logprobs: bool) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.generation = generation
        self.chat = chat
        self.logprobs = logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _logprobs(self, deltas: list[Delta]) -> Any:
        if not self.logprobs:
            return None
        tok = self.tokenizer
        if tok is None:
            return None
        pairs = [(tok.decode([t]), lp) for d in deltas for t, lp in zip(d.token_ids, d.logprobs,
                                                                          strict=False)]
        if self.chat:
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                                 "top_logprobs": []} for s, lp in pairs]}
        return {"tokens": [s for s, _ in pairs], "token_logprobs": [lp for _, lp in pairs],
                "top_logprobs": [{s: lp} for s, lp in pairs], "text_offset": []}

    @staticmethod
    def _usage(last: Delta) -> dict[str, int]:
        return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                "total_tokens": last.prompt_tokens + last.completion_tokens}

    def _choice(self, text: str | None, finish: str | None, deltas: list[Delta], *,
                stream: bool, first: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": self._logprobs(deltas),
                                  "finish_reason": finish}
        if not self.chat:
            choice["text"] = text or ""
        elif stream:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["message"] = {"role": "assistant", "content": text or ""}
        return choice

    def _object(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        kind = self.object + (".chunk" if self.chat and "stream" in extra else "")
        extra.pop("stream", None)
        return {"id": self.id, "object": kind, "created": self.created, "model": self.name,
                "choices": choices, **extra}

    async def whole(self) -> web.Response:
        deltas = [d async for d in self.generation]
        last = deltas[-1]
        if last.finish_reason == "abort":
            return _error(503, "service_unavailable", "the node stopped before the answer ended")
        text = "".join(d.text for d in deltas)
        body = self._object([self._choice(text, last.finish_reason, deltas, stream=False)],
                            usage=self._usage(last))
        return web.json_response(body)

    async def stream(self, request: web.Request, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        usage: dict[str, Any] = {"usage": None} if include_usage else {}

        async def send(obj: dict[str, Any]) -> None:
            await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        first = True
        try:
            if self.chat:  # the role first, as OpenAI's server does
                await send(self._object([self._choice("", None, [], stream=True, first=True)],
                                        stream=True, **usage))
                first = False
            async for delta in self.generation:
                if delta.finish_reason == "abort":
                    return response  # the node is stopping: no [DONE], the stream is cut
                done = delta.finish_reason
                if delta.text or done is None:
                    await send(self._object([self._choice(delta.text, None, [delta], stream=True,
                                                          first=first)], stream=True, **usage))
                    first = False
                    if done is not None:
                        await send(self._object([self._choice(None, done, [], stream=True)],
                                                stream=True, **usage))
                elif done is not None:
                    await send(self._object([self._choice(None, done, [delta], stream=True)],
                                            stream=True, **usage))
                if done is not None and include_usage:
                    await send(self._object([], stream=True, usage=self._usage(delta)))
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, ConnectionError):
            return response  # the client went away: the caller's finally cancels the sequence
        await response.write_eof()
        return response
