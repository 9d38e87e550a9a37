"""Routing text generation by tokens: what a stream will take at a continuous-batching provider.

A generation request is not one unit of work: a 16-token answer and a 256-token one
differ sixteenfold, and a provider's load is the tokens it still has to compute, not the
requests it holds. `choose` takes this path when the request carries a `TokenCost`
(`Request.generation`); everything else about the choice (filters, score, spread,
exploration) is the same as for tensor requests.

What a continuous-batching engine (Orca, vLLM; swarm.node._generate) does with a new
sequence, and the estimate that follows. The engine runs steps; each step gives every
running sequence one token (or a chunk of its prompt) and admits waiting sequences while
one of its `S` sequence slots (the advert's `max_batch_size`) is free. So:

- With a free slot, the request starts at the next step: it waits for nobody. Its prompt
  is prefilled (compute-bound, many tokens per step: `GenerationPolicy.prefill_speedup`
  times one sequence's decode rate), then it gets one token per step, `r` tokens/s (the
  advert's `sequence_tokens_per_second`, or what our own streams measured there). `r`
  falls slowly as the batch grows (a step costs more with more rows); the measured `r`
  is the rate at the provider's present batch.
- With every slot taken, it waits for a slot. The n sequences ahead (running + waiting)
  hold `Q` tokens of work (queued decode tokens + queued prompt tokens / prefill_speedup);
  at most S of them advance at once, at S * r tokens/s together. Fluid approximation:
  sequences leave at S * r / (Q / n) per second, and ours is admitted after n - S + 1 of
  them have left::

      wait = 0                                   n < S
           = (n - S + 1) / n * Q / (S * r)       otherwise

  n = S (a full batch, nobody waiting): the first slot frees after ~ Q / (S^2 r), the
  shortest remainder of S staggered sequences; a deep queue: ~ Q / (S r), the whole
  backlog at the full batch's rate.

Then, with D the tokens to generate (`max_tokens`, else `GenerationPolicy.expected_decode`)
and P the prompt's::

    first token = rtt + max(0, wait + surprise) + P / (prefill_speedup * r)
    expected    = first token + (D - 1) / r

The advert is seconds old: its Q is drained at min(n, S) * r tokens/s since it was
received (n shrinking in proportion), and this client's own streams sent since count
`in_flight_weight` times (others send there too while ours run), as for tensor requests.
Our streams still open that were sent before the advert are a floor under its n and Q:
an advert that understates its load cannot hide the streams we know are there.
What we keep seeing and the adverts do not explain (other clients' streams since the
advert, an advert that understates its load) is learnt per provider as the surprise at
the first token, observed - expected (`Observations.record_first_token`), an EWMA that
fades when not refreshed; it is added to `wait` (never making it negative). Sooner
than that, a stream of ours there still without the first token it was due to have is
overdue: the most overdue one's lateness replaces the surprise when larger. Together
with the floor above, this is what bounds what a provider gains by understating its
load: once our streams there are late, it gets no more of ours.

`r` blends our measurements with the advert's (or, when it advertises none, the typical
provider's), as seconds per token, like service times do (`SchedulerConfig.service_prior`,
`stale_half_life`): a provider that advertises a speed it does not deliver loses the
traffic once measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarm._types import Digest
from swarm.scheduler._observations import ObservationSnapshot, PeerStats

if TYPE_CHECKING:
    from swarm.protocol import PeerEntry
    from swarm.scheduler._policy import SchedulerConfig

__all__ = ["GenerationEstimate", "GenerationPolicy", "TokenCost", "estimate_generation",
           "prompt_tokens_of"]

# UTF-8 bytes per token assumed for a prompt the client has not tokenized: byte-level BPE
# vocabularies (GPT-2's, Llama's, SmolLM2's) average about 4 bytes per token on English.
BYTES_PER_TOKEN = 4
# Tokens a chat template adds per message (role markers, separators).
TOKENS_PER_MESSAGE = 4


def prompt_tokens_of(text: str, messages: int = 0) -> int:
    """Tokens a prompt of `text` (and `messages` chat messages' template) is estimated at."""
    return max(1, math.ceil(len(text.encode()) / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * messages)


@dataclass(frozen=True, slots=True)
class TokenCost:
    """What one generation request asks of a provider, in tokens."""

    # Prompt tokens to prefill (`prompt_tokens_of` when the client has not tokenized it).
    prompt_tokens: int
    # Most tokens to generate; None: `GenerationPolicy.expected_decode`.
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must not be negative, got {self.prompt_tokens}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    def decode_tokens(self, policy: GenerationPolicy) -> int:
        return self.max_tokens if self.max_tokens is not None else policy.expected_decode

    def work(self, policy: GenerationPolicy) -> float:
        """Decode tokens plus the prompt's in decode-token equivalents (module docstring)."""
        return self.decode_tokens(policy) + self.prompt_tokens / policy.prefill_speedup


@dataclass(frozen=True, slots=True)
class GenerationPolicy:
    # Tokens a request without max_tokens is expected to generate.
    expected_decode: int = 128
    # How many times faster than one sequence decodes a prompt is prefilled, per token.
    # Measured here (CPU, builtin/smollm2): a 100-token prefill takes the time of 5-9 decode
    # steps at batch 1, i.e. 11-20; GPUs prefill relatively faster still.
    prefill_speedup: float = 16.0
    # Tokens/s one sequence is assumed to get where neither we nor the advert measured it.
    default_rate: float = 10.0

    def __post_init__(self) -> None:
        if self.expected_decode < 1:
            raise ValueError(f"expected_decode must be at least 1, got {self.expected_decode}")
        if not (self.prefill_speedup > 0 and self.default_rate > 0):
            raise ValueError("prefill_speedup and default_rate must be positive")


@dataclass(frozen=True, slots=True)
class GenerationEstimate:
    first_token: float  # seconds from sending to the first token
    latency: float  # seconds from sending to the last token
    ahead: float  # sequences ahead of this one (advertised, drained, plus our own)
    rate: float  # tokens/s this request is expected to decode at


def typical_generation(entries: list[PeerEntry], stats: ObservationSnapshot, digest: Digest,
                       config: SchedulerConfig) -> tuple[float, float]:
    """Median measured (rtt, tokens/s per sequence) over the providers; else what they
    advertise; else the defaults (a provider never measured is assumed typical)."""
    rtts = sorted(r for e in entries if (r := stats.get(e.peer_id).rtt) is not None)
    rates = sorted(r for e in entries if (r := stats.get(e.peer_id).stream_rate_for(digest)[0])
                   is not None)
    if not rates:
        rates = sorted(o.sequence_tokens_per_second for e in entries
                       if (o := e.advert.offer(digest)) is not None
                       and o.sequence_tokens_per_second > 0)
    rtt = rtts[len(rtts) // 2] if rtts else config.default_rtt
    rate = rates[len(rates) // 2] if rates else config.generation.default_rate
    return rtt, rate


def estimate_generation(entry: PeerEntry, peer: PeerStats, digest: Digest, cost: TokenCost,
                        now: float, config: SchedulerConfig,
                        typical: tuple[float, float],
                        stats_half_life: float = 2.0) -> GenerationEstimate:
    """The module docstring's estimate for one provider. Pure. `stats_half_life`: how fast
    the stream surprise fades (the observations' `surprise_half_life`)."""
    policy = config.generation
    offer = entry.advert.offer(digest)
    prior = offer.sequence_tokens_per_second if offer is not None else 0.0
    prior = prior if prior > 0 else typical[1]
    measured, sampled_at, samples = peer.stream_rate_for(digest)
    if measured is None:
        rate = prior
    else:
        trust = (0.5 ** (max(0.0, now - sampled_at) / config.stale_half_life)
                 * samples / (samples + config.service_prior))
        # Blended as seconds per token (as service times are): a sample of a slow provider
        # outweighs its advertised speed, however high that is.
        rate = 1.0 / (trust / max(measured, 1e-3) + (1 - trust) / prior)
    rate = max(rate, 1e-3)
    slots = max(1, offer.max_batch_size) if offer is not None else 1
    if offer is not None:
        ahead = float(offer.running_sequences + offer.waiting_sequences)
        work = offer.queued_decode_tokens + offer.queued_prompt_tokens / policy.prefill_speedup
    else:
        ahead, work = 0.0, 0.0
    if work > 0:  # drained since the advert at the provider's own speed
        left = max(0.0, work - max(0.0, now - entry.received_at) * min(ahead, slots) * rate)
        ahead, work = ahead * left / work, left
    # Our streams sent before the advert should be in its counts: they are a floor under
    # them (an advert that understates its load cannot hide the streams we know are
    # there), each less what it may have decoded since it was sent.
    before = [max(0.0, w - (now - start) * rate) for start, w, _ in peer.streaming
              if start <= entry.received_at]
    ahead, work = max(ahead, float(len(before))), max(work, sum(before))
    own = [(start, w) for start, w, _ in peer.streaming if start > entry.received_at]
    ahead += config.in_flight_weight * len(own)
    work += config.in_flight_weight * sum(w for _, w in own)
    wait = 0.0
    if ahead >= slots and ahead > 0:  # every slot taken: wait for one to free
        wait = (ahead - slots + 1) / ahead * work / (slots * rate)
    # Our streams there still without the first token they were due to have by now: the
    # provider is that much slower than it looks, whatever it advertises.
    overdue = max((now - due for _, _, due in peer.streaming if due < now), default=0.0)
    wait = max(0.0, wait + max(peer.stream_surprise_now(now, stats_half_life), overdue))
    if peer.rtt is None:
        rtt = typical[0]
    else:
        fresh = 0.5 ** (max(0.0, now - peer.sampled_at) / config.stale_half_life)
        rtt = fresh * peer.rtt + (1 - fresh) * typical[0]
    first = rtt + wait + cost.prompt_tokens / (policy.prefill_speedup * rate)
    decode = cost.decode_tokens(policy)
    return GenerationEstimate(first, first + (decode - 1) / rate, ahead, rate)
