"""The int4 weight path of the lean forward: the GGUF's own Q4_1 blocks, packed for torch.

Cheap checks on single tensors of the real file (no whole model is built here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from swarm._errors import ModelLoadError
from swarm.node._generate._llama import INT4_MAX_ROWS, Int4Linear, q4_1_codes, read_gguf, smollm2_path


@pytest.fixture(scope="module")
def down() -> tuple[np.ndarray, np.ndarray]:
    """blk.0.ffn_down: its raw Q4_1 rows and gguf's own FP32 dequantization."""
    tensors = read_gguf(smollm2_path()).tensors
    kind, raw = tensors.raw("blk.0.ffn_down.weight")  # type: ignore[attr-defined]
    assert kind == "Q4_1"
    return raw, tensors["blk.0.ffn_down.weight"]


def test_q4_1_codes_reproduce_the_gguf_dequantization(down: tuple[np.ndarray, np.ndarray]) -> None:
    raw, reference = down
    codes, d, m = q4_1_codes(raw, reference.shape[1])
    assert codes.shape == reference.shape
    assert codes.max() <= 15
    values = codes.reshape(codes.shape[0], -1, 32) * d[..., None] + m[..., None]
    np.testing.assert_allclose(values.reshape(reference.shape), reference, rtol=0, atol=1e-6)


def test_int4_linear_matches_fp32_on_both_paths(down: tuple[np.ndarray, np.ndarray]) -> None:
    raw, reference = down
    linear = Int4Linear(*q4_1_codes(raw, reference.shape[1]))
    weight = torch.from_numpy(reference)
    gen = torch.Generator().manual_seed(0)
    for rows in (1, INT4_MAX_ROWS, INT4_MAX_ROWS + 1, 40):  # int4 kernel, then the bf16 copy
        x = torch.randn(rows, reference.shape[1], generator=gen)
        want = F.linear(x, weight)
        got = linear(x)
        assert got.dtype == torch.float32
        assert got.shape == want.shape
        error = (got - want).norm() / want.norm()
        assert error < 0.02, (rows, float(error))  # bf16 activations: ~0.3% here


def test_a_q4_1_tensor_of_the_wrong_size_is_refused(down: tuple[np.ndarray, np.ndarray]) -> None:
    raw, reference = down
    with pytest.raises(ModelLoadError, match="Q4_1"):
        q4_1_codes(raw[:, :-1], reference.shape[1])  # a truncated row
    with pytest.raises(ModelLoadError, match="Q4_1"):
        q4_1_codes(raw, reference.shape[1] + 1)  # columns not in whole blocks
