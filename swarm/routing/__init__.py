"""The Router: sending one request to providers chosen by the scheduler.

_router.py  Router (attempts within the deadline, retries on the next candidate, hedging
            past a provider's p95, observations fed back), RoutingOptions, Routed,
            tag/name resolution through signed records, FORWARDED
_status.py  the one table between gRPC status codes and Swarm's exceptions

Used by the SDK, the node's gateway and the simulator alike.
"""

from swarm.routing._router import FORWARDED, MAX_MESSAGE_BYTES, Routed, Router, RoutingOptions
from swarm.routing._status import error_from_rpc

__all__ = ["FORWARDED", "MAX_MESSAGE_BYTES", "Routed", "Router", "RoutingOptions", "error_from_rpc"]
