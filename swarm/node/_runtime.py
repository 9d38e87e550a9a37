"""Model runtime: what a loaded model is, how a batch executes, how models load.

A `Model` executes one batch synchronously (the batcher calls it from its
executor thread, off the event loop) under `torch.inference_mode()` on the
node's device. Loaders never run untrusted Python: built-ins are our own code
with safetensors weights, and `.pt2` programs go through `swarm.modelfile.load_program`.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from swarm._errors import ConfigError
from swarm._types import Digest, ModelSpec, TensorSpec

__all__ = [
    "Model",
    "ModelSpec",
    "TensorSpec",
    "ThreadChooser",
    "ThreadPolicy",
    "TorchModel",
    "intra_op_threads",
    "local_devices",
    "select_device",
    "set_thread_policy",
]

@dataclass(frozen=True, slots=True)
class ThreadPolicy:
    """How many intra-op threads a CPU forward pass gets.

    Short passes (small batches) run `narrow`, leaving a core to the event loop and
    gRPC: OpenMP workers spin between the many small ops and would starve them.
    Passes that took at least `wide_after` seconds run with whichever of `wide` and
    `narrow` has measured fewer seconds per item on such passes: on a quiet machine the
    extra core pays for itself (MiniLM batches: ~2x the items/s), on a loaded one the
    spinning team collapses (4x fewer items/s than one thread at load average 12 on 2
    cores, bench/RESULTS.md). Every `explore_every`-th long pass runs the other count,
    so a change in the machine's load is noticed (0: never re-measure).
    """

    narrow: int = 1
    wide: int = 1
    wide_after: float = 0.005
    explore_every: int = 32

    @classmethod
    def for_machine(cls, cores: int, fixed: int = 0) -> ThreadPolicy:
        if fixed > 0:
            return cls(fixed, fixed)
        return cls(narrow=max(1, cores - 1), wide=max(1, cores))


def intra_op_threads(policy: ThreadPolicy, last_forward: float | None,
                     per_item: Mapping[int, float] | None = None, long_passes: int = 0) -> int:
    """Threads for the next forward pass, given how long the last one took.

    `per_item`: measured seconds per item of long passes by thread count (an EWMA);
    `long_passes`: how many long passes ran so far.
    """
    if last_forward is None or last_forward < policy.wide_after or policy.wide == policy.narrow:
        return policy.narrow
    measured = per_item or {}
    for threads in (policy.wide, policy.narrow):  # each count measured once first
        if threads not in measured:
            return threads
    best, other = sorted((policy.wide, policy.narrow), key=lambda n: measured[n])
    if policy.explore_every and long_passes % policy.explore_every == policy.explore_every - 1:
        return other
    return best


class ThreadChooser:
    """One model's thread counts, measured and chosen per batch size (powers of two).

    Seconds per item are only comparable between passes of similar size: a batch of one
    costs several times more per item than a batch of 32 whatever the threads. Compared
    across sizes, whichever count happened to run the small batches looks slow for good:
    a node that served MiniLM one request at a time and then at c=64 kept one thread
    (149 req/s where two threads gave 237, bench/RESULTS.md). So each size class
    (`items.bit_length()`: 1, 2-3, 4-7, ...) keeps its own measurements, pass count and
    last pass length, and `intra_op_threads` decides for it alone.

    A count is judged by the faster of its last `keep` passes, after `keep` passes of each:
    one pass slowed by something else (the event loop answering a burst, another process)
    must not decide for the next `explore_every` passes: judged on one pass each, a
    two-thread MiniLM pass slowed by a burst could keep a node on one thread for a whole
    bench phase at c=64 (one node_bench run gave 216 req/s, the one-thread raw speed,
    where two threads give 300-400).
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._per_item: dict[int, dict[int, deque[float]]] = {}
        self._passes: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self.last_forward: float | None = None

    def threads(self, policy: ThreadPolicy, items: int) -> int:
        size = max(1, items).bit_length()
        last = self._last.get(size, self.last_forward)
        samples = self._per_item.get(size, {})
        if last is not None and last >= policy.wide_after and policy.wide != policy.narrow:
            # `keep` passes of each first, alternating (wide first).
            fewest = min((policy.wide, policy.narrow), key=lambda n: len(samples.get(n, ())))
            if len(samples.get(fewest, ())) < self.keep:
                return fewest
        measured = {threads: min(seen) for threads, seen in samples.items()}
        return intra_op_threads(policy, last, measured, self._passes.get(size, 0))

    def record(self, policy: ThreadPolicy, threads: int, items: int, seconds: float) -> None:
        """A pass of `items` items ran `seconds` on `threads` threads."""
        size = max(1, items).bit_length()
        long = self._last.get(size, self.last_forward)
        self.last_forward = self._last[size] = seconds
        if items <= 0 or long is None or long < policy.wide_after:
            return
        self._passes[size] = self._passes.get(size, 0) + 1
        seen = self._per_item.setdefault(size, {}).setdefault(threads, deque(maxlen=self.keep))
        seen.append(seconds / items)


# Set by the node at start-up (swarm.node._node); models read it for every CPU pass.
_thread_policy = ThreadPolicy()


def set_thread_policy(policy: ThreadPolicy) -> None:
    global _thread_policy
    _thread_policy = policy
    torch.set_num_threads(policy.narrow)


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return device


def local_devices(device: torch.device,
                  count: Callable[[], int] = torch.cuda.device_count) -> list[torch.device]:
    """The devices this node may run one instance of a model on each (local replicas):
    every CUDA device (`count()`, torch.cuda.device_count by default: injectable, as this
    project's CI has no GPU) when `device` is CUDA, else `device` alone. The first is
    `device` itself."""
    if device.type != "cuda":
        return [device]
    first = device.index or 0
    return [device, *(torch.device("cuda", i) for i in range(count()) if i != first)]


class Model(abc.ABC):
    """A loaded model version, ready to execute batches."""

    name: str
    digest: Digest
    spec: ModelSpec
    device: torch.device

    def check(self, inputs: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        """Per-request checks beyond the declared specs (run before batching)."""

    @abc.abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every input has the same length along dim 0."""

    @abc.abstractmethod
    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        """Valid inputs of `batch_size` items, for warm-up and benchmarks."""

    def warmup(self) -> None:
        """Execute a few representative batches so first requests are not slow."""
        for size in sorted({1, min(8, self.spec.max_batch_size), self.spec.max_batch_size}):
            self.execute(self.example_inputs(size))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory_bytes(self) -> int:
        return 0

    def prepare_thread(self) -> None:  # noqa: B027
        """Called once in each thread that will execute this model (the batcher's)."""

    def close(self) -> None:  # noqa: B027
        """Release resources (device memory)."""


class TorchModel(Model):
    """A model whose forward is a torch callable over tensors named by the spec."""

    def __init__(self, name: str, digest: Digest, spec: ModelSpec, module: Any,
                 device: torch.device) -> None:
        self.name = name
        self.digest = digest
        self.spec = spec
        self.device = device
        self._module = module
        # One execution at a time per model: the batcher guarantees it, this guards misuse.
        self._lock = threading.Lock()
        # CPU passes' intra-op threads, measured and chosen per batch size.
        self._threads = ThreadChooser()

    @contextlib.contextmanager
    def _compute(self, items: int = 0) -> Iterator[None]:
        """One forward pass of `items` items: the lock, inference mode, this pass's threads."""
        with self._lock:
            policy = _thread_policy
            threads = 0
            if self.device.type == "cpu":
                threads = self._threads.threads(policy, items)
                if threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
            started = time.perf_counter()
            with torch.inference_mode():
                yield
            seconds = time.perf_counter() - started
            if threads:
                self._threads.record(policy, threads, items, seconds)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        # Decoded requests are read-only views of the message; torch wants writable memory.
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C")
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def forward(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self._module(*(tensors[s.name] for s in self.spec.inputs))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {s.name: t for s, t in zip(self.spec.outputs, outputs, strict=True)}

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._compute(len(next(iter(inputs.values()), ()))):
            tensors = {s.name: self._to_device(inputs[s.name]) for s in self.spec.inputs}
            outputs = self.forward(tensors)
            return {k: v.detach().to("cpu").numpy() for k, v in outputs.items()}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        out: dict[str, np.ndarray] = {}
        for spec in self.spec.inputs:
            shape = (batch_size, *(d if d > 0 else 1 for d in spec.shape[1:]))
            if spec.datatype.startswith("FP"):
                out[spec.name] = rng.standard_normal(shape).astype(_np_dtype(spec.datatype))
            else:
                out[spec.name] = np.zeros(shape, dtype=_np_dtype(spec.datatype))
        return out

    def prepare_thread(self) -> None:
        # OpenMP's thread count is per calling thread, and oneDNN kernels (GELU, ...) size
        # their teams from it: without this, a batcher thread runs 2-thread teams whatever
        # torch.set_num_threads said on the main thread, and their spinning worker fights
        # the event loop for the CPU (8x slower GELU, 10x tail latency on 2 cores).
        torch.set_num_threads(_thread_policy.narrow)
        if self.device.type == "cuda" and self.device.index is not None:
            # An instance on another device (a local replica): its thread's current device,
            # so that streams and allocations default to it.
            torch.cuda.set_device(self.device)

    def memory_bytes(self) -> int:
        params = getattr(self._module, "parameters", None)
        if params is None:
            return 0
        return sum(p.numel() * p.element_size() for p in params())

    def close(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _np_dtype(datatype: str) -> np.dtype[Any]:
    from swarm._tensors import numpy_dtype

    return numpy_dtype(datatype)
