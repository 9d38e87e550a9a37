"""AsyncClient: the SDK's core, on grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from swarm._errors import InvalidInputError, SwarmError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.client._convert import build_request, decode_response, error_from_rpc, to_numpy
from swarm.client._types import ModelInfo, TensorInfo

__all__ = ["AsyncClient"]

DEFAULT_EMBED_MODEL = "builtin/minilm"
MAX_MESSAGE_BYTES = 64 << 20

Inputs = Any  # one array-like, or a mapping of input name -> array-like


class AsyncClient:
    """Talks to one node directly (`AsyncClient("127.0.0.1:7070")`).

    `infer(model, x)` takes one array (single-input models) or a dict of named
    arrays, and returns one array (single-output models) or a dict.
    """

    def __init__(self, address: str, *, timeout: float | None = 30.0) -> None:
        if not address:
            raise SwarmError("AsyncClient needs a node address HOST:PORT")
        self.address = address
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._info: dict[str, ModelInfo] = {}
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._channel.close()

    async def _rpc(self, method: Any, request: Any, target: str, timeout: float | None) -> Any:
        if self._closed:
            raise SwarmError("client is closed")
        try:
            return await method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address} {target}") from exc

    async def metadata(self, model: str, *, version: str = "") -> ModelInfo:
        """Inputs, outputs, versions and max batch size of a model."""
        key = f"{model}\0{version}"
        info = self._info.get(key)
        if info is not None:
            return info
        meta, config = await asyncio.gather(
            self._rpc(self._stub.ModelMetadata,
                      pb.ModelMetadataRequest(name=model, version=version), model, None),
            self._rpc(self._stub.ModelConfig,
                      pb.ModelConfigRequest(name=model, version=version), model, None),
        )
        info = ModelInfo(
            name=meta.name,
            versions=tuple(meta.versions),
            platform=meta.platform,
            inputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs),
            outputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs),
            max_batch_size=config.config.max_batch_size,
        )
        self._info[key] = info
        return info

    async def models(self) -> list[ModelInfo]:
        index = await self._rpc(self._stub.RepositoryIndex,
                                pb.RepositoryIndexRequest(ready=True), "models", None)
        names = sorted({m.name for m in index.models})
        return list(await asyncio.gather(*(self.metadata(n) for n in names)))

    async def _named(self, model: str, version: str, inputs: Inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return {str(k): to_numpy(v) for k, v in inputs.items()}
        info = await self.metadata(model, version=version)
        if len(info.inputs) != 1:
            names = ", ".join(t.name for t in info.inputs)
            raise InvalidInputError(f"{model} takes several inputs ({names}): pass a dict")
        return {info.inputs[0].name: to_numpy(inputs)}

    async def infer_raw(self, model: str, inputs: Inputs, *, version: str = "",
                        outputs: Sequence[str] = (), timeout: float | None = None,
                        ) -> dict[str, np.ndarray]:
        """Like infer, but always returns the dict of outputs."""
        named = await self._named(model, version, inputs)
        request = build_request(model, named, version=version, outputs=outputs)
        response = await self._rpc(self._stub.ModelInfer, request, model, timeout)
        return decode_response(response)

    async def infer(self, model: str, inputs: Inputs, *, version: str = "",
                    outputs: Sequence[str] = (), timeout: float | None = None,
                    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run `model` on `inputs`: an array for single-output models, else a dict."""
        result = await self.infer_raw(model, inputs, version=version, outputs=outputs,
                                      timeout=timeout)
        if len(result) == 1:
            return next(iter(result.values()))
        return result

    async def embed(self, texts: Sequence[str], *, model: str = DEFAULT_EMBED_MODEL,
                    timeout: float | None = None) -> np.ndarray:
        """Sentence embeddings, one row per text (split into batches the model accepts)."""
        if isinstance(texts, str | bytes):
            raise InvalidInputError("embed takes a list of texts")
        if not texts:
            raise InvalidInputError("embed needs at least one text")
        info = await self.metadata(model)
        step = max(1, info.max_batch_size or len(texts))
        encoded = [t.encode() if isinstance(t, str) else bytes(t) for t in texts]
        chunks = [np.array(encoded[i : i + step], dtype=object)
                  for i in range(0, len(encoded), step)]
        parts = await asyncio.gather(*(self.infer(model, c, timeout=timeout) for c in chunks))
        arrays = [p if isinstance(p, np.ndarray) else next(iter(p.values())) for p in parts]
        return np.concatenate(arrays)
