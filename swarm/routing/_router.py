"""Routing requests over the swarm: choose a provider, call it, retry, hedge, learn.

The decision is `swarm.scheduler.choose` (pure); this module is the I/O around
it. For each request:

1. candidates = choose(view, request, observations, rng, now)
2. call the best within the request's deadline (the call's timeout is the time left);
3. if it is slower than that provider's p95 (or, with too few samples of it, this
   client's p95 over all providers), hedge: send the same request to the next
   candidate and take whichever answers first (once per request);
4. on UNAVAILABLE, RESOURCE_EXHAUSTED, NOT_FOUND (a stale advert), INTERNAL or a
   transport error, try the next candidate while the deadline allows;
   INVALID_ARGUMENT is never retried: the request itself is wrong;
5. every outcome updates the observations (latency EWMAs, server-reported queue
   time, compute time and queue depth, failures and the circuit breaker).

A small share of first attempts (never retries or hedges) explores: it goes to a
provider this client has not measured lately (`SchedulerConfig.explore`).

Attempts may be refused by the provider's admission (swarm/scheduler/_admission.py):
the Router marks such an attempt (`Candidate.admissible`; GrpcCaller sends the
ADMISSION_HEADER), and a refusal (RESOURCE_EXHAUSTED with the provider's queue depth in
the DEPTH_TRAILER) is recorded as that depth, never as a failure; the next attempt goes
elsewhere, and after `SchedulerConfig.max_refusals` refusals the last one must be queued.
Refusals do not count against `RoutingOptions.max_attempts`.

The call itself is injected (`Caller`): `GrpcCaller` by default, a simulated network
and provider in `swarm simnet virtual`. Everything above works on the InferenceError
codes a caller raises, never on transport exceptions, and reads time from a `Clock`.

Names resolve to digests through an injected `Resolver` too (swarm/routing/_names.py):
`SignedNames` by default, which follows signed statements only (owner-signed tags,
release-pinned built-ins), never the number of providers claiming a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc

from swarm._clock import Clock, SystemClock
from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    NoProviderError,
    OverloadedError,
    UnavailableError,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest, ModelRef, PeerId
from swarm.protocol import PeerChannels, PeerView, ResponseSignature
from swarm.routing._names import Resolver, SignedNames, SignedTags
from swarm.routing._status import ADMISSION_HEADER, error_from_rpc
from swarm.routing._streams import StreamWatch
from swarm.scheduler import (
    Candidate,
    Failure,
    Observations,
    Preference,
    Request,
    SchedulerConfig,
    TokenCost,
    choose,
    choose_attempt,
)

__all__ = ["FORWARDED", "Caller", "GrpcCaller", "Routed", "Router", "RoutingOptions"]

# Request parameter a gateway sets on what it forwards (providers never forward it again).
FORWARDED = "swarm_forwarded"
MAX_MESSAGE_BYTES = 64 << 20
_RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "NOT_FOUND", "INTERNAL", "CANCELLED",
              "UNKNOWN"}


# One attempt: send `request` to the candidate, give up after `timeout` seconds. Failures
# are raised as InferenceError subclasses whose `code` is the gRPC status name
# (a timeout: DeadlineExceededError). The Router cancels the awaitable of a hedge that lost.
Caller = Callable[[Candidate, pb.ModelInferRequest, float], Awaitable[pb.ModelInferResponse]]


class GrpcCaller:
    """The production Caller: OIP ModelInfer over gRPC, one channel per (peer, endpoint).

    Channels are TLS pinned to the certificate the candidate's peer proves it holds
    (swarm.protocol.PeerChannels): a server holding another key is refused as UNAVAILABLE
    (the Router tries the next candidate). `tls=False` dials plaintext (tests, benchmarks).
    """

    def __init__(self, *, tls: bool = True, channels: PeerChannels | None = None) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._options = options
        self.channels = (channels or PeerChannels(options=options)) if tls else None
        self._stubs: dict[tuple[PeerId, str],
                          tuple[grpc.aio.Channel, pb_grpc.GRPCInferenceServiceStub]] = {}

    async def _stub(self, candidate: Candidate) -> pb_grpc.GRPCInferenceServiceStub:
        key = (candidate.peer, candidate.endpoint)
        entry = self._stubs.get(key)
        if self.channels is not None:
            # The channels re-pin a peer whose handshakes fail (a rotated certificate).
            channel = await self.channels.channel(candidate.peer, candidate.endpoint)
            if entry is None or entry[0] is not channel:
                entry = (channel, pb_grpc.GRPCInferenceServiceStub(channel))
                self._stubs[key] = entry
        elif entry is None:
            channel = grpc.aio.insecure_channel(candidate.endpoint, options=self._options)
            entry = (channel, pb_grpc.GRPCInferenceServiceStub(channel))
            self._stubs[key] = entry
        return entry[1]

    async def __call__(self, candidate: Candidate, request: pb.ModelInferRequest,
                       timeout: float) -> pb.ModelInferResponse:
        try:
            async with asyncio.timeout(timeout):  # a first call pins the peer's certificate
                stub = await self._stub(candidate)
        except TimeoutError as exc:
            raise DeadlineExceededError(
                f"{candidate.endpoint}: no TLS handshake within {timeout:.3g} s") from exc
        metadata = ((ADMISSION_HEADER, "1"),) if candidate.admissible else None
        try:
            response: pb.ModelInferResponse = await stub.ModelInfer(
                request, timeout=timeout, metadata=metadata)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this request is being cancelled
            # grpc.aio cancels the calls of a channel closed under them: the provider was
            # not reached, which the Router retries elsewhere, never a lost request.
            raise UnavailableError(f"{candidate.endpoint}: the channel closed under the call",
                                   code="UNAVAILABLE") from None
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, candidate.endpoint) from exc
        return response

    async def close(self) -> None:
        """Close every channel opened so far."""
        stubs, self._stubs = self._stubs, {}
        if self.channels is not None:
            await self.channels.close()
            return
        for channel, _ in stubs.values():
            await channel.close()


@dataclass(frozen=True, slots=True)
class RoutingOptions:
    # Highest acceptable price per request (micro-units); None: no cap.
    max_price: float | None = None
    # latency, price, or a weighted balance (Preference(latency_weight=0.7)).
    preference: Preference = Preference.LATENCY
    # Seconds the whole request (retries and hedges included) may take.
    timeout: float = 30.0
    # Send a second copy when the first is slower than its provider's p95.
    hedge: bool = True
    # Most providers tried for one request.
    max_attempts: int = 4
    # This request's stake rule (the SDK's per-call min_stake), replacing the Router's
    # SchedulerConfig.stake_ok; None: the Router's.
    stake_ok: Callable[[PeerId], bool] | None = None
    # Parameters to add to the request sent to a candidate (the SDK's signed payment
    # receipt, made per attempt: each provider is paid for what it is sent).
    pay: Callable[[Candidate, int], Mapping[str, str]] | None = None
    # Takes back what `pay` signed for an attempt the provider refused before serving it
    # (admission): a provider that refuses is not paid for refusing.
    unpay: Callable[[Candidate, int], None] | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    response: pb.ModelInferResponse
    peer: PeerId
    endpoint: str
    price: float
    attempts: int
    latency: float
    # A second copy was sent because the first was slow (the answer may come from either).
    hedged: bool = False
    # The provider's verified signature over the response (the SDK's verify=True).
    signature: ResponseSignature | None = None


@dataclass(frozen=True, slots=True)
class _Refused:
    """An attempt refused by the provider's admission (not a failure)."""

    error: OverloadedError


@dataclass
class _Attempt:
    candidate: Candidate
    started: float
    task: asyncio.Future[pb.ModelInferResponse] = field(repr=False)


class Router:
    """Sends OIP requests to providers chosen from a live peer view.

    `caller` makes one attempt (default: a GrpcCaller the Router owns and `close()`
    closes); `clock` is read for every deadline and observation. `resolver` says what a
    model name means (default: `SignedNames(signed_tags)`, the owners' signed tag
    records and the release's pinned built-ins); give one or the other.
    """

    def __init__(self, view: Callable[[], PeerView], *, rng: random.Random | None = None,
                 config: SchedulerConfig | None = None,
                 observations: Observations | None = None,
                 clock: Clock | None = None,
                 signed_tags: SignedTags | None = None,
                 resolver: Resolver | None = None,
                 caller: Caller | None = None) -> None:
        if resolver is not None and signed_tags is not None:
            raise ValueError("give a resolver or signed_tags (for the default one), not both")
        self._view = view
        self._resolver: Resolver = resolver or SignedNames(signed_tags)
        self._rng = rng or random.Random()
        self._config = config or SchedulerConfig()
        self.observations = observations or Observations()
        self._clock = clock or SystemClock()
        self._grpc: GrpcCaller | None = None
        if caller is None:
            caller = self._grpc = GrpcCaller()
        self._call = caller
        # Hedges sent, and first attempts sent to explore (SchedulerConfig.explore), over
        # the Router's life (observable by operators and the simulator).
        self.hedges = 0
        self.explorations = 0
        # Attempts refused by a provider's admission (not failures).
        self.refusals = 0

    @property
    def view(self) -> PeerView:
        return self._view()

    @property
    def channels(self) -> PeerChannels | None:
        """The identity-pinned TLS channels of the Router's own GrpcCaller (None: another
        caller); other calls to providers (metadata, registry) reuse them."""
        return self._grpc.channels if self._grpc is not None else None

    @contextlib.asynccontextmanager
    async def channel(self, candidate: Candidate) -> AsyncIterator[grpc.aio.Channel]:
        """A gRPC channel to `candidate` for calls other than ModelInfer (streams): the
        identity-pinned TLS channel the router keeps (left open for reuse; refused as
        UNAVAILABLE when the server does not prove the candidate's peer id), or, when the
        router dials plaintext, a channel closed after use."""
        channels = self.channels
        if channels is not None:
            yield await channels.channel(candidate.peer, candidate.endpoint)
            return
        async with grpc.aio.insecure_channel(candidate.endpoint) as channel:
            yield channel

    def resolve(self, model: str) -> Digest:
        """The digest to route `model` to, as the resolver decides.

        `name@sha256:...` names it. With the default resolver a tag resolves to one of
        the targets its owner signed (the one most providers serve: a rollout switches
        clients once most providers have switched; ties: the newest), a bare name to
        its signed `latest` tag, a built-in to the digest the release pins; anything
        else raises NoProviderError, whatever providers advertise.
        """
        ref = ModelRef.parse(model)
        if ref.digest is not None:
            return ref.digest
        return self._resolver(self.view, ref)

    async def close(self) -> None:
        """Close the default caller's channels (an injected caller is its owner's)."""
        if self._grpc is not None:
            await self._grpc.close()

    def candidates(self, digest: Digest, *, items: int = 1, deadline: float | None = None,
                   options: RoutingOptions = RoutingOptions(),
                   tried: frozenset[PeerId] = frozenset(),
                   explore: bool = False,
                   refused: frozenset[PeerId] | None = None,
                   refusals: int = 0,
                   generation: TokenCost | None = None) -> list[Candidate]:
        """Providers of `digest` in the order `send` would try them (nothing is sent).

        The gateway forwards its other OIP calls, and the SDK asks for metadata, through
        this one choice; NoProviderError when nobody fits. `explore`: a first attempt,
        which may go to a provider not measured lately (`SchedulerConfig.explore`).
        `refused`: for an attempt that providers may refuse (`choose_attempt`), the
        peers in `tried` that refused it so far (and did not fail it since), after
        `refusals` refusals; None: no admission (a plain choice). `generation`: a
        generation stream's token cost: providers are estimated by tokens
        (swarm/scheduler/_generation.py); open it with `watch_stream`.
        """
        request = Request(digest=digest, items=items, deadline=deadline,
                          max_price=options.max_price, preference=options.preference,
                          exclude=tried, explore=explore, generation=generation)
        config = self._config if options.stake_ok is None else dataclasses.replace(
            self._config, stake_ok=options.stake_ok)
        now = self._clock.monotonic()
        if refused is None:
            return choose(self.view, request, self.observations, self._rng, now, config)
        return choose_attempt(self.view, request, self.observations, self._rng, now,
                              config, refused, refusals)

    def watch_stream(self, candidate: Candidate, digest: Digest, cost: TokenCost) -> StreamWatch:
        """Count a generation stream to `candidate` as open, and learn its tokens/s
        (swarm/routing/_streams.py); `close()` the watch when the stream ends. Streams are
        never hedged."""
        return StreamWatch(self.observations, self._clock, candidate.peer, digest, cost,
                           self._config.generation, candidate.first_token)

    @staticmethod
    def _paid(request: pb.ModelInferRequest, candidate: Candidate, items: int,
              options: RoutingOptions) -> pb.ModelInferRequest:
        if options.pay is None:
            return request
        params = options.pay(candidate, items)
        if not params:
            return request
        paid = pb.ModelInferRequest()
        paid.CopyFrom(request)
        for key, value in params.items():
            paid.parameters[key].string_param = value
        return paid

    def _start(self, request: pb.ModelInferRequest, candidate: Candidate, items: int,
               deadline: float) -> _Attempt:
        now = self._clock.monotonic()
        self.observations.start(candidate.peer, now, items)
        call = self._call(candidate, request, max(0.0, deadline - now))
        return _Attempt(candidate, now, asyncio.ensure_future(call))

    def _finish(self, attempt: _Attempt, digest: Digest,
                items: int) -> pb.ModelInferResponse | InferenceError | _Refused:
        """Record the outcome of a completed attempt; the response, or the error."""
        now = self._clock.monotonic()
        peer = attempt.candidate.peer
        self.observations.finish(peer, now)
        try:
            response = attempt.task.result()
        except OverloadedError as exc:
            if attempt.candidate.admissible and exc.queue_depth is not None:
                self.observations.record_refusal(peer, exc.queue_depth, now)
                return _Refused(exc)
            self.observations.record_failure(peer, Failure.OVERLOADED, now)
            return exc
        except InferenceError as exc:
            kind = Failure.from_code(exc.code)
            if kind is not None:
                self.observations.record_failure(peer, kind, now)
            return exc
        params = response.parameters
        queued = params["swarm_queue_us"].int64_param / 1e6 if "swarm_queue_us" in params else None
        depth = params["swarm_queue_depth"].int64_param if "swarm_queue_depth" in params else None
        service = None
        if "swarm_compute_us" in params:
            batch = max(1, params["swarm_batch_items"].int64_param) if (
                "swarm_batch_items" in params) else items
            service = params["swarm_compute_us"].int64_param / 1e6 * items / batch
        self.observations.record_success(
            peer, now - attempt.started, items, now, expected=attempt.candidate.expected_latency,
            queued=queued, service=service, depth=depth, digest=digest)
        return response

    async def send(self, request: pb.ModelInferRequest, digest: Digest, items: int,
                   options: RoutingOptions, *,
                   exclude: frozenset[PeerId] = frozenset()) -> Routed:
        """Route one request; raises NoProviderError, DeadlineExceededError or the last error.
        `exclude`: providers not to ask (a verification copy goes to someone else)."""
        clock = self._clock
        started = clock.monotonic()
        deadline = started + options.timeout
        tried: set[PeerId] = set(exclude)
        refused: set[PeerId] = set()  # refused this request and did not fail it since
        refusals = 0
        admission = self._config.max_refusals > 0
        running: list[_Attempt] = []
        last_error: InferenceError | None = None
        attempts = 0
        hedged = False  # decided: at most one hedge per request
        hedge_sent = False
        try:
            while True:
                if not running:
                    if (attempts - refusals >= options.max_attempts
                            or clock.monotonic() >= deadline):
                        break
                    try:
                        candidates = self.candidates(
                            digest, items=items, deadline=deadline, options=options,
                            tried=frozenset(tried), explore=not attempts,
                            refused=frozenset(refused) if admission else None,
                            refusals=refusals)
                    except NoProviderError:
                        if last_error is not None:
                            break
                        raise
                    self.explorations += candidates[0].explored
                    running.append(self._start(self._paid(request, candidates[0], items, options),
                                               candidates[0], items, deadline))
                    tried.add(candidates[0].peer)
                    attempts += 1
                primary = running[0]
                hedge_at = None
                if (options.hedge and not hedged and len(running) == 1
                        and attempts - refusals < options.max_attempts):
                    p95 = self.observations.p95(primary.candidate.peer)
                    if p95 is None:  # too few samples of this peer: judge by all of them
                        p95 = self.observations.overall_p95()
                    if p95 is not None:
                        hedge_at = primary.started + p95
                wait = None if hedge_at is None else max(0.0, hedge_at - clock.monotonic())
                done, _ = await asyncio.wait([a.task for a in running], timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:  # slower than its p95: hedge on the next candidate
                    hedged = True
                    try:
                        candidates = self.candidates(
                            digest, items=items, deadline=deadline, options=options,
                            tried=frozenset(tried),
                            refused=frozenset(refused) if admission else None,
                            refusals=refusals)
                    except NoProviderError:
                        continue
                    running.append(self._start(self._paid(request, candidates[0], items, options),
                                               candidates[0], items, deadline))
                    tried.add(candidates[0].peer)
                    attempts += 1
                    hedge_sent = True
                    self.hedges += 1
                    continue
                for attempt in [a for a in running if a.task in done]:
                    running.remove(attempt)
                    outcome = self._finish(attempt, digest, items)
                    if isinstance(outcome, pb.ModelInferResponse):
                        c = attempt.candidate
                        return Routed(outcome, c.peer, c.endpoint, c.price, attempts,
                                      clock.monotonic() - started, hedge_sent)
                    if isinstance(outcome, _Refused):
                        if options.unpay is not None:
                            options.unpay(attempt.candidate, items)
                        refused.add(attempt.candidate.peer)
                        refusals += 1
                        self.refusals += 1
                        last_error = outcome.error
                        continue
                    refused.discard(attempt.candidate.peer)  # failed: not to be tried again
                    if outcome.code not in _RETRYABLE:
                        raise outcome
                    last_error = outcome
        finally:
            for attempt in running:  # the hedge that lost, or everything on error
                attempt.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, InferenceError):
                    await attempt.task
                self.observations.finish(attempt.candidate.peer, clock.monotonic())
        if clock.monotonic() >= deadline:
            raise DeadlineExceededError(
                f"deadline of {options.timeout:g}s passed after {attempts} attempt(s)"
                + (f"; last error: {last_error}" if last_error else ""))
        assert last_error is not None
        raise last_error
