"""Text generation over `ModelStreamInfer` (a Triton decoupled model's answers).

The request: one input, `text_input` (a prompt) or `messages` (JSON chat messages),
BYTES [1]; sampling in request parameters. The answer: one response per chunk of
text (`text_output`), the last one marked `triton_final_response`. The node side is
swarm/node/_generate/_grpc.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc

from swarm._errors import SwarmError, UnavailableError, error_for
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import decode_raw, encode_bytes_elements
from swarm.routing import error_from_rpc
from swarm.scheduler import TokenCost, prompt_tokens_of

__all__ = ["FINAL", "GenerationChunk", "GenerationOptions", "generation_request", "stream_text",
           "token_cost"]

# Providers tried for one generation in swarm mode: a stream broken off resumes on the next.
RESUME_ATTEMPTS = 3

FINAL = "triton_final_response"


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def generation_request(model: str, options: GenerationOptions, *, prompt: str | None = None,
                       messages: Sequence[Mapping[str, str]] | None = None,
                       version: str = "", resume: Sequence[int] = ()) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    if messages is not None:
        name = "messages"
        value = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages])
    else:
        name, value = "text_input", prompt or ""
    request.inputs.add(name=name, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes_elements([value.encode()]))
    p = request.parameters
    p["max_tokens"].int64_param = options.max_tokens
    p["temperature"].double_param = options.temperature
    p["top_p"].double_param = options.top_p
    if options.seed is not None:
        p["seed"].int64_param = options.seed
    if options.stop:
        p["stop"].string_param = json.dumps(list(options.stop))
    if resume:
        p["resume_tokens"].string_param = json.dumps(list(resume))
    return request


def token_cost(options: GenerationOptions, *, prompt: str | None = None,
               messages: Sequence[Mapping[str, str]] | None = None,
               resume: Sequence[int] = ()) -> TokenCost:
    """What the request costs a provider, in tokens, for routing by tokens: the prompt's
    estimated from its length (the client does not tokenize), plus tokens already streamed
    when resuming (prefilled again there), and the max_tokens still to generate."""
    if messages is not None:
        prompt_tokens = prompt_tokens_of("".join(m["content"] for m in messages), len(messages))
    else:
        prompt_tokens = prompt_tokens_of(prompt or "")
    return TokenCost(prompt_tokens + len(resume), max(1, options.max_tokens - len(resume)))


def _text(response: pb.ModelInferResponse) -> str:
    for i, out in enumerate(response.outputs):
        if out.name == "text_output" and i < len(response.raw_output_contents):
            value = decode_raw("BYTES", tuple(out.shape), response.raw_output_contents[i])
            return bytes(value.reshape(-1)[0]).decode(errors="replace")
    return ""


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One streamed response of a generation (`AsyncClient.chat_chunks`)."""

    text: str
    # The ids of the tokens behind the text (resuming replays them); may be more than one.
    token_ids: tuple[int, ...]
    # The last chunk of the generation.
    final: bool
    # The provider that sent it ("host:port"; in swarm mode the address it advertises).
    endpoint: str = ""
    # On the final chunk: "stop" or "length".
    finish_reason: str | None = None


def _ids(response: pb.ModelInferResponse) -> tuple[int, ...]:
    if "token_ids" not in response.parameters:
        return ()
    try:
        ids = json.loads(response.parameters["token_ids"].string_param)
    except ValueError:
        return ()
    return tuple(i for i in ids if isinstance(i, int)) if isinstance(ids, list) else ()


async def stream_text(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest,
                      target: str, timeout: float | None) -> AsyncIterator[GenerationChunk]:
    """The chunks of one generation; the call is cancelled if the reader stops early."""

    async def one() -> AsyncIterator[pb.ModelInferRequest]:
        yield request

    call = stub.ModelStreamInfer(one(), timeout=timeout)
    try:
        async for message in call:
            if message.error_message:
                code, _, text = message.error_message.partition(": ")
                raise error_for(code, text or message.error_message)
            parameters = message.infer_response.parameters
            final = FINAL in parameters
            reason = parameters["finish_reason"].string_param or None \
                if final and "finish_reason" in parameters else None
            yield GenerationChunk(_text(message.infer_response), _ids(message.infer_response),
                                  final, target, reason)
            if final:
                return
        raise UnavailableError(f"{target} ended the stream without a final response")
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc, target) from exc
    except SwarmError:
        raise
    finally:
        call.cancel()
