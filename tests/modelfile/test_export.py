"""Loading torch.export programs (.pt2): specs from the program, serving, and refusing unsafe archives.

See shared/notes/torch-export.md: torch.export.load unpickles some members with
weights_only=False, so a .pt2 from someone else can run code. These tests build
such archives and check that loading refuses them before any payload runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import swarm
from swarm._errors import InvalidInputError, ModelLoadError, UnsafeModelError
from swarm._types import Digest
from swarm.modelfile import check_archive
from swarm.node._export import ExportedModel, load_file
from swarm.node._models import load_model
from tests.conftest import NodeFactory

ROOT = "archive/"
SAMPLE = ROOT + "data/sample_inputs/model.pt"
WEIGHTS_CONFIG = ROOT + "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = ROOT + "data/constants/model_constants_config.json"


class Tiny(torch.nn.Module):
    """One input, one output; a buffer (weights dir) and a lifted tensor constant (constants dir)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))
        self.offset = torch.tensor([0.5, -0.5, 0.25])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x)) * self.scale + self.offset


class TwoByTwo(torch.nn.Module):
    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, ids.sum(dim=1)


def export(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
           dynamic_shapes: dict[str, Any] | None) -> bytes:
    program = torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_pt2() -> bytes:
    batch = torch.export.Dim("batch", min=1, max=16)
    return export(Tiny(), (torch.randn(2, 4),), {"x": {0: batch}})


@pytest.fixture(scope="module")
def two_pt2() -> bytes:
    batch = torch.export.Dim("batch")  # no upper bound: the node's cap applies
    return export(TwoByTwo(), (torch.randn(3, 5), torch.ones(3, 2, dtype=torch.int64)),
                  {"x": {0: batch}, "ids": {0: batch}})


def rebuild(data: bytes, replace: dict[str, bytes] | None = None,
            add: dict[str, bytes] | None = None) -> bytes:
    """The archive with members replaced or added (names as in the zip)."""
    replace = replace or {}
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, when a test wants them
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))
        for name, body in (add or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


class Payload:
    """Unpickling this creates a directory: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def malicious_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    data = buffer.getvalue()
    # Control: the payload is live, it runs under an unguarded load.
    control = marker.with_name(marker.name + "-control")
    control_data = io.BytesIO()
    torch.save(Payload(control), control_data)
    torch.load(io.BytesIO(control_data.getvalue()), weights_only=False)
    assert control.is_dir()
    return data


def weights_config(data: bytes) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(WEIGHTS_CONFIG))
    return config


# --------------------------------------------------------------------------- good programs


def test_dynamic_batch_program_reports_its_spec(tiny_pt2: bytes) -> None:
    model = ExportedModel("local/tiny", tiny_pt2, torch.device("cpu"))
    spec = model.spec
    assert [(s.name, s.datatype, s.shape) for s in spec.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in spec.outputs] == [("output", "FP32", (-1, 3))]
    assert spec.max_batch_size == 16  # from Dim("batch", max=16), below the cap of 64
    assert spec.platform == "torch_export"
    assert model.digest == Digest.of(tiny_pt2)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    expected = Tiny().eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.execute({"x": x})["output"], expected, rtol=1e-6, atol=1e-6)


def test_multi_input_program_spec_and_cap(two_pt2: bytes) -> None:
    model = ExportedModel("local/two", two_pt2, torch.device("cpu"), max_batch_size=32)
    assert [(s.name, s.datatype, s.shape) for s in model.spec.inputs] == [
        ("x", "FP32", (-1, 5)), ("ids", "INT64", (-1, 2))]
    assert [(s.name, s.datatype, s.shape) for s in model.spec.outputs] == [
        ("output_0", "FP32", (-1, 5)), ("output_1", "INT64", (-1,))]
    assert model.spec.max_batch_size == 32  # unbounded Dim: the node's cap


async def test_program_serves_through_a_node(tmp_path: Path, tiny_pt2: bytes, two_pt2: bytes,
                                             start_node: NodeFactory) -> None:
    (tmp_path / "Tiny Model.pt2").write_bytes(tiny_pt2)
    (tmp_path / "two.pt2").write_bytes(two_pt2)
    serve = (str(tmp_path / "Tiny Model.pt2"), str(tmp_path / "two.pt2"))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = Tiny().eval()(torch.from_numpy(x)).detach().numpy()
    async with start_node([], serve=serve) as node:
        assert sorted(s.name for s in node.table) == ["local/tiny-model", "local/two"]
        async with swarm.AsyncClient(node.grpc_address) as client:
            info = await client.metadata("local/tiny-model")
            assert info.max_batch_size == 16
            assert info.platform == "torch_export"
            assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("x", "FP32", (-1, 4))]
            out = await client.infer("local/tiny-model", x)
            assert isinstance(out, np.ndarray)
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
            with pytest.raises(InvalidInputError):
                await client.infer("local/tiny-model", np.zeros((17, 4), np.float32))
            both = await client.infer("local/two", {
                "x": np.ones((2, 5), np.float32), "ids": np.array([[1, 2], [3, 4]], np.int64)})
            assert isinstance(both, dict)
            np.testing.assert_array_equal(both["output_0"], np.full((2, 5), 2, np.float32))
            np.testing.assert_array_equal(both["output_1"], [3, 7])

        def sync_infer() -> Any:
            with swarm.Client(node.grpc_address) as client:
                return client.infer("local/tiny-model", torch.from_numpy(x))

        np.testing.assert_allclose(await asyncio.to_thread(sync_infer), expected,
                                   rtol=1e-6, atol=1e-6)


def test_load_model_names_a_file_by_its_stem(tmp_path: Path, tiny_pt2: bytes) -> None:
    path = tmp_path / "My_Net.v2.pt2"
    path.write_bytes(tiny_pt2)
    model = load_model(str(path), torch.device("cpu"))
    assert model.name == "local/my_net.v2"
    swarm.ModelRef.parse(model.name)  # a valid model name everywhere


# --------------------------------------------------------------------------- refused programs


def test_static_batch_dimension_is_refused() -> None:
    data = export(Tiny(), (torch.randn(2, 4),), None)
    with pytest.raises(ModelLoadError, match="dynamic") as info:
        ExportedModel("local/static", data, torch.device("cpu"))
    assert not isinstance(info.value, UnsafeModelError)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        ExportedModel("local/junk", b"this is not a zip file", torch.device("cpu"))
    assert not isinstance(info.value, UnsafeModelError)
    with pytest.raises(ModelLoadError):
        load_file(tmp_path / "missing.pt2", "local/missing", torch.device("cpu"))


@pytest.mark.parametrize("member", [
    ROOT + "data/aotinductor/model/model.so",
    ROOT + "extra/readme.txt",
    ROOT + "data/weights/stray_blob",
    ROOT + "code/__init__.py",
    "second_root/models/model.json",
])
def test_unexpected_member_is_refused(tiny_pt2: bytes, member: str) -> None:
    with pytest.raises(UnsafeModelError):
        check_archive(rebuild(tiny_pt2, add={member: b"\x7fELF"}))


def test_malicious_sample_inputs_do_not_run(tmp_path: Path, tiny_pt2: bytes) -> None:
    marker = tmp_path / "pwned"
    data = rebuild(tiny_pt2, replace={SAMPLE: malicious_pickle(marker)})
    with pytest.raises(UnsafeModelError, match="weights_only"):
        ExportedModel("local/evil", data, torch.device("cpu"))
    assert not marker.exists()


def test_pickled_weight_is_refused(tmp_path: Path, tiny_pt2: bytes) -> None:
    marker = tmp_path / "pwned"
    config = weights_config(tiny_pt2)
    fqn, entry = next(iter(config["config"].items()))
    config["config"][fqn] = dict(entry, use_pickle=True)
    data = rebuild(tiny_pt2, replace={
        WEIGHTS_CONFIG: json.dumps(config).encode(),
        ROOT + "data/weights/" + entry["path_name"]: malicious_pickle(marker)})
    with pytest.raises(UnsafeModelError):
        ExportedModel("local/evil", data, torch.device("cpu"))
    assert not marker.exists()


def test_payload_named_twice_is_checked_if_either_entry_pickles(tmp_path: Path,
                                                                tiny_pt2: bytes) -> None:
    """An entry with use_pickle=false must not hide another entry unpickling the same file."""
    marker = tmp_path / "pwned"
    payload = malicious_pickle(marker)
    config = weights_config(tiny_pt2)
    fqn, entry = next(iter(config["config"].items()))
    config["config"][fqn] = dict(entry, use_pickle=True)
    meta = dict(entry["tensor_meta"], dtype=1, sizes=[{"as_int": len(payload)}],
                strides=[{"as_int": 1}], requires_grad=False)
    config["config"]["zz_decoy"] = dict(entry, use_pickle=False, is_param=False, tensor_meta=meta)
    data = rebuild(tiny_pt2, replace={
        WEIGHTS_CONFIG: json.dumps(config).encode(),
        ROOT + "data/weights/" + entry["path_name"]: payload})
    with pytest.raises(UnsafeModelError):
        ExportedModel("local/evil", data, torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.parametrize("prefix", ["opaque_obj_", "custom_obj_"])
def test_pickled_object_constant_is_refused(tmp_path: Path, tiny_pt2: bytes, prefix: str) -> None:
    """torch unpickles opaque/custom object constants with full pickle, whatever use_pickle says."""
    marker = tmp_path / "pwned"
    import pickle

    payload = pickle.dumps(Payload(marker))
    meta = {"dtype": 1, "sizes": [{"as_int": len(payload)}], "requires_grad": False,
            "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
            "storage_offset": {"as_int": 0}, "layout": 7}
    config = json.loads(zipfile.ZipFile(io.BytesIO(tiny_pt2)).read(CONSTANTS_CONFIG))
    assert config["config"], "Tiny should have a tensor constant"
    config["config"]["obj"] = {"path_name": f"{prefix}0", "is_param": False,
                               "use_pickle": False, "tensor_meta": meta}
    data = rebuild(tiny_pt2, replace={CONSTANTS_CONFIG: json.dumps(config).encode()},
                   add={ROOT + f"data/constants/{prefix}0": payload})
    with pytest.raises(UnsafeModelError):
        ExportedModel("local/evil", data, torch.device("cpu"))
    assert not marker.exists()


def test_duplicate_and_nul_truncated_member_names_are_refused(tmp_path: Path,
                                                              tiny_pt2: bytes) -> None:
    """zipfile keeps the last of duplicate names and cuts names at NUL; torch's reader does not."""
    marker = tmp_path / "pwned"
    payload = malicious_pickle(marker)
    good = zipfile.ZipFile(io.BytesIO(tiny_pt2)).read(SAMPLE)
    # The payload under the real name first, a benign copy under "<name>\0x" last.
    data = rebuild(tiny_pt2, replace={SAMPLE: payload}, add={SAMPLE + "Zx": good})
    data = data.replace(b"model.ptZx", b"model.pt\0x")
    with pytest.raises(UnsafeModelError):
        ExportedModel("local/evil", data, torch.device("cpu"))
    assert not marker.exists()
    duplicate = rebuild(tiny_pt2, add={SAMPLE: good})
    with pytest.raises(UnsafeModelError):
        check_archive(duplicate)


def test_good_archive_passes_the_check(tiny_pt2: bytes, two_pt2: bytes) -> None:
    check_archive(tiny_pt2)
    check_archive(two_pt2)


def test_archive_that_unpacks_huge_is_refused_as_a_zip_bomb(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    import io
    import zipfile

    from swarm._errors import UnsafeModelError
    from swarm.modelfile import _export

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/archive_format", b"pt2")
        zf.writestr("m/data/weights/weight_0", bytes(1 << 20))  # 1 MiB of zeros, deflated tiny
    monkeypatch.setattr(_export, "MAX_UNPACKED_BYTES", 1 << 19)
    with pytest.raises(UnsafeModelError, match="zip bomb"):
        _export.check_archive(buf.getvalue())
