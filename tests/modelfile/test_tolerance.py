"""Tolerances: the manifest table, the comparison, and built-ins that hold across CPU runs."""

from __future__ import annotations

import numpy as np
import pytest

from swarm._errors import InvalidInputError
from swarm._tensors import Tolerance, default_tolerance, encode_raw, tensors_agree
from swarm.modelfile import BUILTIN_TOLERANCES, parse_tolerance


def t(array: np.ndarray, name: str = "y") -> list[tuple[str, str, list[int], bytes]]:
    datatype, shape, raw = encode_raw(array)
    return [(name, datatype, shape, raw)]


def test_parse_tolerance() -> None:
    assert parse_tolerance({"rtol": 1e-3, "atol": 1e-6}) == Tolerance(1e-3, 1e-6)
    assert parse_tolerance({"atol": 0}) == Tolerance(0.0, 0.0)
    for bad in ({"rtol": -1}, {"rtol": float("nan")}, {"rtol": "1e-3"}, {"rtol": True},
                {"rtl": 1e-3}, [1e-3], {"atol": float("inf")}):
        with pytest.raises(InvalidInputError):
            parse_tolerance(bad)


def test_defaults_per_datatype() -> None:
    assert default_tolerance(["FP32"]) == Tolerance(1e-4, 1e-5)
    assert default_tolerance(["FP32", "FP16"]) == Tolerance(1e-2, 1e-3)
    assert default_tolerance(["INT64", "BYTES"]) == Tolerance()


def test_tensors_agree() -> None:
    tol = Tolerance(1e-4, 1e-5)
    x = np.array([[1.0, -2.0, 0.0]], np.float32)
    assert tensors_agree(t(x), t(x + np.float32(5e-6)), tol)
    assert not tensors_agree(t(x), t(x + np.float32(1e-3)), tol)
    assert not tensors_agree(t(x), t(x[:, :2]), tol)  # shape
    assert not tensors_agree(t(x), t(x.astype(np.float64)), tol)  # datatype
    assert not tensors_agree(t(x), t(x, "z"), tol)  # name
    assert not tensors_agree(t(x), t(x) + t(x, "z"), tol)  # extra output
    assert not tensors_agree(t(x) + t(x), t(x) + t(x), tol)  # a name twice
    nan = np.array([np.nan, 1.0], np.float32)
    assert tensors_agree(t(nan), t(nan.copy()), tol)
    assert not tensors_agree(t(nan), t(np.array([0.0, 1.0], np.float32)), tol)
    inf = np.array([np.inf], np.float32)
    assert tensors_agree(t(inf), t(inf.copy()), tol)
    assert not tensors_agree(t(inf), t(-inf), tol)
    assert not tensors_agree(t(inf), t(np.array([1.0], np.float32)), tol)  # inf is not "near"
    big = np.array([3e38], np.float32)
    assert not tensors_agree(t(big), t(-big), tol)  # the difference overflows to inf
    assert not tensors_agree(t(np.array([1, 2])), t(np.array([1, 3])), Tolerance(1.0, 1.0))
    assert not tensors_agree(t(x), [("y", "FP32", [1, 3], b"\0")], tol)  # short contents


def test_builtin_tolerance_holds_between_batch_sizes() -> None:
    torch = pytest.importorskip("torch")
    from swarm.node._builtins import MLP

    model = MLP(torch.device("cpu"))
    x = model.example_inputs(16)
    full = model.execute(x)["output"]
    single = np.concatenate([model.execute({k: v[i:i + 1] for k, v in x.items()})["output"]
                             for i in range(16)])
    assert tensors_agree(t(full), t(single), BUILTIN_TOLERANCES["builtin/mlp"])
    assert not tensors_agree(t(full), t(single + np.float32(1e-2)),
                             BUILTIN_TOLERANCES["builtin/mlp"])
