"""Tensors on the wire: Open Inference Protocol datatypes <-> numpy arrays.

Shared by the node (decoding requests) and the client (encoding them). Every
check raises InvalidInputError with the tensor's name, so that a bad request
gets a precise INVALID_ARGUMENT instead of a crash.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarm._errors import InvalidInputError

__all__ = [
    "DATATYPES",
    "DEFAULT_TOLERANCES",
    "Tolerance",
    "datatype_of",
    "decode_bytes_elements",
    "decode_contents",
    "decode_raw",
    "default_tolerance",
    "encode_bytes_elements",
    "encode_raw",
    "numpy_dtype",
    "tensors_agree",
    "tensors_digest",
]

# OIP datatype -> little-endian numpy dtype. BYTES uses object arrays of bytes.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# Typed-contents field that carries each datatype (InferTensorContents).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")


def numpy_dtype(datatype: str, *, name: str = "tensor") -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInputError(
            f"{name}: unsupported datatype {datatype!r} (supported: {', '.join(DATATYPES)})"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object/str/bytes arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    for datatype, dtype in DATATYPES.items():
        if datatype != "BYTES" and dtype == array.dtype.newbyteorder("<"):
            return datatype
    raise InvalidInputError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


def _element_count(shape: Sequence[int], name: str, max_elements: int) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInputError(f"{name}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > max_elements:
            raise InvalidInputError(f"{name}: shape {list(shape)} exceeds {max_elements} elements")
    return count


def decode_bytes_elements(raw: bytes | memoryview, count: int, *, name: str = "tensor") -> list[bytes]:
    """Parse `count` 4-byte-length-prefixed elements that must fill `raw` exactly."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(view):
            raise InvalidInputError(f"{name}: BYTES contents end before element {len(out)}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInputError(f"{name}: BYTES element {len(out)} runs past the end")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidInputError(
            f"{name}: BYTES contents hold more than the {count} elements its shape says"
        )
    return out


def encode_bytes_elements(items: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        parts.append(_LEN.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def decode_raw(
    datatype: str, shape: Sequence[int], raw: bytes, *, name: str = "tensor",
    max_elements: int = 1 << 28,
) -> np.ndarray:
    """Decode raw_input_contents into a (read-only, zero-copy where possible) array."""
    dtype = numpy_dtype(datatype, name=name)
    count = _element_count(shape, name, max_elements)
    if datatype == "BYTES":
        # Parse before allocating: the shape alone must not size an allocation (a 4-byte
        # message claiming 2**28 elements would otherwise cost gigabytes).
        items = decode_bytes_elements(raw, count, name=name)
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(tuple(shape))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"{name}: {len(raw)} bytes of raw contents, but {datatype} {list(shape)} needs "
            f"{expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def decode_contents(
    datatype: str, shape: Sequence[int], contents: Any, *, name: str = "tensor",
    max_elements: int = 1 << 28,
) -> np.ndarray:
    """Decode typed InferTensorContents (the non-raw representation)."""
    dtype = numpy_dtype(datatype, name=name)
    count = _element_count(shape, name, max_elements)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(f"{name}: {datatype} cannot travel as typed contents; use raw")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"{name}: {len(values)} values in {field}, but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(tuple(shape))
    try:
        return np.asarray(values, dtype=dtype).reshape(tuple(shape))
    except OverflowError as exc:
        raise InvalidInputError(f"{name}: a value does not fit {datatype}") from exc


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, np.bytes_ | bytearray | memoryview):
        return bytes(item)
    raise InvalidInputError(f"BYTES element of type {type(item).__name__} is not bytes or str")


def encode_raw(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of an array, little-endian, row-major."""
    datatype = datatype_of(array)
    shape = list(array.shape)
    if datatype == "BYTES":
        return datatype, shape, encode_bytes_elements([_as_bytes(x) for x in array.reshape(-1)])
    dtype = DATATYPES[datatype]
    return datatype, shape, np.ascontiguousarray(array, dtype=dtype).tobytes()


def tensors_digest(tensors: Sequence[tuple[str, str, Sequence[int], bytes | memoryview]]) -> bytes:
    """The canonical SHA-256 digest of named tensors (what signed responses sign).

    Tensors are (name, datatype, shape, raw bytes), the raw bytes in OIP raw form
    (little-endian, row-major; BYTES: each element as a u32 LE length and its bytes,
    as `encode_raw` writes them). They are taken in order of name (UTF-8 bytes) and
    each contributes:

        u32 LE len(name) | name (UTF-8) | u32 LE len(datatype) | datatype (ASCII)
        | u32 LE ndim | each dim as i64 LE | u64 LE len(raw) | raw

    so that no two different tensor lists frame to the same bytes.
    """
    h = hashlib.sha256()
    for name, datatype, shape, raw in sorted(tensors, key=lambda t: t[0].encode()):
        encoded_name, encoded_type = name.encode(), datatype.encode()
        h.update(_LEN.pack(len(encoded_name)) + encoded_name)
        h.update(_LEN.pack(len(encoded_type)) + encoded_type)
        h.update(_LEN.pack(len(shape)) + struct.pack(f"<{len(shape)}q", *shape))
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far two computations of one output may differ and still agree: element-wise
    |a - b| <= atol + rtol * max(|a|, |b|) (symmetric, in float64). Only floating-point
    tensors use it; integer, BOOL and BYTES outputs must be equal."""

    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or not 0.0 <= value <= 1e6:
                raise InvalidInputError(f"tolerance {name} must be a finite number in "
                                        f"[0, 1e6], got {value!r}")
            object.__setattr__(self, name, float(value))

    def widest(self, other: Tolerance) -> Tolerance:
        return Tolerance(max(self.rtol, other.rtol), max(self.atol, other.atol))


# What holds between two honest CPU runs of one model (different batch sizes and thread
# counts reorder float sums): a few ULPs of accumulated error, with room.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "FP16": Tolerance(rtol=1e-2, atol=1e-3),
    "FP32": Tolerance(rtol=1e-4, atol=1e-5),
    "FP64": Tolerance(rtol=1e-9, atol=1e-12),
}


def default_tolerance(datatypes: Sequence[str]) -> Tolerance:
    """The widest default tolerance of the given output datatypes (exact for non-floats)."""
    tol = Tolerance()
    for datatype in datatypes:
        tol = tol.widest(DEFAULT_TOLERANCES.get(datatype, Tolerance()))
    return tol


def tensors_agree(a: Sequence[tuple[str, str, Sequence[int], bytes]],
                  b: Sequence[tuple[str, str, Sequence[int], bytes]],
                  tolerance: Tolerance) -> bool:
    """True when two sets of named raw tensors (as `tensors_digest` takes them) are the same
    names, datatypes and shapes, with equal non-float contents and float contents within
    `tolerance` (NaN agrees only with NaN, an infinity only with the same infinity).
    Contents that do not decode disagree with anything different from them."""
    first = {name: (datatype, tuple(shape), bytes(raw)) for name, datatype, shape, raw in a}
    second = {name: (datatype, tuple(shape), bytes(raw)) for name, datatype, shape, raw in b}
    if len(first) != len(a) or len(second) != len(b) or first.keys() != second.keys():
        return False
    for name, (datatype, shape, raw) in first.items():
        other_type, other_shape, other_raw = second[name]
        if datatype != other_type or shape != other_shape:
            return False
        if raw == other_raw:
            continue
        if datatype not in DEFAULT_TOLERANCES:
            return False
        try:
            x = decode_raw(datatype, shape, raw, name=name).astype(np.float64)
            y = decode_raw(datatype, shape, other_raw, name=name).astype(np.float64)
        except InvalidInputError:
            return False
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(x) & np.isfinite(y)
            near = np.abs(x - y) <= tolerance.atol + tolerance.rtol * np.maximum(np.abs(x),
                                                                              np.abs(y))
            # A non-finite value agrees only with itself (inf - x is never "within").
            close = (finite & near) | (x == y) | (np.isnan(x) & np.isnan(y))
        if not bool(np.all(close)):
            return False
    return True
