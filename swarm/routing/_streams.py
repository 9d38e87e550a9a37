"""What one generation stream teaches the Router's observations (routing by tokens).

`Router.watch_stream(candidate, digest, cost)` opens a `StreamWatch`: the stream counts
as open at the provider (its tokens fill the provider's slots in this client's next
estimates, swarm/scheduler/_generation.py) until `close()`; the tokens that arrive after
the first chunk, and when, are a sample of the tokens/s one sequence gets there
(`Observations.record_stream`), recorded when the stream ends with its final response;
the first token's delay against the candidate's `first_token` estimate is a sample of
the wait the adverts do not show (`Observations.record_first_token`).
A stream that fails on the provider's side counts as that provider's failure (circuit
breaker). Hedging does not apply to streams: a stream is never sent twice at once.
"""

from __future__ import annotations

import math

from swarm._clock import Clock
from swarm._types import Digest, PeerId
from swarm.scheduler import Failure, GenerationPolicy, Observations, TokenCost

__all__ = ["StreamWatch"]


class StreamWatch:
    """Observations of one generation stream to one provider; `close()` exactly once."""

    def __init__(self, observations: Observations, clock: Clock, peer: PeerId, digest: Digest,
                 cost: TokenCost, policy: GenerationPolicy,
                 expected_first_token: float | None = None) -> None:
        self._obs = observations
        self._expected = expected_first_token
        self._clock = clock
        self.peer = peer
        self._digest = digest
        self._work = cost.work(policy)
        self.started = clock.monotonic()
        self.first_token: float | None = None  # when the first chunk with tokens came
        self._last = self.started
        self._after_first = 0  # tokens in the chunks after the first
        self._closed = False
        observations.start_stream(peer, self.started, self._work, expected_first_token)

    def received(self, tokens: int) -> None:
        """A chunk carrying `tokens` token ids arrived."""
        if tokens <= 0:
            return
        now = self._clock.monotonic()
        if self.first_token is None:
            self.first_token = now
            self._obs.record_first_token(
                self.peer, self.started, self._work, now - self.started,
                math.nan if self._expected is None else self._expected, now)
        else:
            self._after_first += tokens
        self._last = now

    def close(self, *, finished: bool = False, failure: Failure | None = None) -> None:
        """The stream ended: with its final response (`finished`), by the provider's fault
        (`failure`), or otherwise (the caller left: neither)."""
        if self._closed:
            return
        self._closed = True
        now = self._clock.monotonic()
        self._obs.finish_stream(self.peer, self.started, self._work)
        if failure is not None:
            self._obs.record_failure(self.peer, failure, now)
        elif finished and self.first_token is not None and self._after_first > 0:
            self._obs.record_stream(self.peer, self._digest, self._after_first + 1,
                                    self._last - self.first_token, now)
