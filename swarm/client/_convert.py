"""Client-side conversions: user inputs -> ModelInferRequest, responses -> arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import decode_raw, encode_raw

__all__ = ["build_request", "decode_response", "to_numpy"]

def to_numpy(value: Any) -> np.ndarray:
    """numpy array, torch tensor (without importing torch), list of numbers or strings."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    if isinstance(value, str | bytes):
        value = [value]
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.array([s.encode() for s in array.reshape(-1)], dtype=object).reshape(array.shape)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


def build_request(model: str, inputs: Mapping[str, np.ndarray], *, version: str = "",
                  outputs: Sequence[str] = (), request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype, shape, raw = encode_raw(array)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, tensor in enumerate(response.outputs):
        if i < len(raw):
            array = decode_raw(tensor.datatype, tuple(tensor.shape), raw[i], name=tensor.name)
        else:
            from swarm._tensors import decode_contents

            array = decode_contents(tensor.datatype, tuple(tensor.shape), tensor.contents,
                                    name=tensor.name)
        # Decoded arrays are read-only views of the message; callers own their results.
        out[tensor.name] = array if array.flags.writeable else array.copy()
    return out
