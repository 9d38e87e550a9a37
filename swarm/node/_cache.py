"""Response cache: a bounded LRU keyed by model digest and request input bytes."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from swarm._tensors import encode_raw
from swarm._types import Digest

__all__ = ["ResponseCache", "cache_key"]


def cache_key(digest: Digest, inputs: Mapping[str, np.ndarray]) -> bytes:
    """16-byte key over the digest and each input's name, datatype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(digest.hex.encode())
    for name in sorted(inputs):
        datatype, shape, raw = encode_raw(inputs[name])
        h.update(f"\0{name}\0{datatype}\0{shape}\0{len(raw)}\0".encode())
        h.update(raw)
    return h.digest()


class ResponseCache:
    """Least-recently-used outputs, bounded by entries and by bytes held."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 64 << 20) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        copied = {k: np.array(v, copy=True) for k, v in outputs.items()}
        size = sum(v.nbytes for v in copied.values()) + len(key)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (copied, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
