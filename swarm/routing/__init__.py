"""The Router: sending one request to providers chosen by the scheduler.

_router.py  Router (attempts within the deadline, retries on the next candidate, hedging
            past a provider's p95, observations fed back), RoutingOptions, Routed,
            tag/name resolution through signed records, FORWARDED; the Caller it sends
            through (GrpcCaller in production, a simulated one in simnet)
_status.py  error_from_rpc, status_of: grpc's side of the one status <-> error table
            (swarm._errors.STATUS)

Used by the SDK, the node's gateway and the simulator alike.
"""

from swarm.routing._router import (
    FORWARDED,
    MAX_MESSAGE_BYTES,
    Caller,
    GrpcCaller,
    Routed,
    Router,
    RoutingOptions,
)
from swarm.routing._status import error_from_rpc, status_of

__all__ = [
    "FORWARDED",
    "MAX_MESSAGE_BYTES",
    "Caller",
    "GrpcCaller",
    "Routed",
    "Router",
    "RoutingOptions",
    "error_from_rpc",
    "status_of",
]
