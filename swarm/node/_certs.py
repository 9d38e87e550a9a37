"""The certificate a node's TLS listeners serve (identity-bound, or the operator's)."""

from __future__ import annotations

from swarm._errors import ConfigError
from swarm.node._config import NodeConfig
from swarm.protocol import Identity, NodeCertificate

__all__ = ["load_certificate"]


def load_certificate(config: NodeConfig, identity: Identity) -> NodeCertificate:
    """--tls-cert/--tls-key when given (both), else the data dir's identity-bound
    certificate (made, or rotated when older than a week, here)."""
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise ConfigError("give --tls-cert and --tls-key together")
        return NodeCertificate.operator(config.tls_cert.expanduser(),
                                        config.tls_key.expanduser())
    hosts = [h for h in (config.advertise_host, config.listen_host) if h]
    return NodeCertificate.load_or_create(config.data_dir, identity, hosts=hosts)
