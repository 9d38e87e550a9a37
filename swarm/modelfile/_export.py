"""Load `torch.export` programs (.pt2) without running code from the archive.

`torch.export.load` unpickles some archive members with `weights_only=False`
(pickled weights and constants) or falls back to it when a safe load fails
(sample inputs); see shared/notes/torch-export.md. So before torch sees the
archive, every member is classified: known JSON/version files, raw tensor
payloads named by the weight/constant configs, and pickles, each of which must
load with `weights_only=True`. Any other member (AOTInductor shared objects,
extra files, ...) is refused. The checked bytes, not the file, are what torch
loads, so the archive cannot change between the check and the load.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import torch

from swarm._errors import ModelLoadError, UnsafeModelError
from swarm._types import ModelSpec, TensorSpec

__all__ = ["check_archive", "load_program", "oip_datatype", "program_spec"]

MAX_ARCHIVE_BYTES = 8 << 30
# torch.export.save stores weights uncompressed; far more than this unpacked is a zip bomb.
MAX_UNPACKED_BYTES = 16 << 30

_PLAIN = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/(weights|constants)/[\w.-]+_config\.json)$"
)
_SAMPLE_INPUTS = re.compile(r"^data/sample_inputs/[\w.-]+\.pt$")
_LEGACY_PICKLE = re.compile(r"^data/(weights|constants)/[\w.-]+\.pt$")

_TORCH_TO_OIP: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


def oip_datatype(dtype: torch.dtype) -> str:
    try:
        return _TORCH_TO_OIP[dtype]
    except KeyError:
        raise ModelLoadError(f"torch dtype {dtype} has no supported wire datatype") from None


def _safe_unpickle(name: str, data: bytes) -> None:
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise UnsafeModelError(
            f"archive member {name!r} does not load with weights_only=True ({type(exc).__name__}); "
            "refusing a model that would run code when loaded"
        ) from exc


def _payload_members(zf: zipfile.ZipFile, prefix: str, names: set[str]) -> dict[str, bool]:
    """Member -> use_pickle, for every payload the weight/constant configs name."""
    out: dict[str, bool] = {}
    for kind in ("weights", "constants"):
        for name in names:
            rel = name[len(prefix):]
            if not (rel.startswith(f"data/{kind}/") and rel.endswith("_config.json")):
                continue
            try:
                config = json.loads(zf.read(name))["config"]
                entries = list(config.values())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UnsafeModelError(f"malformed payload config {rel!r}") from exc
            for entry in entries:
                path = entry.get("path_name") if isinstance(entry, dict) else None
                if not isinstance(path, str) or not re.fullmatch(r"[\w.-]+", path):
                    raise UnsafeModelError(f"bad payload path in {rel!r}: {path!r}")
                # torch unpickles custom_obj_*/opaque_obj_* constants with full pickle
                # whatever use_pickle says: only tensor constants are allowed.
                if kind == "constants" and not path.startswith("tensor_"):
                    raise UnsafeModelError(
                        f"constant {path!r} in {rel!r} is a pickled object; refusing a model "
                        "that would run code when loaded")
                # Several entries may name one payload: it is a pickle if any of them says so.
                member = f"{prefix}data/{kind}/{path}"
                out[member] = out.get(member, False) or bool(entry.get("use_pickle", False))
    return out


def check_archive(data: bytes) -> None:
    """Raise UnsafeModelError unless every member of the .pt2 archive is accounted for."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ModelLoadError("not a torch.export archive (.pt2 is a zip file)") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        unpacked = sum(i.file_size for i in infos)
        if unpacked > MAX_UNPACKED_BYTES:
            raise UnsafeModelError(
                f"archive unpacks to {unpacked} bytes (limit {MAX_UNPACKED_BYTES}): refusing a "
                "possible zip bomb")
        names = {i.filename for i in infos}
        # zipfile cuts names at a NUL and keeps the last of duplicate names; torch's reader
        # does neither, so either would let torch load a member other than the one checked.
        if len(names) != len(infos) or any(i.orig_filename != i.filename for i in infos):
            raise UnsafeModelError("archive has duplicate or NUL-truncated member names")
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1 or any("/" not in n or ".." in n.split("/") for n in names):
            raise UnsafeModelError("a .pt2 archive must hold exactly one top-level folder")
        prefix = tops.pop() + "/"
        payloads = _payload_members(zf, prefix, names)
        for name in sorted(names):
            rel = name[len(prefix):]
            if name in payloads:  # first: a payload torch unpickles may wear any name
                if payloads[name]:
                    _safe_unpickle(rel, zf.read(name))
                continue
            if _PLAIN.match(rel):
                continue
            if _SAMPLE_INPUTS.match(rel) or _LEGACY_PICKLE.match(rel):
                _safe_unpickle(rel, zf.read(name))
                continue
            raise UnsafeModelError(f"unexpected archive member {rel!r}")


def load_program(data: bytes) -> torch.export.ExportedProgram:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(f"archive of {len(data)} bytes exceeds {MAX_ARCHIVE_BYTES}")
    check_archive(data)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelLoadError(f"torch.export.load failed: {type(exc).__name__}: {exc}") from exc


def _dims(val: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in val.shape)


def program_spec(program: torch.export.ExportedProgram, cap: int) -> ModelSpec:
    """Inputs, outputs and batch bound of a program; `cap` bounds an unbounded batch dim."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = program.graph_signature.user_inputs
    inputs: list[TensorSpec] = []
    batch_max = cap
    for name in user_inputs:
        if not isinstance(name, str):
            raise ModelLoadError("only tensor inputs are supported")
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            raise ModelLoadError(f"input {name!r} is not a tensor with a batch dimension")
        shape = _dims(val)
        if shape[0] != -1:
            raise ModelLoadError(
                f"input {name!r} has a static batch dimension; export it with "
                "dynamic_shapes={...: {0: torch.export.Dim('batch')}}"
            )
        sym = val.shape[0].node.expr  # type: ignore[attr-defined]
        bound = program.range_constraints.get(sym)
        # An unbounded Dim's upper is torch's int_oo, which claims is_finite but is no Integer.
        if bound is not None and bound.upper.is_Integer:
            batch_max = min(batch_max, int(bound.upper))
        inputs.append(TensorSpec(name, oip_datatype(val.dtype), shape))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    vals = [a.meta.get("val") for a in output_node.args[0]][-len(program.graph_signature.user_outputs):]
    outputs = []
    for i, val in enumerate(vals):
        if not isinstance(val, torch.Tensor):
            raise ModelLoadError("only tensor outputs are supported")
        name = "output" if len(vals) == 1 else f"output_{i}"
        outputs.append(TensorSpec(name, oip_datatype(val.dtype), _dims(val)))
    return ModelSpec(tuple(inputs), tuple(outputs), max(1, batch_max), "torch_export")
