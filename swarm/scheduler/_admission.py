"""Provider-side admission: a provider past its queue bound sends a request elsewhere.

Clients route on estimates of each provider's queue that are hundreds of milliseconds
old, while a fast provider's queue turns over in tens of milliseconds: independent
clients that all believe one provider idle send there together (herding), and the
tail of latency is the wait in that queue. The provider is the one party that knows
its queue now, so it decides:

- `admits(policy, queued_items, items_per_second, batch_items)` (provider, pure): a
  request that allows a refusal is refused when the work queued ahead of it exceeds
  the provider's latency target at its measured service rate
  (`queued_items / items_per_second > policy.target_wait`, never below one batch).
  The node's servicer and the simulator's virtual provider both call it.
- The refusal is RESOURCE_EXHAUSTED carrying the provider's queue depth (a trailer on
  the wire, `OverloadedError.queue_depth` in the Router). It is not a failure: no
  circuit breaker count, no penalty beyond the depth, which feeds the client's estimate
  of that provider only, as a depth in an answer does.
- `choose_attempt(...)` (client, pure): the candidates for the next attempt. While
  fewer than `SchedulerConfig.max_refusals` providers refused this request, the next
  one may refuse too (`Candidate.admissible`), and the refusers are excluded; then the
  last attempt must be queued: it goes to the best provider by estimate, refusers
  included (their reported depth now counts), and may not be refused. A request thus
  makes at most `max_refusals` refused calls, whatever providers answer.

A request that does not allow refusal (any client that is not a swarm Router, e.g.
tritonclient, and the Router's last attempt) is queued as before, up to the batch
policy's `max_queue_size`.

What a refusal claims (its depth) is not authenticated: a provider may lie. A claim
only ever moves the claimer's own estimate (a huge depth sends its own share away
until its next advert or answer; a depth of 0 keeps it looking idle, and its refusals
are then bounded as above), so it cannot divert more than its own share of traffic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from swarm._errors import NoProviderError
from swarm._types import PeerId
from swarm.protocol import PeerView
from swarm.scheduler._observations import Observations, ObservationSnapshot
from swarm.scheduler._policy import Candidate, Request, SchedulerConfig, choose

__all__ = ["AdmissionPolicy", "admits", "choose_attempt"]


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """A provider's admission bound for one model's queue."""

    # The provider's latency target for queueing: seconds of work (at its measured service
    # rate) it lets wait ahead of a new request that allows a refusal. Past it, such a
    # request is refused and goes to the next provider. 0 turns admission off (every
    # request is queued, up to max_queue_size).
    target_wait: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.target_wait < math.inf:
            raise ValueError(f"target_wait must be finite and >= 0, got {self.target_wait}")



def admits(policy: AdmissionPolicy, queued_items: int, items_per_second: float,
           batch_items: int = 1, executing: float = 0.0) -> bool:
    """Does a provider queue a request that allows refusal, with `queued_items` items
    waiting, an execution expected to run `executing` seconds more, and a measured
    service rate of `items_per_second`?

    The wait ahead of the request, `queued_items / items_per_second + executing`, must
    stay within the policy's latency target, or within one batch (`batch_items`, the
    largest) when that takes longer: a batch's worth queued is what batching needs, not a
    backlog. An idle provider always admits.
    """
    if queued_items <= 0 and executing <= 0:
        return True
    if policy.target_wait <= 0 or not items_per_second > 0:
        return True  # off, or nothing measured yet: no basis to refuse on
    ahead = max(0, queued_items) / items_per_second + max(0.0, executing)
    return ahead < max(policy.target_wait, batch_items / items_per_second)


def choose_attempt(view: PeerView, request: Request, obs: Observations | ObservationSnapshot,
                   rng: random.Random, now: float, config: SchedulerConfig,
                   refused: frozenset[PeerId] = frozenset(),
                   refusals: int | None = None) -> list[Candidate]:
    """Candidates for the next attempt of `request` (`request.exclude`: the peers tried),
    when the peers in `refused` have refused it and not failed it since (module docstring);
    `refusals`: how many refusals this request met (default: one per peer in `refused`).

    The first candidate is `admissible` (the provider may refuse it) while fewer than
    `config.max_refusals` refusals came and another provider is left; otherwise it is the
    best by estimate among all but the peers that failed, and must be queued.
    """
    met = len(refused) if refusals is None else refusals
    if met < config.max_refusals:
        try:
            ranked = choose(view, request, obs, rng, now, config)
            return [replace(ranked[0], admissible=True), *ranked[1:]]
        except NoProviderError:
            if not refused:
                raise
    elif met == 0:  # max_refusals 0: admission off, a plain choice
        return choose(view, request, obs, rng, now, config)
    forced = replace(request, exclude=request.exclude - refused, explore=False)
    return choose(view, forced, obs, rng, now, replace(config, spread_pool=1))
