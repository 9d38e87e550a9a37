"""The tokenizer and chat template of a GGUF file, built with `tokenizers` and jinja2.

GGUF's `gpt2` tokenizer model is byte-level BPE: the vocabulary and merges come from
`tokenizer.ggml.tokens` / `merges`, control tokens (`token_type` 3) are added as
special tokens. This is what transformers' GGUF converter builds for this file (the
same ids on the texts tests/node/generate checks), without importing transformers
(seconds) in the node. The chat template renders in a sandboxed jinja2 environment,
as transformers does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from swarm._errors import ModelLoadError

__all__ = ["ChatTokenizer"]

_CONTROL = 3  # llama.cpp's token type for control tokens


class ChatTokenizer:
    def __init__(self, metadata: Mapping[str, Any]) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        try:
            if metadata["tokenizer.ggml.model"] != "gpt2":
                raise ModelLoadError("only byte-level BPE (gpt2) GGUF tokenizers are supported")
            tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
            types: list[int] = list(metadata["tokenizer.ggml.token_type"])
            merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
            self.eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
            self.bos_id = int(metadata["tokenizer.ggml.bos_token_id"])
            template = str(metadata["tokenizer.chat_template"])
        except KeyError as exc:
            raise ModelLoadError(f"GGUF file lacks tokenizer field {exc}") from exc
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL])
        self._tok = tok
        self.vocab_size = len(tokens)
        self.special_ids = frozenset(i for i, kind in enumerate(types) if kind == _CONTROL)
        # Longest first: where two start at the same place, the longer one is meant.
        self._specials = sorted((tokens[i] for i in self.special_ids), key=len, reverse=True)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template)

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids; special-token strings in `text` stay text unless `special`."""
        if special or not self._has_special(text):
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        return self._encode_literal(text)

    def _has_special(self, text: str) -> bool:
        return any(s in text for s in self._specials)

    def _encode_literal(self, text: str) -> list[int]:
        # tokenizers always matches added tokens; encode each special-looking piece apart.
        ids: list[int] = []
        pending = text
        while pending:
            cut = min(((pending.find(s), s) for s in self._specials if s in pending), default=None)
            if cut is None:
                ids += self._tok.encode(pending, add_special_tokens=False).ids
                break
            at, s = cut
            if at:
                ids += self._tok.encode(pending[:at], add_special_tokens=False).ids
            # "<" alone, then the rest: never the control token.
            ids += self._tok.encode(s[0], add_special_tokens=False).ids
            pending = pending[at + 1:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The template rendered with a generation prompt, then tokenized.

        The template's own markers become control tokens; the messages' text cannot
        (each content is encoded literally between them).
        """
        marker = "\x00swarm-content\x00"
        rendered = self._template.render(
            messages=[{"role": m["role"], "content": marker} for m in messages],
            add_generation_prompt=True, bos_token="", eos_token="")
        parts = rendered.split(marker)
        if len(parts) != len(messages) + 1:
            raise ModelLoadError("chat template did not render each message exactly once")
        ids = self.encode(parts[0], special=True)
        for m, part in zip(messages, parts[1:], strict=True):
            ids += self.encode(m["content"])
            ids += self.encode(part, special=True)
        return ids
