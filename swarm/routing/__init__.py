"""The Router: sending one request to providers chosen by the scheduler.

_router.py  Router (attempts within the deadline, retries on the next candidate, hedging
            past a provider's p95, observations fed back), RoutingOptions, Routed,
            FORWARDED; the Caller it sends through (GrpcCaller in production, a
            simulated one in simnet)
_names.py   what a model name means, through signed statements only: SignedNames (the
            default Resolver: owner-signed tags, release-pinned BUILTIN_DIGESTS; never
            advert counts), the Resolver and ProviderWeight hooks (stake plugs in there)
_streams.py StreamWatch: what one generation stream teaches the observations (open streams,
            tokens/s per provider and model; Router.watch_stream)
_status.py  error_from_rpc, status_of: grpc's side of the one status <-> error table
            (swarm._errors.STATUS); the admission header and depth trailer on the wire

Used by the SDK, the node's gateway and the simulator alike.
"""

from swarm.routing._names import (
    BUILTIN_DIGESTS,
    ProviderWeight,
    Resolver,
    SignedNames,
    SignedTags,
    one_per_provider,
)
from swarm.routing._router import (
    FORWARDED,
    MAX_MESSAGE_BYTES,
    Caller,
    GrpcCaller,
    Routed,
    Router,
    RoutingOptions,
)
from swarm.routing._status import ADMISSION_HEADER, DEPTH_TRAILER, error_from_rpc, status_of
from swarm.routing._streams import StreamWatch

__all__ = [
    "ADMISSION_HEADER",
    "BUILTIN_DIGESTS",
    "DEPTH_TRAILER",
    "FORWARDED",
    "MAX_MESSAGE_BYTES",
    "Caller",
    "GrpcCaller",
    "ProviderWeight",
    "Resolver",
    "Routed",
    "Router",
    "RoutingOptions",
    "SignedNames",
    "SignedTags",
    "StreamWatch",
    "error_from_rpc",
    "one_per_provider",
    "status_of",
]
