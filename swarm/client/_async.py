"""AsyncClient: the SDK's core, on grpc.aio.

Two modes: `AsyncClient("host:port")` talks to one node directly;
`AsyncClient(bootstrap=[multiaddr])` joins the swarm as a light peer (it serves
nothing), learns the peer view from gossip, and routes every call through the
scheduler (swarm.routing.Router): no central load balancer. Joining pulls the
peers' snapshots of adverts and tag records first, so the first request already
sees every provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm._errors import (
    ClosedError,
    ConfigError,
    InferenceError,
    InvalidInputError,
    NoProviderError,
    SwarmError,
    UnavailableError,
    first_failure,
)
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest, PeerId
from swarm.client._convert import build_request, decode_response, to_numpy
from swarm.client._generate import (
    RESUME_ATTEMPTS,
    GenerationChunk,
    GenerationOptions,
    generation_request,
    stream_text,
    token_cost,
)
from swarm.client._stakes import Payer, StakeBook, bootstrap_peers
from swarm.client._types import ModelInfo, TensorInfo
from swarm.client._verify import DEFAULT_VERIFY_FRACTION, Verifier, send_verified
from swarm.protocol import (
    Identity,
    LightPeer,
    PeerChannels,
    ResponseSignature,
    verify_response,
)
from swarm.registry import RegistryAgent, RegistryConfig, owner_keys
from swarm.routing import Routed, Router, RoutingOptions, error_from_rpc
from swarm.scheduler import Failure, Preference

__all__ = ["AsyncClient"]

DEFAULT_EMBED_MODEL = "builtin/minilm"
MAX_MESSAGE_BYTES = 64 << 20
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
_METADATA_ATTEMPTS = 4  # providers asked for a model's metadata
_JOIN_SAMPLE = 0.05  # seconds between looks for a provider while joining

Inputs = Any  # one array-like, or a mapping of input name -> array-like


class AsyncClient:
    """An SDK client: `AsyncClient("127.0.0.1:7070")` or `AsyncClient(bootstrap=[ADDR])`.

    `infer(model, x)` takes one array (single-input models) or a dict of named
    arrays, and returns one array (single-output models) or a dict. In swarm mode
    each call may set `max_price` (micro-units per request), `preference`
    ("latency", "price" or a latency weight in [0, 1]) and `timeout`; the client's
    own settings are the defaults. `clock` stands in for the system clock (tests).

    `expect_peer` (a peer id) makes a node connection TLS, pinned to the certificate
    that peer proves it holds (the node's TLS port): a server holding another key is
    refused with UnavailableError. Swarm mode always dials providers this way.

    `verify=True` checks the provider's signature over every response (request id,
    model digest, inputs, outputs; swarm.protocol.verify_response) and raises
    IntegrityError when it does not verify; the verified `ResponseSignature` is kept on
    `Routed.signature` and in `last_signature` (evidence for staking).

    In swarm mode, `verify_fraction` of requests (default 0.02, drawn from `rng`) also go to
    a second provider, and on a mismatch to a third; the outvoted provider's signed response
    becomes FaultEvidence handed to `report(wire)` (an async callable: the node's ledger),
    and the majority's answer is returned (swarm.client._verify). Every request then carries
    a fresh random id, so a verification copy looks like any other request. `verifier`
    replaces these three with a fully configured Verifier (chain id, ledger heads, manifest
    tolerances, eligibility).
    """

    def __init__(self, address: str | None = None, *, bootstrap: Sequence[str] = (),
                 timeout: float | None = 30.0, max_price: float | None = None,
                 preference: str | float | Preference = "latency", hedge: bool = True,
                 peer: LightPeer | None = None, join_timeout: float = 15.0,
                 allowlist: Mapping[str, Iterable[bytes | str]] | None = None,
                 clock: Clock = SYSTEM_CLOCK, expect_peer: str | None = None,
                 verify: bool = False, verify_fraction: float = DEFAULT_VERIFY_FRACTION,
                 rng: random.Random | None = None,
                 report: Callable[[bytes], Awaitable[object]] | None = None,
                 verifier: Verifier | None = None, min_stake: int = 0,
                 wallet: Identity | str | Path | None = None, deposit: int = 100_000) -> None:
        if bool(address) == bool(bootstrap or peer):
            raise ConfigError("give a node address, or bootstrap addresses to join the swarm")
        self.address = address or ""
        self.timeout = timeout
        self._routing = RoutingOptions(max_price=max_price, preference=_preference(preference),
                                       timeout=timeout or 30.0, hedge=hedge)
        self._join_timeout = join_timeout
        self._clock = clock  # joins, deadlines and routing read it; a given `peer` has its own
        self._peer = peer if peer is not None else (
            LightPeer.libp2p(bootstrap, clock=clock) if bootstrap else None)
        self._bootstrap_peers = bootstrap_peers(bootstrap)
        self._router: Router | None = None
        # Namespace -> publisher keys (Ed25519, raw or hex as `swarm model key` prints)
        # that may move its tags; namespaces not listed are bound to the first publisher
        # seen (trust on first use), as on nodes.
        self._allowlist = {ns: owner_keys(keys) for ns, keys in (allowlist or {}).items()}
        self._tags: RegistryAgent | None = None
        self._tags_task: asyncio.Task[None] | None = None
        self._started = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._expect = PeerId(expect_peer) if expect_peer else None
        self.verify = verify
        # Swarm mode: route only to providers whose bonded stake (on the ledger of the nodes
        # joined through, never their own word) is at least max(network minimum, this).
        if min_stake < 0:
            raise ConfigError("min_stake must be >= 0")
        self.min_stake = min_stake
        self._stakes: StakeBook | None = None
        # Swarm mode: pay providers that charge, from this key's account (an Identity or
        # the path of an identity key file), depositing `deposit` per provider at a time.
        if isinstance(wallet, str | Path):
            wallet = Identity.load(Path(wallet).expanduser())
        if wallet is not None and not bootstrap and peer is None:
            raise ConfigError("paying (wallet=) needs swarm mode (bootstrap=...)")
        if deposit < 1:
            raise ConfigError("deposit must be >= 1")
        self._wallet = wallet
        self._deposit = deposit
        self._payer: Payer | None = None
        self.verifier = verifier or Verifier(fraction=verify_fraction,
                                             rng=rng or random.Random(), report=report)
        # The last verified response signature (verify=True).
        self.last_signature: ResponseSignature | None = None
        self._channels: PeerChannels | None = None  # pinned TLS (expect_peer)
        self._own_channels = True
        if address and self._expect is not None:
            self._channels = PeerChannels(options=_CHANNEL_OPTIONS)
        elif address:
            self._channel = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ])
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._info: dict[str, ModelInfo] = {}
        self._closed = False
        self._join_deadline = 0.0

    @property
    def in_swarm(self) -> bool:
        return self._peer is not None

    @property
    def router(self) -> Router:
        if self._router is None:
            raise ConfigError("this client talks to one node, not to the swarm")
        return self._router

    @property
    def owed(self) -> dict[PeerId, int]:
        """With a wallet: the receipt total signed to each provider so far (what its claims
        may reach); empty without one."""
        return dict(self._payer.cumulative) if self._payer is not None else {}

    async def start(self) -> None:
        """Join the swarm (swarm mode; called on first use). Idempotent.

        Returns once the snapshots of adverts and tag records from the peers we
        connected to are in (the view is then the swarm's current state), or after
        `join_timeout` if none came (the view is then whatever gossip brought).
        """
        if self._closed:
            raise ClosedError("client is closed")
        async with self._started:
            if self._peer is None or self._router is not None:
                return
            await self._peer.start()
            peer = self._peer
            assert peer.gossip is not None
            # Tags resolve through the owners' signed records (gossip, and a sync from a
            # node), never through what providers claim in their adverts.
            self._tags = RegistryAgent(
                peer.gossip, None, view=lambda: peer.view,
                config=RegistryConfig(allowlist=self._allowlist, volunteer=False),
                clock=self._clock)
            self._tags_task = asyncio.create_task(self._tags.run(), name="client-tags")
            self._router = Router(lambda: peer.view, signed_tags=self._tags.signed_targets,
                                  clock=self._clock)
            self._stakes = StakeBook(self._bootstrap_peers, lambda: peer.view,
                                     self._router.channels or PeerChannels(), self._clock)
            if self._wallet is not None:
                self._payer = Payer(self._wallet, self._stakes, deposit=self._deposit)
            if self.verifier.report is None:  # evidence goes to the nodes we joined through
                self.verifier.report = self._stakes.submit
                self.verifier.ledger = self._stakes.chain_and_seq
            self._join_deadline = self._clock.monotonic() + self._join_timeout
            assert peer.membership is not None
            await wait_within(self._clock, asyncio.gather(
                peer.membership.synced.wait(), self._tags.synced.wait()), self._join_timeout)

    def _synced(self) -> bool:
        """Both snapshots (adverts, tags) are in: the view is as complete as peers know it."""
        membership = self._peer.membership if self._peer is not None else None
        return (membership is not None and membership.synced.is_set()
                and self._tags is not None and self._tags.synced.is_set())

    async def _provider_of(self, model: str) -> Digest:
        """The digest to route `model` to, once some provider of it is in the view.

        After the join's snapshots are in, the answer is immediate: a name (or pinned
        version) nobody serves fails at once, saying what the swarm does serve. Without
        them, the view fills by gossip: wait for a provider until join_timeout.
        """
        await self.start()
        router = self.router
        while True:
            try:
                digest = router.resolve(model)
                if router.view.providers(digest):
                    return digest
                failure = NoProviderError(f"no provider serves {model}")
            except NoProviderError as exc:
                failure = exc
            if self._synced() or self._clock.monotonic() >= self._join_deadline:
                raise NoProviderError(f"{failure}; {router.view.describe_offers()}",
                                      reasons=failure.reasons,
                                      cheapest=failure.cheapest) from failure
            await self._clock.sleep(_JOIN_SAMPLE)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            await self._channel.close()
        if self._channels is not None and self._own_channels:
            await self._channels.close()
        if self._router is not None:
            await self._router.close()
        if self._tags is not None and self._tags_task is not None:
            self._tags.stop()
            # A failure of the tag tracker is no reason for close() to fail.
            with contextlib.suppress(Exception):
                await self._tags_task
        if self._peer is not None:
            await self._peer.close()

    async def _direct(self) -> pb_grpc.GRPCInferenceServiceStub:
        if self._stub is None and self._channels is not None and self._expect is not None:
            channel = await self._channels.channel(self._expect, self.address)
            self._stub = pb_grpc.GRPCInferenceServiceStub(channel)
        if self._stub is None:
            raise ConfigError("no direct node connection in swarm mode")
        return self._stub

    async def _rpc(self, method: Any, request: Any, target: str, timeout: float | None) -> Any:
        if self._closed:
            raise ClosedError("client is closed")
        try:
            return await method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address} {target}") from exc

    async def metadata(self, model: str, *, version: str = "") -> ModelInfo:
        """Inputs, outputs, versions and max batch size of a model."""
        key = f"{model}\0{version}"
        info = self._info.get(key)
        if info is not None:
            return info
        if self.in_swarm:
            return await self._swarm_metadata(model, version)
        stub = await self._direct()
        meta, config = await asyncio.gather(
            self._rpc(stub.ModelMetadata,
                      pb.ModelMetadataRequest(name=model, version=version), model, None),
            self._rpc(stub.ModelConfig,
                      pb.ModelConfigRequest(name=model, version=version), model, None),
        )
        info = ModelInfo(
            name=meta.name,
            versions=tuple(meta.versions),
            platform=meta.platform,
            inputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs),
            outputs=tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs),
            max_batch_size=config.config.max_batch_size,
        )
        self._info[key] = info
        return info

    async def _swarm_metadata(self, model: str, version: str) -> ModelInfo:
        digest = await self._provider_of(model if not version else f"{model.split('@')[0]}@{version}")
        # The scheduler's choice, as for inference: a reachable, non-draining provider
        # (never an endpoint-less or draining advert); NoProviderError says what is served.
        # A provider that cannot prove its advert's peer id (or is unreachable) is skipped.
        last: InferenceError | None = None
        for best in self.router.candidates(digest)[:_METADATA_ATTEMPTS]:
            entry = self.router.view.get(best.peer)
            offer = entry.advert.offer(digest) if entry is not None else None
            name = offer.name if offer is not None else model
            direct = AsyncClient(best.endpoint, timeout=self.timeout,
                                 expect_peer=str(best.peer))
            if self.router.channels is not None:  # share the router's pinned channels
                direct._channels, direct._own_channels = self.router.channels, False
            try:
                async with direct:
                    info = await direct.metadata(name, version=str(digest))
                break
            except UnavailableError as exc:
                last = exc
        else:
            assert last is not None  # candidates() returns at least one
            raise last
        self._info[f"{model}\0{version}"] = info
        return info

    async def models(self) -> list[ModelInfo]:
        """Models served (by the node, or by anyone in the swarm)."""
        if self.in_swarm:
            await self.start()
            await self._peer_settle()
            # Every advertised version by digest: a bare name means only what a signed
            # statement says (swarm.routing.SignedNames), and a listing names no winner.
            versions = sorted({f"{o.name}@{o.digest}" for e in self.router.view
                               for o in e.advert.models})
            return list(await asyncio.gather(*(self.metadata(v) for v in versions)))
        index = await self._rpc((await self._direct()).RepositoryIndex,
                                pb.RepositoryIndexRequest(ready=True), "models", None)
        names = sorted({m.name for m in index.models})
        return list(await asyncio.gather(*(self.metadata(n) for n in names)))

    async def _peer_settle(self) -> None:
        assert self._peer is not None
        await self._peer.settle(self._join_timeout, quiet=1.0)

    async def _named(self, model: str, version: str, inputs: Inputs) -> dict[str, np.ndarray]:
        """Name the inputs, and give a lone item (no batch dimension) a batch of one."""
        info = await self.metadata(model, version=version)
        if isinstance(inputs, Mapping):
            named = {str(k): to_numpy(v) for k, v in inputs.items()}
        elif len(info.inputs) != 1:
            names = ", ".join(t.name for t in info.inputs)
            raise InvalidInputError(f"{model} takes several inputs ({names}): pass a dict")
        else:
            named = {info.inputs[0].name: to_numpy(inputs)}
        specs = {t.name: t for t in info.inputs}
        out = {}
        for name, array in named.items():
            spec = specs.get(name)
            if spec is not None:
                if array.ndim == len(spec.shape) - 1:
                    array = array[np.newaxis]
                if spec.datatype == "FP32" and array.dtype == np.float64:
                    array = array.astype(np.float32)  # numpy's default float; the model's is FP32
            out[name] = array
        return out

    def _options(self, timeout: float | None, max_price: float | None,
                 preference: str | float | Preference | None) -> RoutingOptions:
        r = self._routing
        return RoutingOptions(
            max_price=r.max_price if max_price is None else max_price,
            preference=r.preference if preference is None else _preference(preference),
            timeout=r.timeout if timeout is None else timeout, hedge=r.hedge,
            max_attempts=r.max_attempts)

    async def infer_routed(self, model: str, inputs: Inputs, *, outputs: Sequence[str] = (),
                           timeout: float | None = None, max_price: float | None = None,
                           preference: str | float | Preference | None = None,
                           min_stake: int | None = None,
                           ) -> tuple[dict[str, np.ndarray], Routed]:
        """Swarm mode: the outputs and how the request was routed (provider, price, attempts)."""
        digest = await self._provider_of(model)
        named = await self._named(model, "", inputs)
        items = _items(named)
        name = model.split("@")[0].split(":")[0]
        request = build_request(name, named, version=str(digest), outputs=outputs)
        checking = self.verifier.fraction > 0
        if self.verify or checking:
            request.id = uuid.uuid4().hex  # what the signature binds the answer to
        options = self._options(timeout, max_price, preference)
        if self._stakes is not None:
            threshold = self.min_stake if min_stake is None else min_stake
            await self._stakes.refresh(threshold)
            options = dataclasses.replace(options, stake_ok=self._stakes.rule(threshold))
        if self._payer is not None:
            ok = options.stake_ok
            await self._payer.ensure([e for e in self.router.view.providers(digest)
                                      if ok is None or ok(e.peer_id)])
            options = dataclasses.replace(options, pay=self._payer.pay, unpay=self._payer.unpay)
        if checking:
            routed = await send_verified(self.router, request, digest, items, options,
                                         self.verifier)
        else:
            routed = await self.router.send(request, digest, items, options)
        if self.verify and routed.signature is not None:
            self.last_signature = routed.signature
        elif self.verify:
            signature = verify_response(request, routed.response, signer=routed.peer)
            routed = dataclasses.replace(routed, signature=signature)
            self.last_signature = signature
        return decode_response(routed.response), routed

    async def infer_raw(self, model: str, inputs: Inputs, *, version: str = "",
                        outputs: Sequence[str] = (), timeout: float | None = None,
                        max_price: float | None = None,
                        preference: str | float | Preference | None = None,
                        min_stake: int | None = None,
                        ) -> dict[str, np.ndarray]:
        """Like infer, but always returns the dict of outputs."""
        if self.in_swarm:
            target = f"{model}@{version}" if version else model
            result, _ = await self.infer_routed(target, inputs, outputs=outputs, timeout=timeout,
                                                max_price=max_price, preference=preference,
                                                min_stake=min_stake)
            return result
        named = await self._named(model, version, inputs)
        request = build_request(model, named, version=version, outputs=outputs)
        if self.verify:
            request.id = uuid.uuid4().hex
        response = await self._rpc((await self._direct()).ModelInfer, request, model, timeout)
        if self.verify:
            self.last_signature = verify_response(request, response, signer=self._expect)
        return decode_response(response)

    async def infer(self, model: str, inputs: Inputs, *, version: str = "",
                    outputs: Sequence[str] = (), timeout: float | None = None,
                    max_price: float | None = None,
                    preference: str | float | Preference | None = None,
                    min_stake: int | None = None,
                    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run `model` on `inputs`: an array for single-output models, else a dict.
        `min_stake` (swarm mode) raises the client's stake bar for this call."""
        result = await self.infer_raw(model, inputs, version=version, outputs=outputs,
                                      timeout=timeout, max_price=max_price,
                                      preference=preference, min_stake=min_stake)
        if len(result) == 1:
            return next(iter(result.values()))
        return result

    async def map(self, model: str, inputs: Iterable[Inputs], *, concurrency: int = 32,
                  timeout: float | None = None, max_price: float | None = None,
                  preference: str | float | Preference | None = None,
                  progress: Callable[[int], None] | None = None,
                  min_stake: int | None = None,
                  ) -> list[np.ndarray | dict[str, np.ndarray]]:
        """`infer` over many inputs at once (in swarm mode, spread over many providers).

        Results come back in input order; `progress(n)` is called as each one completes.
        """
        if concurrency < 1:
            raise InvalidInputError("concurrency must be >= 1")
        items = list(inputs)
        results: list[np.ndarray | dict[str, np.ndarray] | None] = [None] * len(items)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, x: Inputs) -> None:
            async with gate:
                results[i] = await self.infer(model, x, timeout=timeout, max_price=max_price,
                                              preference=preference, min_stake=min_stake)
            if progress is not None:
                progress(1)

        try:
            async with asyncio.TaskGroup() as tg:
                for i, x in enumerate(items):
                    tg.create_task(one(i, x))
        except* SwarmError as group:  # the first failure cancels the rest: raise it as itself
            raise first_failure(group) from None
        answered = [r for r in results if r is not None]
        if len(answered) < len(items):  # a task cancelled from outside the group: never silent
            raise UnavailableError(f"{len(items) - len(answered)} of {len(items)} requests "
                                   "ended without an answer")
        return answered

    def generate(self, model: str, prompt: str, *, max_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] = (), timeout: float | None = None) -> AsyncIterator[str]:
        """Complete `prompt` with a generative model: an async iterator of text chunks.

        Greedy by default (temperature 0). Leaving the loop early cancels the generation
        on the node. In swarm mode the scheduler picks the provider.
        """
        options = GenerationOptions(max_tokens, temperature, top_p, seed, tuple(stop))
        return self._generation(model, options, timeout, prompt=prompt)

    def chat(self, model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stop: Sequence[str] = (), timeout: float | None = None) -> AsyncIterator[str]:
        """The assistant's reply to `messages` ({"role", "content"}), as text chunks."""
        options = GenerationOptions(max_tokens, temperature, top_p, seed, tuple(stop))
        return self._generation(model, options, timeout, messages=list(messages))

    def chat_chunks(self, model: str, messages: Sequence[Mapping[str, str]], *,
                    max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int | None = None, stop: Sequence[str] = (),
                    timeout: float | None = None) -> AsyncGenerator[GenerationChunk, None]:
        """`chat`, chunk by chunk as the provider sent them: each GenerationChunk carries
        its text, the token ids behind it, the provider that sent it and, on the last,
        the finish reason (what a caller that measures streams needs)."""
        options = GenerationOptions(max_tokens, temperature, top_p, seed, tuple(stop))
        return self._chunks(model, options, timeout, messages=list(messages))

    async def _generation(self, model: str, options: GenerationOptions, timeout: float | None,
                          **what: Any) -> AsyncIterator[str]:
        chunks = self._chunks(model, options, timeout, **what)
        try:
            async for chunk in chunks:
                if chunk.text:
                    yield chunk.text
        finally:
            await chunks.aclose()

    async def _chunks(self, model: str, options: GenerationOptions, timeout: float | None,
                      **what: Any) -> AsyncGenerator[GenerationChunk, None]:
        if self._closed:
            raise ClosedError("client is closed")
        limit = timeout if timeout is not None else self.timeout
        if self._stub is not None:
            request = generation_request(model, options, **what)
            async for chunk in stream_text(self._stub, request, self.address, limit):
                yield chunk
            return
        # Swarm mode: a provider that fails mid-stream (UNAVAILABLE: it died, drained, the
        # network broke) is replaced by the next candidate, which prefills the prompt plus
        # the tokens already streamed (Petals replays inputs the same way): the caller's
        # text continues without loss or repeats.
        # The scheduler estimates providers by tokens (prompt + max_tokens; on a resume the
        # tokens streamed so far are prompt there), and learns each one's tokens/s from the
        # streams (Router.watch_stream). Streams are never hedged.
        digest = await self._provider_of(model)
        streamed: list[int] = []
        tried: set[PeerId] = set()
        failure: SwarmError = NoProviderError(f"no provider serves {model}")
        for _ in range(RESUME_ATTEMPTS):
            cost = token_cost(options, resume=streamed, **what)
            try:
                candidate = self.router.candidates(digest, tried=frozenset(tried),
                                                   explore=not tried, generation=cost)[0]
            except NoProviderError:
                break
            tried.add(candidate.peer)
            request = generation_request(model, options, version=str(digest), resume=streamed,
                                         **what)
            watch = self.router.watch_stream(candidate, digest, cost)
            finished = False
            try:
                async with self.router.channel(candidate) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    async for chunk in stream_text(stub, request, candidate.endpoint, limit):
                        streamed.extend(chunk.token_ids)
                        watch.received(len(chunk.token_ids))
                        finished = chunk.final
                        yield chunk
                        if chunk.final:
                            return
            except UnavailableError as exc:
                failure = exc
                watch.close(failure=Failure.UNAVAILABLE)
            finally:
                watch.close(finished=finished)
        raise failure

    async def embed(self, texts: Sequence[str], *, model: str = DEFAULT_EMBED_MODEL,
                    timeout: float | None = None, max_price: float | None = None,
                    preference: str | float | Preference | None = None) -> np.ndarray:
        """Sentence embeddings, one row per text (split into batches the model accepts)."""
        if isinstance(texts, str | bytes):
            raise InvalidInputError("embed takes a list of texts")
        if not texts:
            raise InvalidInputError("embed needs at least one text")
        info = await self.metadata(model)
        step = max(1, info.max_batch_size or len(texts))
        encoded = [t.encode() if isinstance(t, str) else bytes(t) for t in texts]
        chunks = [np.array(encoded[i : i + step], dtype=object)
                  for i in range(0, len(encoded), step)]
        parts = await asyncio.gather(*(self.infer(model, c, timeout=timeout, max_price=max_price,
                                                  preference=preference) for c in chunks))
        arrays = [p if isinstance(p, np.ndarray) else next(iter(p.values())) for p in parts]
        return np.concatenate(arrays)


def _preference(value: str | float | Preference) -> Preference:
    if isinstance(value, Preference):
        return value
    try:
        return Preference.parse(str(value))
    except ValueError as exc:
        raise InvalidInputError(f"preference must be latency, price or a weight in [0, 1]: "
                                f"{value!r}") from exc


def _items(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {int(a.shape[0]) if a.ndim else 1 for a in inputs.values()}
    return max(sizes) if sizes else 1
