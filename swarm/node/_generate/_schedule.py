"""The per-step scheduling decision of continuous batching: a pure function.

After Orca (OSDI '22) and vLLM's scheduler. Every step:
1. running sequences first, oldest first: a sequence whose prompt is fully in the KV
   cache decodes one token; one still prefilling gets a chunk of at most what is left
   of the step's token budget (`max_batched_tokens`);
2. the KV cache is counted in blocks of `block_size` tokens; when the running
   sequences' next step does not fit in `kv_blocks`, the newest are preempted (their
   cache dropped, to be recomputed later from prompt + tokens generated so far);
3. if nothing was preempted, waiting sequences are admitted in arrival order while a
   slot (`max_num_seqs`), budget, and KV blocks for their whole prompt remain;
4. finished and cancelled sequences are not passed in: they left at the last step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SchedulerConfig", "SeqState", "Step", "blocks_for", "schedule"]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 32  # sequences running at once (KV cache slots)
    max_batched_tokens: int = 512  # tokens computed per step, prefill chunks + decodes
    kv_blocks: int = 1024  # KV cache budget, in blocks
    block_size: int = 16  # tokens per block

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_batched_tokens, self.kv_blocks, self.block_size) < 1:
            raise ValueError(f"scheduler limits must be positive: {self}")


@dataclass(frozen=True, slots=True)
class SeqState:
    """What the scheduler knows of one sequence."""

    id: int
    tokens: int  # tokens to hold in the cache before the next decode: prompt (+ generated)
    computed: int  # tokens already in the cache (0 when waiting or preempted)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.tokens


@dataclass(frozen=True, slots=True)
class Step:
    decode: tuple[int, ...] = ()  # ids that compute one token each
    prefill: tuple[tuple[int, int], ...] = ()  # (id, tokens) chunks, from `computed` on
    admitted: tuple[int, ...] = ()  # waiting ids now running (their chunk is in `prefill`)
    preempted: tuple[int, ...] = ()  # running ids sent back to waiting, cache dropped

    @property
    def tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def _after(seq: SeqState, budget: int) -> tuple[int, int]:
    """(tokens this step computes, tokens in cache afterwards) for a running sequence."""
    if seq.prefilling:
        n = min(seq.tokens - seq.computed, budget)
        return n, seq.computed + n
    return 1, seq.computed + 1


def schedule(running: Sequence[SeqState], waiting: Sequence[SeqState],
             config: SchedulerConfig) -> Step:
    """The next step. `running` oldest first; `waiting` in admission order."""
    # KV: what every running sequence holds after a full step (a decode adds a token,
    # a prefill at most its remaining prompt); preempt the newest until that fits.
    kept = list(running)
    preempted: list[int] = []

    def need(seqs: list[SeqState]) -> int:
        return sum(blocks_for(max(s.tokens, s.computed + 1), config.block_size) for s in seqs)

    while kept and need(kept) > config.kv_blocks:
        preempted.append(kept.pop().id)
    budget = config.max_batched_tokens
    decode: list[int] = []
    prefill: list[tuple[int, int]] = []
    for seq in kept:
        if budget <= 0:
            break
        n, _ = _after(seq, budget)
        budget -= n
        if seq.prefilling:
            prefill.append((seq.id, n))
        else:
            decode.append(seq.id)
    admitted: list[int] = []
    if not preempted:
        used = need(kept)
        slots = config.max_num_seqs - len(kept)
        for seq in waiting:
            if slots <= 0 or budget <= 0:
                break
            blocks = blocks_for(seq.tokens + 1, config.block_size)
            if used + blocks > config.kv_blocks:
                break  # in order: a big prompt is not overtaken by smaller ones
            n = min(seq.tokens - seq.computed, budget)
            admitted.append(seq.id)
            prefill.append((seq.id, n))
            used += blocks
            slots -= 1
            budget -= n
    return Step(tuple(decode), tuple(prefill), tuple(admitted), tuple(preempted))
