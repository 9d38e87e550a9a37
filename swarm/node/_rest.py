"""The Open Inference Protocol over HTTP: KServe v2 REST with Triton's extensions.

Mounted on the node's HTTP port next to the OpenAI-compatible API, so that
`tritonclient.http` and curl work against every tensor model the node serves or
routes:

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200, or 400 when not (as Triton)
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  .../ready, .../config, .../stats      readiness, Triton model config, statistics
    POST .../infer                             inference: JSON tensors and Triton's binary
                                               tensor extension
    GET  /v2/models/stats, POST /v2/repository/index

Model names hold a `/` (`builtin/mlp`): both the raw form tritonclient.http sends
(`/v2/models/builtin/mlp/infer`) and the percent-encoded one (`builtin%2Fmlp`) are
accepted. Every call goes through the node's gRPC InferenceService (its handlers are
called with a stand-in for the gRPC context), so names, versions (digests, unique
prefixes, tags), forwarding to providers through the scheduler, statistics and
metrics are those of the gRPC side. Errors are `{"error": "..."}` with the HTTP
status of the error's gRPC status name (the one table in swarm/_errors.py, mapped
to HTTP as the OpenAI API maps it).

The binary extension: the body is a JSON header of `Inference-Header-Content-Length`
bytes, then the raw tensors in the order of the inputs whose `parameters` give a
`binary_data_size`. Responses put outputs asked for with `binary_data` (or every
output, with the request parameter `binary_data_output`) after the JSON header the
same way. Every length, shape, datatype and name is checked before any work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any, NoReturn, cast

import grpc
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from swarm._errors import InvalidInputError, SwarmError, code_of
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import DATATYPES, decode_contents, decode_raw, encode_bytes_elements, encode_raw
from swarm.node._gateway import (
    _CLIENT_CLOSED,
    _OPENAI_STATUS,
    _HungUp,
    _nested_deeper,
    _unicode,
    _unless_hung_up,
)
from swarm.node._metrics import NodeMetrics
from swarm.node._service import MAX_ELEMENTS, InferenceService, status_details

__all__ = ["HEADER_LENGTH", "OpenInferenceHTTP"]

log = logging.getLogger("swarm.node")

# Triton's binary tensor extension: bytes of JSON at the start of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
# Most tensors one request may name (inputs, and outputs asked for), and their highest
# rank: checked before anything is decoded.
MAX_TENSORS = 64
MAX_RANK = 32
_DIGITS = re.compile(r"[0-9]{1,19}")
# A model name: `namespace/name`, or one percent-encoded segment (`builtin%2Fmlp`).
_NAME = r"{name:[^/]+(?:/[^/]+)?}"
_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)
_NUMERIC_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}


class _Aborted(Exception):
    """What a gRPC handler's context.abort(code, details) becomes here."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """The part of a grpc.aio.ServicerContext InferenceService's handlers use."""

    def invocation_metadata(self) -> tuple[()]:
        return ()  # never marked as forwarded: an HTTP call may be routed on

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code.name, details)


_CONTEXT = cast(grpc.aio.ServicerContext, _Context())


class _Refused(Exception):
    """A request refused before any work; `reason` labels swarm_http_rejected."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _http_status(code: str) -> int:
    return _OPENAI_STATUS.get(code, (500, ""))[0]


def _is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _json_of(message: Message) -> Any:
    """A message as Triton's HTTP API writes it: proto3 JSON, 64-bit integers as numbers."""
    raw = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return _numbers(message.DESCRIPTOR, raw)


def _numbers(descriptor: Any, value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            target = field.message_type
            if target.GetOptions().map_entry:
                inner = target.fields_by_name["value"]
                if inner.message_type is not None:
                    value[key] = {k: _numbers(inner.message_type, v) for k, v in item.items()}
                elif inner.type in _INT64:
                    value[key] = {k: int(v) for k, v in item.items()}
            elif isinstance(item, list):
                value[key] = [_numbers(target, v) if isinstance(v, dict) else v for v in item]
            elif isinstance(item, dict):
                value[key] = _numbers(target, item)
        elif field.type in _INT64:
            value[key] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return value


def _text(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidInputError(f"{what} must be a {'' if empty else 'non-empty '}string")
    if not _unicode(value):
        raise _Refused(400, f"{what} holds a lone surrogate: not Unicode text", "encoding")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{what} must be an integer from {low} to {high}")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise InvalidInputError(f"input {name!r}: shape must be a list of at most {MAX_RANK} sizes")
    shape = [_integer(d, f"input {name!r}: each dimension", 0, MAX_ELEMENTS) for d in value]
    count = 1
    for dim in shape:
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidInputError(f"input {name!r}: shape {shape} exceeds {MAX_ELEMENTS} elements")
    return shape


def _count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _json_tensor(name: str, datatype: str, count: int, data: Any) -> bytes:
    """The raw contents (as in raw_input_contents) of a tensor given as JSON `data`."""
    if datatype == "BYTES":
        try:
            items = np.asarray(data, dtype=object).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"input {name!r}: data must be a list of strings") from exc
        if items.size != count:
            raise InvalidInputError(f"input {name!r}: {items.size} values, the shape needs {count}")
        if not all(isinstance(item, str) for item in items):
            raise InvalidInputError(f"input {name!r}: BYTES data must be strings")
        return encode_bytes_elements([_text(item, f"input {name!r}", empty=True).encode()
                                      for item in items])
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"input {name!r}: data must be a (nested) list of numbers") from exc
    if array.size != count:
        raise InvalidInputError(f"input {name!r}: {array.size} values, the shape needs {count}")
    dtype = DATATYPES[datatype]
    if count == 0:
        return b""
    kinds = _NUMERIC_KINDS.get(datatype, "iu")
    if array.dtype.kind not in kinds:
        raise InvalidInputError(f"input {name!r}: data must be {_KIND_WORDS[kinds]} for {datatype}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInputError(f"input {name!r}: a value does not fit {datatype}")
    with np.errstate(all="ignore"):  # a float past FP16's range becomes inf, as a cast does
        return np.ascontiguousarray(array, dtype=dtype).tobytes()


_KIND_WORDS = {"b": "true/false", "iuf": "numbers", "iu": "integers"}


class OpenInferenceHTTP:
    """KServe v2 REST / Triton HTTP routes over a node's InferenceService."""

    def __init__(self, service: InferenceService, *, metrics: NodeMetrics,
                 max_body_bytes: int = 32 << 20, max_json_depth: int = 32) -> None:
        self._service = service
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._max_depth = max_json_depth

    def mount(self, app: web.Application) -> None:
        """Add the /v2 routes (and their error shape) to `app` before it starts.

        The app's client_max_size bounds bodies; it should be `max_body_bytes`.
        """
        app.middlewares.append(self._errors)
        route = app.router
        route.add_get("/v2", self.server_metadata)
        route.add_get("/v2/health/live", self.live)
        route.add_get("/v2/health/ready", self.ready)
        route.add_post("/v2/repository/index", self.repository_index)
        route.add_get("/v2/models/stats", self.statistics)
        model = "/v2/models/" + _NAME
        for base in (model + "/versions/{version:[^/]+}", model):
            route.add_post(base + "/infer", self.infer)
            route.add_get(base + "/ready", self.model_ready)
            route.add_get(base + "/config", self.config)
            route.add_get(base + "/stats", self.statistics)
            route.add_get(base, self.metadata)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """/v2 answers every failure as KServe does: `{"error": "..."}`, never a traceback."""
        if not _is_v2(request.path):
            return await handler(request)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason)
        except _Refused as exc:
            if exc.reason is not None:
                self._metrics.http_rejected.labels(exc.reason).inc()
            return _error(exc.status, str(exc))
        except _Aborted as exc:
            return _error(_http_status(exc.code), str(exc))
        except SwarmError as exc:
            return _error(_http_status(code_of(exc)), status_details(exc))
        except Exception:
            log.exception("unexpected error in the HTTP Open Inference Protocol",
                          extra={"path": request.path[:200]})
            return _error(500, "internal error")

    # ------------------------------------------------------------------ health and metadata

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        """(name, version) of the URL, as Unicode text (else a 400)."""
        name = request.match_info.get("name", "")
        version = request.match_info.get("version", "")
        for what, text in (("model name", name), ("model version", version)):
            if not _unicode(text):
                raise InvalidInputError(f"{what} is not Unicode text")
        return name, version

    async def live(self, request: web.Request) -> web.Response:
        response = await self._service.ServerLive(pb.ServerLiveRequest(), _CONTEXT)
        return web.json_response({"live": response.live}, status=200 if response.live else 400)

    async def ready(self, request: web.Request) -> web.Response:
        response = await self._service.ServerReady(pb.ServerReadyRequest(), _CONTEXT)
        return web.json_response({"ready": response.ready}, status=200 if response.ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        response = await self._service.ServerMetadata(pb.ServerMetadataRequest(), _CONTEXT)
        return web.json_response(_json_of(response))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        response = await self._service.ModelReady(
            pb.ModelReadyRequest(name=name, version=version), _CONTEXT)
        return web.json_response({"name": name, "ready": response.ready},
                                 status=200 if response.ready else 400)

    async def metadata(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        response = await self._service.ModelMetadata(
            pb.ModelMetadataRequest(name=name, version=version), _CONTEXT)
        return web.json_response(_json_of(response))

    async def config(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        response = await self._service.ModelConfig(
            pb.ModelConfigRequest(name=name, version=version), _CONTEXT)
        return web.json_response(_json_of(response.config))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        response = await self._service.ModelStatistics(
            pb.ModelStatisticsRequest(name=name, version=version), _CONTEXT)
        return web.json_response(_json_of(response))

    async def repository_index(self, request: web.Request) -> web.Response:
        raw = await self._read(request)
        body = _object(self._parse(raw) if raw.strip() else None, "the request")
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInputError("'ready' must be true or false")
        response = await self._service.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=ready), _CONTEXT)
        return web.json_response([_json_of(m) for m in response.models])

    # ------------------------------------------------------------------ inference

    async def _read(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _Refused(413, f"body larger than {self._max_body} bytes", "body_size") from exc

    def _parse(self, raw: bytes | memoryview) -> Any:
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError as exc:
            raise _Refused(400, "the JSON must be UTF-8", "encoding") from exc
        try:
            body = json.loads(text)
        except RecursionError as exc:  # json's parser stops at Python's recursion limit
            raise _Refused(400, f"JSON nests deeper than {self._max_depth}", "json_depth") from exc
        except ValueError as exc:
            raise _Refused(400, f"the request must be JSON: {exc}") from exc
        if _nested_deeper(body, self._max_depth):
            raise _Refused(400, f"JSON nests deeper than {self._max_depth}", "json_depth")
        return body

    async def infer(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        raw = await self._read(request)
        declared = request.headers.get(HEADER_LENGTH)
        if declared is None:
            head, binary = memoryview(raw), memoryview(b"")
        else:
            if not _DIGITS.fullmatch(declared) or not 0 < int(declared) <= len(raw):
                raise InvalidInputError(
                    f"{HEADER_LENGTH} must be the JSON header's length in bytes, "
                    f"from 1 to the body's {len(raw)}")
            head, binary = memoryview(raw)[:int(declared)], memoryview(raw)[int(declared):]
        body = _object(self._parse(head), "the request")
        call, wanted, binary_default = self._request(name, version, body, binary)
        try:
            response = await _unless_hung_up(request, self._service.infer(call, None))
        except _HungUp:
            return web.Response(status=_CLIENT_CLOSED)
        return self._answer(response, wanted, binary_default)

    def _request(self, name: str, version: str, body: dict[str, Any],
                 binary: memoryview) -> tuple[pb.ModelInferRequest, dict[str, bool], bool]:
        """The gRPC request a JSON header and its binary section stand for; outputs' binary flags."""
        call = pb.ModelInferRequest(model_name=name, model_version=version,
                                    id=_text(body.get("id", ""), "'id'", empty=True))
        params = _object(body.get("parameters"), "'parameters'")
        binary_default = params.get("binary_data_output", False)
        if not isinstance(binary_default, bool):
            raise InvalidInputError("'binary_data_output' must be true or false")
        if "timeout" in params:
            call.parameters["timeout"].int64_param = _integer(
                params["timeout"], "the timeout parameter (microseconds)", 0, (1 << 63) - 1)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_TENSORS:
            raise InvalidInputError(f"'inputs' must be a list of 1 to {MAX_TENSORS} tensors")
        offset = 0
        for tensor in inputs:
            tensor = _object(tensor, "each input")
            tname = _text(tensor.get("name"), "an input's name")
            datatype = tensor.get("datatype")
            if datatype not in DATATYPES:
                raise InvalidInputError(f"input {tname!r}: unsupported datatype "
                                        f"{str(datatype)[:40]!r} (supported: {', '.join(DATATYPES)})")
            shape = _shape(tensor.get("shape"), tname)
            tparams = _object(tensor.get("parameters"), f"input {tname!r}: 'parameters'")
            if any(key.startswith("shared_memory") for key in tparams):
                raise InvalidInputError(f"input {tname!r}: shared memory is not supported")
            if "binary_data_size" in tparams:
                if "data" in tensor:
                    raise InvalidInputError(f"input {tname!r} has both data and binary_data_size")
                size = _integer(tparams["binary_data_size"], f"input {tname!r}: binary_data_size",
                                0, len(binary) - offset)
                if datatype != "BYTES" and size != _count(shape) * DATATYPES[datatype].itemsize:
                    raise InvalidInputError(
                        f"input {tname!r}: binary_data_size {size}, but {datatype} {shape} is "
                        f"{_count(shape) * DATATYPES[datatype].itemsize} bytes")
                contents = bytes(binary[offset:offset + size])
                offset += size
            elif "data" in tensor:
                contents = _json_tensor(tname, datatype, _count(shape), tensor["data"])
            else:
                raise InvalidInputError(f"input {tname!r} has neither data nor binary_data_size")
            call.inputs.add(name=tname, datatype=datatype, shape=shape)
            call.raw_input_contents.append(contents)
        if offset != len(binary):
            raise InvalidInputError(
                f"{len(binary) - offset} bytes after the JSON header belong to no input "
                f"(the binary_data_size of the inputs add up to {offset})")
        outputs = body.get("outputs", [])
        if not isinstance(outputs, list) or len(outputs) > MAX_TENSORS:
            raise InvalidInputError(f"'outputs' must be a list of at most {MAX_TENSORS} tensors")
        wanted: dict[str, bool] = {}
        for output in outputs:
            output = _object(output, "each output")
            oname = _text(output.get("name"), "an output's name")
            oparams = _object(output.get("parameters"), f"output {oname!r}: 'parameters'")
            flag = oparams.get("binary_data", binary_default)
            if not isinstance(flag, bool):
                raise InvalidInputError(f"output {oname!r}: binary_data must be true or false")
            wanted[oname] = flag
            requested = call.outputs.add(name=oname)
            if "classification" in oparams:  # refused with the gRPC side's own words
                requested.parameters["classification"].int64_param = 1
        return call, wanted, binary_default

    def _answer(self, response: pb.ModelInferResponse, wanted: dict[str, bool],
                binary_default: bool) -> web.Response:
        head: dict[str, Any] = {"model_name": response.model_name,
                                "model_version": response.model_version}
        if response.id:
            head["id"] = response.id
        if response.parameters:
            head["parameters"] = {key: _parameter(value) for key, value in response.parameters.items()}
        outputs: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        for i, tensor in enumerate(response.outputs):
            shape = list(tensor.shape)
            entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                     "shape": shape}
            raw = (response.raw_output_contents[i] if i < len(response.raw_output_contents)
                   else None)
            if wanted.get(tensor.name, binary_default):
                if raw is None:
                    _, _, raw = _raw_of(tensor)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                array = (decode_raw(tensor.datatype, shape, raw, name=tensor.name) if raw is not None
                         else decode_contents(tensor.datatype, shape, tensor.contents, name=tensor.name))
                entry["data"] = _json_data(tensor.name, array)
            outputs.append(entry)
        head["outputs"] = outputs
        text = json.dumps(head).encode()
        if not chunks:
            return web.Response(body=text, content_type="application/json")
        return web.Response(body=b"".join([text, *chunks]), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(text))})


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def _raw_of(tensor: pb.ModelInferResponse.InferOutputTensor) -> tuple[str, list[int], bytes]:
    return encode_raw(decode_contents(tensor.datatype, list(tensor.shape), tensor.contents,
                                      name=tensor.name))


def _json_data(name: str, array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype.kind != "O":
        return list(flat.tolist())
    try:
        return [bytes(item).decode() for item in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"output {name!r} holds bytes that are not UTF-8 text: ask for it with "
            "binary_data") from exc
