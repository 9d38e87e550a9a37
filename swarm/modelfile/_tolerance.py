"""Output tolerance of a model: how far two honest computations may differ.

A manifest may declare `tolerance = {rtol = ..., atol = ...}` (`parse_tolerance` reads that
table); without one, the defaults per output datatype apply (swarm._tensors
DEFAULT_TOLERANCES: FP16 rtol 1e-2 atol 1e-3, FP32 rtol 1e-4 atol 1e-5, FP64 rtol 1e-9
atol 1e-12, everything else exact). Client verification compares answers with it, and
wrong-result evidence carries it (bounded by the genesis, swarm.staking.SlashingTable).

Built-ins: measured on this CPU (torch 2.13.0, batch 1 against batch 64, 1 and 2 threads),
builtin/mlp differs by at most 1.6e-7 absolute and builtin/minilm by 1.0e-7 (threads: 0);
their tolerances keep two orders of magnitude of room for other CPUs' kernels, and minilm's
is the README's promise against sentence-transformers (1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping

from swarm._errors import InvalidInputError
from swarm._tensors import Tolerance

__all__ = ["BUILTIN_TOLERANCES", "parse_tolerance"]

BUILTIN_TOLERANCES: Mapping[str, Tolerance] = {
    "builtin/mlp": Tolerance(rtol=1e-3, atol=1e-5),
    "builtin/minilm": Tolerance(rtol=1e-3, atol=1e-4),
}


def parse_tolerance(raw: object) -> Tolerance:
    """A tolerance from a TOML table `{rtol = ..., atol = ...}` (either may be left out: 0).
    Raises InvalidInputError for anything else."""
    if not isinstance(raw, Mapping):
        raise InvalidInputError("tolerance must be a table: {rtol = ..., atol = ...}")
    unknown = sorted(set(raw) - {"rtol", "atol"})
    if unknown:
        raise InvalidInputError(f"unknown tolerance key(s): {', '.join(map(str, unknown))}")
    return Tolerance(rtol=raw.get("rtol", 0.0), atol=raw.get("atol", 0.0))
