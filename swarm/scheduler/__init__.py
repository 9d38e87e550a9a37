"""Routing policy: which provider gets a request, as pure decisions over a peer view.

_policy.py        choose(view, request, observations, rng, now) -> candidates, best first;
                  Request, Preference, SchedulerConfig, Candidate
_admission.py     provider-side admission: admits(policy, queue, rate) on the provider,
                  choose_attempt(...) for the next attempt after refusals on the client
_generation.py    generation streams estimated by tokens at continuous-batching providers:
                  TokenCost (Request.generation), GenerationPolicy (SchedulerConfig.generation)
_observations.py  Observations: per-peer RTT / service-time / latency EWMAs, p95,
                  outstanding requests, failures and a circuit breaker with growing bans
"""

from swarm.scheduler._admission import AdmissionPolicy, admits, choose_attempt
from swarm.scheduler._generation import (
    GenerationEstimate,
    GenerationPolicy,
    TokenCost,
    estimate_generation,
    prompt_tokens_of,
)
from swarm.scheduler._observations import (
    BreakerState,
    Failure,
    ObservationConfig,
    Observations,
    ObservationSnapshot,
    PeerStats,
)
from swarm.scheduler._policy import Candidate, Preference, Request, SchedulerConfig, choose

__all__ = [
    "AdmissionPolicy",
    "BreakerState",
    "Candidate",
    "Failure",
    "GenerationEstimate",
    "GenerationPolicy",
    "ObservationConfig",
    "ObservationSnapshot",
    "Observations",
    "PeerStats",
    "Preference",
    "Request",
    "SchedulerConfig",
    "TokenCost",
    "admits",
    "choose",
    "choose_attempt",
    "estimate_generation",
    "prompt_tokens_of",
]
