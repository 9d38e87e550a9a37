"""Generation over gRPC `ModelStreamInfer`, as a Triton decoupled model answers.

A request names the model and carries either
- `text_input` (BYTES [1]): a prompt, completed as is, or
- `messages` (BYTES [1]): a JSON list of {"role", "content"}, put through the chat template;
sampling goes in request parameters `max_tokens`, `temperature`, `top_p`, `seed`, `stop`
(a string, or a JSON list of strings). The node answers with one response per chunk of
new text (output `text_output`, BYTES [1]); the last one carries the parameter
`triton_final_response` = true with `finish_reason`, `prompt_tokens` and
`completion_tokens`. A gateway node that does not serve the model relays the stream
from a provider the scheduler picks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import numpy as np

from swarm._errors import (
    InvalidInputError,
    ModelNotFoundError,
    NoProviderError,
    OverloadedError,
    SwarmError,
    UnavailableError,
    error_for,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import decode_raw, encode_bytes_elements
from swarm.node._generate._engine import SamplingParams
from swarm.node._generate._model import GenerativeModel
from swarm.node._service import FORWARDED_HEADER
from swarm.routing import Router, error_from_rpc
from swarm.scheduler import Failure, TokenCost, prompt_tokens_of

__all__ = ["FINAL", "GenerationStreams", "generation_request", "text_of"]

FINAL = "triton_final_response"
MAX_INPUT_BYTES = 1 << 20
_ROLES = ("system", "user", "assistant")
# Metadata marking a relayed call: the provider must not relay it again (no loops).
_FORWARDED = ((FORWARDED_HEADER, "1"),)
RELAY_ATTEMPTS = 3  # providers a relayed stream is offered to before its first response


def generation_request(model: str, *, prompt: str | None = None,
                       messages: list[Mapping[str, str]] | None = None, max_tokens: int = 128,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                       stop: tuple[str, ...] = (), request_id: str = "") -> pb.ModelInferRequest:
    """The ModelStreamInfer request the SDK sends (see the module docstring)."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    if messages is not None:
        name, value = "messages", json.dumps(list(messages)).encode()
    else:
        name, value = "text_input", (prompt or "").encode()
    request.inputs.add(name=name, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes_elements([value]))
    p = request.parameters
    p["max_tokens"].int64_param = max_tokens
    p["temperature"].double_param = temperature
    p["top_p"].double_param = top_p
    if seed is not None:
        p["seed"].int64_param = seed
    if stop:
        p["stop"].string_param = json.dumps(list(stop))
    return request


def _text_input(request: pb.ModelInferRequest) -> tuple[str, str]:
    if len(request.inputs) != 1:
        raise InvalidInputError("a generation request has one input: text_input or messages")
    tensor = request.inputs[0]
    if tensor.name not in ("text_input", "messages") or tensor.datatype != "BYTES" \
            or list(tensor.shape) not in ([1], [1, 1]):
        raise InvalidInputError("input must be text_input or messages, BYTES, shape [1]")
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(raw) > MAX_INPUT_BYTES + 4:
            raise InvalidInputError(f"input larger than {MAX_INPUT_BYTES} bytes")
        value = decode_raw("BYTES", (1,), raw).reshape(-1)[0]
    elif tensor.contents.bytes_contents:
        value = tensor.contents.bytes_contents[0]
    else:
        raise InvalidInputError("the input holds no data")
    try:
        return tensor.name, bytes(value).decode()
    except UnicodeDecodeError as exc:
        raise InvalidInputError("the input is not UTF-8") from exc


def _param(request: pb.ModelInferRequest, key: str, kind: str) -> Any:
    if key not in request.parameters:
        return None
    p = request.parameters[key]
    which = p.WhichOneof("parameter_choice")
    if kind == "number" and which in ("int64_param", "double_param", "uint64_param"):
        return getattr(p, which)
    if kind == "int" and which in ("int64_param", "uint64_param"):
        return getattr(p, which)
    if kind == "str" and which == "string_param":
        return p.string_param
    raise InvalidInputError(f"parameter {key!r} has the wrong type ({which})")


def _resume_tokens(request: pb.ModelInferRequest, model: GenerativeModel,
                   max_len: int) -> list[int]:
    text = _param(request, "resume_tokens", "str")
    if not text:
        return []
    if len(text) > 16 * max_len:
        raise InvalidInputError("resume_tokens is longer than any context")
    try:
        ids = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError("resume_tokens is not a JSON list") from exc
    vocab = model.tokenizer.vocab_size
    if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise InvalidInputError(f"resume_tokens: a JSON list of token ids in [0, {vocab})")
    return ids


def parse(request: pb.ModelInferRequest, model: GenerativeModel) -> tuple[list[int], SamplingParams]:
    kind, text = _text_input(request)
    tok = model.tokenizer
    if kind == "messages":
        try:
            messages = json.loads(text)
        except ValueError as exc:
            raise InvalidInputError("messages is not JSON") from exc
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in _ROLES
                and isinstance(m.get("content"), str) for m in messages):
            raise InvalidInputError(f"messages: a non-empty list of {{role in {_ROLES}, content}}")
        prompt = tok.chat_prompt([{"role": m["role"], "content": m["content"]} for m in messages])
    else:
        prompt = tok.encode(text)
    max_len = model.engine.max_len
    if not prompt:
        raise InvalidInputError("the prompt is empty")
    if len(prompt) >= max_len:
        raise InvalidInputError(f"the prompt is {len(prompt)} tokens; the context is {max_len}")
    max_tokens = _param(request, "max_tokens", "int")
    max_tokens = min(128, max_len - len(prompt)) if max_tokens is None else int(max_tokens)
    resumed = _resume_tokens(request, model, max_len)
    if resumed:  # a client resuming a stream another provider broke off: replay its tokens
        if len(resumed) >= max_tokens:
            raise InvalidInputError("resume_tokens: as many as max_tokens, nothing to generate")
        prompt = prompt + resumed
        max_tokens -= len(resumed)
        if len(prompt) >= max_len:
            raise InvalidInputError("prompt + resume_tokens exceed the context")
    temperature = _param(request, "temperature", "number")
    top_p = _param(request, "top_p", "number")
    seed = _param(request, "seed", "int")
    stop_text = _param(request, "stop", "str")
    stop: tuple[str, ...] = ()
    if stop_text:
        try:
            loaded = json.loads(stop_text)
        except ValueError:
            loaded = stop_text
        loaded = [loaded] if isinstance(loaded, str) else loaded
        if not isinstance(loaded, list) or len(loaded) > 4 or not all(
                isinstance(s, str) and s for s in loaded):
            raise InvalidInputError("stop: a string or a JSON list of at most 4 strings")
        stop = tuple(loaded)
    t = 1.0 if temperature is None else float(temperature)
    p = 1.0 if top_p is None else float(top_p)
    if not 0 <= t <= 2 or not 0 < p <= 1:
        raise InvalidInputError("temperature must be in [0, 2] and top_p in (0, 1]")
    if seed is not None and not 0 <= seed < 2**63:
        raise InvalidInputError("seed must be in [0, 2^63)")
    return prompt, SamplingParams(max_tokens=max_tokens, temperature=t, top_p=p, seed=seed,
                                  stop=stop, replay=len(resumed))


class GenerationStreams:
    """Serves generation requests of ModelStreamInfer: locally, or relayed to a provider."""

    def __init__(self, models: Callable[[str], GenerativeModel | None],
                 router: Callable[[], Router | None]) -> None:
        self._models = models
        self._router = router

    def handles(self, request: pb.ModelInferRequest, served_here: bool, forwarded: bool) -> bool:
        """Whether `request` is a generation request this class answers."""
        if self._models(request.model_name) is not None:
            return True
        names = {t.name for t in request.inputs}
        return not served_here and not forwarded and bool(names & {"text_input", "messages"}) \
            and self._router() is not None

    async def stream(self, request: pb.ModelInferRequest,
                     deadline_s: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        model = self._models(request.model_name)
        if model is None:
            async for response in self._relay(request, deadline_s):
                yield response
            return
        prompt, params = parse(request, model)
        generation = model.engine.submit(prompt, params)
        try:
            async for delta in generation:
                response = pb.ModelInferResponse(model_name=model.name,
                                                 model_version=str(model.digest), id=request.id)
                response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
                response.raw_output_contents.append(encode_bytes_elements([delta.text.encode()]))
                # The ids behind the text: a client resumes elsewhere by replaying them.
                response.parameters["token_ids"].string_param = json.dumps(list(delta.token_ids))
                if delta.finish_reason is not None:
                    if delta.finish_reason == "abort":
                        raise SwarmError("the node stopped before the answer ended")
                    p = response.parameters
                    p[FINAL].bool_param = True
                    p["finish_reason"].string_param = delta.finish_reason
                    p["prompt_tokens"].int64_param = delta.prompt_tokens
                    p["completion_tokens"].int64_param = delta.completion_tokens
                yield response
        finally:
            await generation.aclose()

    async def _relay(self, request: pb.ModelInferRequest,
                     deadline_s: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        router = self._router()
        if router is None:
            raise ModelNotFoundError(f"model {request.model_name!r} is not served here")
        cost = relay_cost(request)
        try:
            digest = router.resolve(request.model_name)
            candidates = router.candidates(digest, explore=True, generation=cost)
        except NoProviderError as exc:
            raise ModelNotFoundError(f"no provider serves {request.model_name!r}: {exc}") from exc
        forwarded = pb.ModelInferRequest()
        forwarded.CopyFrom(request)
        forwarded.model_version = str(digest)
        # A provider that fails before its first response (unreachable, draining, full)
        # costs the caller nothing: the next candidate gets the request. After a response,
        # the failure is the caller's to resume (it holds the tokens so far).
        tried: list[SwarmError] = []
        for candidate in candidates[:RELAY_ATTEMPTS]:
            started = finished = False
            watch = router.watch_stream(candidate, digest, cost or TokenCost(1))
            try:
                async for response in self._relay_one(router, candidate, forwarded, deadline_s):
                    started = True
                    watch.received(_token_count(response))
                    finished = FINAL in response.parameters
                    yield response
                return
            except (UnavailableError, OverloadedError) as exc:
                watch.close(failure=Failure.UNAVAILABLE if isinstance(exc, UnavailableError)
                            else Failure.OVERLOADED)
                if started:
                    raise
                tried.append(exc)
            finally:
                watch.close(finished=finished)
        raise tried[-1] if tried else NoProviderError(f"no provider for {request.model_name!r}")

    async def _relay_one(self, router: Router, candidate: Any, forwarded: pb.ModelInferRequest,
                         deadline_s: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        async with router.channel(candidate) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> AsyncIterator[pb.ModelInferRequest]:
                yield forwarded

            call = stub.ModelStreamInfer(one(), timeout=deadline_s, metadata=_FORWARDED)
            try:
                async for message in call:
                    if message.error_message:
                        raise _remote_error(message.error_message)
                    yield message.infer_response
                    if FINAL in message.infer_response.parameters:
                        break
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc, candidate.endpoint) from exc
            finally:
                call.cancel()


def relay_cost(request: pb.ModelInferRequest) -> TokenCost | None:
    """A relayed request's cost in tokens, estimated from its text (the gateway does not
    tokenize); None when it is malformed (the provider refuses it with the reason)."""
    try:
        kind, text = _text_input(request)
        max_tokens = _param(request, "max_tokens", "int")
        resume = _param(request, "resume_tokens", "str")
    except InvalidInputError:
        return None
    messages = 0
    if kind == "messages":
        try:
            loaded = json.loads(text)
        except ValueError:
            return None
        if isinstance(loaded, list):
            messages = len(loaded)
            text = "".join(m.get("content", "") for m in loaded
                           if isinstance(m, dict) and isinstance(m.get("content"), str))
    resumed = resume.count(",") + 1 if resume and resume.strip("[] ") else 0
    limit = None if max_tokens is None or max_tokens < 1 else int(min(max_tokens, 1 << 20))
    if limit is not None:
        limit = max(1, limit - resumed)
    return TokenCost(prompt_tokens_of(text, messages) + resumed, limit)


def _token_count(response: pb.ModelInferResponse) -> int:
    """Token ids a relayed response carries (its `token_ids`, a JSON list), by counting."""
    if "token_ids" not in response.parameters:
        return 0
    ids = response.parameters["token_ids"].string_param.strip("[] ")
    return ids.count(",") + 1 if ids else 0


def _remote_error(message: str) -> SwarmError:
    code, _, text = message.partition(": ")
    return error_for(code, text or message)


def text_of(response: pb.ModelInferResponse) -> str:
    """The `text_output` of one streamed response."""
    for i, out in enumerate(response.outputs):
        if out.name == "text_output":
            if response.raw_output_contents:
                value = decode_raw("BYTES", tuple(out.shape), response.raw_output_contents[i])
            else:
                value = np.array(out.contents.bytes_contents, dtype=object)
            return bytes(value.reshape(-1)[0]).decode(errors="replace")
    return ""
