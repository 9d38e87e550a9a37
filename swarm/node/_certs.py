"""The certificate a node's TLS listeners serve (identity-bound, or the operator's),
and its rotation on a schedule while the node runs."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from swarm._errors import ConfigError
from swarm.node._config import NodeConfig
from swarm.protocol import Identity, NodeCertificate

__all__ = ["ROTATE_AFTER", "CertificateRotation", "load_certificate"]

log = logging.getLogger("swarm.node")

# Age at which an identity-bound certificate is replaced (certificates live twice that).
ROTATE_AFTER = datetime.timedelta(days=7)


def load_certificate(config: NodeConfig, identity: Identity, *,
                     now: datetime.datetime | None = None) -> NodeCertificate:
    """--tls-cert/--tls-key when given (both), else the data dir's identity-bound
    certificate (made, or rotated when older than a week, here)."""
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise ConfigError("give --tls-cert and --tls-key together")
        return NodeCertificate.operator(config.tls_cert.expanduser(),
                                        config.tls_key.expanduser())
    hosts = [h for h in (config.advertise_host, config.listen_host) if h]
    return NodeCertificate.load_or_create(config.data_dir, identity, hosts=hosts,
                                          rotate_after=ROTATE_AFTER, now=now)


class CertificateRotation:
    """Replaces the node's identity-bound certificate once it is `ROTATE_AFTER` old,
    without a restart: gRPC asks `grpc_fetcher` before every new handshake, and the HTTP
    listeners' contexts load the new pair. The identity (peer id) never changes; pinned
    clients refetch the certificate after their next handshake fails."""

    def __init__(self, config: NodeConfig, identity: Identity, current: NodeCertificate,
                 *, now: Any = None) -> None:
        self._config = config
        self._identity = identity
        self.current = current
        self._now = now or (lambda: datetime.datetime.now(datetime.UTC))
        self._lock = threading.Lock()
        self.contexts: list[Any] = []  # ssl.SSLContext of the HTTP listeners
        self.rotations = 0

    def due(self) -> bool:
        return (self.current.identity_bound
                and self._now() - self.current.created >= ROTATE_AFTER)

    def rotate_if_due(self) -> bool:
        """Make (and start serving) a fresh certificate if the current one is due."""
        if not self.due():
            return False
        with self._lock:
            if not self.due():
                return False
            self.current = load_certificate(self._config, self._identity, now=self._now())
            for context in self.contexts:
                context.load_cert_chain(self.current.cert_path, self.current.key_path)
            self.rotations += 1
        log.info("TLS certificate rotated", extra={"peer": str(self._identity.peer_id)})
        return True

    def grpc_credentials(self) -> Any:
        """Server credentials that pick up rotations at the next handshake."""
        import grpc

        def configuration() -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(self.current.key_pem, self.current.cert_pem)])

        def fetcher() -> Any:
            return configuration() if self.rotate_if_due() else None

        return grpc.dynamic_ssl_server_credentials(configuration(), fetcher)
