"""TLS bound to peer identities (the libp2p TLS handshake model) and pinned gRPC channels.

A node's TLS certificate is self-signed with a fresh ECDSA P-256 key and carries the
libp2p extension (OID 1.3.6.1.4.1.53594.1.1):

    SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }

`publicKey` is the node's identity key in libp2p's protobuf form, `signature` its Ed25519
signature over b"libp2p-tls-handshake:" + the certificate's SubjectPublicKeyInfo (DER).
Whoever holds the certificate's key is thereby the peer whose id the extension names;
the TLS key can rotate (restart, schedule) without touching the identity.

grpc python cannot run a custom verification callback, so a client that expects peer X
at an address first fetches the certificate the server presents (one asyncio TLS 1.3
handshake, no verification), checks that its extension names X (`peer_of_certificate`),
and then opens the gRPC channel with that exact certificate as its only root
(`grpc.ssl_channel_credentials(root_certificates=pem)` + `grpc.ssl_target_name_override`):
the gRPC handshake then succeeds only against the holder of that certificate's key.
`PeerChannels` caches the pin per (peer, address), refetches once a channel is in
TRANSIENT_FAILURE or after `forget` (a rotated certificate fails the pinned handshake),
counts refusals and logs each refused peer once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm._errors import ConfigError, IntegrityError, UnavailableError
from swarm._types import PeerId
from swarm.protocol._identity import Identity, peer_id_of, verify

__all__ = [
    "EXTENSION_OID",
    "SERVER_NAME",
    "NodeCertificate",
    "PeerChannels",
    "fetch_certificate",
    "make_certificate",
    "peer_of_certificate",
]

log = logging.getLogger("swarm.tls")

EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
_SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"
# The name every node certificate carries and pinned clients ask for (the pin, not the
# name, is what authenticates: the only root a client trusts is the certificate itself).
SERVER_NAME = "swarm-node.invalid"
MAX_CERTIFICATE_BYTES = 16 * 1024
# Peers already logged as refused, process-wide (the router and the registry of one node
# log a peer once between them); bounded: peer ids cost strangers nothing.
_LOGGED: set[PeerId] = set()
_MAX_LOGGED = 4096


# ---------------------------------------------------------------------------- DER helpers


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_read(data: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    """The body of the TLV at `offset` with `tag`, and the offset after it."""
    if offset + 2 > len(data) or data[offset] != tag:
        raise IntegrityError("malformed libp2p TLS extension")
    length, offset = data[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3 or offset + count > len(data):
            raise IntegrityError("malformed libp2p TLS extension")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise IntegrityError("malformed libp2p TLS extension")
    return data[offset:offset + length], offset + length


def _signed_key(identity: Identity, spki: bytes) -> bytes:
    signature = identity.sign(_SIGNATURE_PREFIX + spki)
    return _der(0x30, _der(0x04, _LIBP2P_ED25519_PREFIX + identity.public_key)
                + _der(0x04, signature))


# ---------------------------------------------------------------------------- certificates


def make_certificate(identity: Identity, *, hosts: Sequence[str] = (),
                     lifetime: datetime.timedelta = datetime.timedelta(days=30),
                     now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh TLS key and its identity-bound self-signed certificate: (cert PEM, key PEM).

    `hosts` (names or IP addresses) go into subjectAltName next to SERVER_NAME, localhost
    and the loopback addresses, so that foreign clients given this certificate as their
    root can also check the name they dialled.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    now = now or datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME), x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    for host in hosts:
        try:
            addresses.add(str(ipaddress.ip_address(host)))
        except ValueError:
            if host and x509.DNSName(host) not in names:
                names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)
              if not ipaddress.ip_address(a).is_unspecified]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.peer_id))])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.UnrecognizedExtension(EXTENSION_OID,
                                                      _signed_key(identity, spki)),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _load(data: bytes) -> x509.Certificate:
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise IntegrityError("TLS certificate is too large")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IntegrityError(f"not an X.509 certificate: {exc}") from exc


def peer_of_certificate(data: bytes, *, now: datetime.datetime | None = None) -> PeerId:
    """The peer id a certificate (PEM or DER) proves, or IntegrityError.

    Checks, as the libp2p spec asks: the certificate is valid now and self-signed, and
    the extension's identity key signed the certificate's public key.
    """
    cert = _load(data)
    now = now or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IntegrityError("TLS certificate is not valid now")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IntegrityError("TLS certificate is not self-signed") from exc
    try:
        ext = cert.extensions.get_extension_for_oid(EXTENSION_OID).value
    except x509.ExtensionNotFound as exc:
        raise IntegrityError("TLS certificate carries no peer identity") from exc
    assert isinstance(ext, x509.UnrecognizedExtension)
    body, end = _der_read(ext.value, 0, 0x30)
    if end != len(ext.value):
        raise IntegrityError("malformed libp2p TLS extension")
    public, offset = _der_read(body, 0, 0x04)
    signature, offset = _der_read(body, offset, 0x04)
    if offset != len(body):
        raise IntegrityError("malformed libp2p TLS extension")
    if len(public) != 36 or not public.startswith(_LIBP2P_ED25519_PREFIX):
        raise IntegrityError("TLS certificate identity is not an Ed25519 key")
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    if not verify(public[4:], signature, _SIGNATURE_PREFIX + spki):
        raise IntegrityError("TLS certificate key is not signed by its identity")
    return peer_id_of(public[4:])


@dataclass(frozen=True)
class NodeCertificate:
    """The certificate a node serves: (cert PEM, key PEM) and where they are on disk."""

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path
    # False for an operator's certificate (--tls-cert/--tls-key): it proves no peer id.
    identity_bound: bool = True

    @classmethod
    def load_or_create(cls, data_dir: Path, identity: Identity, *, hosts: Sequence[str] = (),
                       rotate_after: datetime.timedelta = datetime.timedelta(days=7),
                       now: datetime.datetime | None = None) -> NodeCertificate:
        """The data dir's identity-bound certificate, made anew when missing, not this
        identity's, or older than `rotate_after` (the identity never changes)."""
        now = now or datetime.datetime.now(datetime.UTC)
        tls_dir = data_dir.expanduser() / "tls"
        cert_path, key_path = tls_dir / "node.crt", tls_dir / "node.key"
        with contextlib.suppress(OSError, IntegrityError):
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            cert = _load(cert_pem)
            fresh = now - cert.not_valid_before_utc < rotate_after + datetime.timedelta(hours=1)
            if fresh and peer_of_certificate(cert_pem, now=now) == identity.peer_id:
                return cls(cert_pem, key_pem, cert_path, key_path)
        cert_pem, key_pem = make_certificate(identity, hosts=hosts, now=now,
                                             lifetime=rotate_after * 2 + datetime.timedelta(days=1))
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        return cls(cert_pem, key_pem, cert_path, key_path)

    @classmethod
    def operator(cls, cert_path: Path, key_path: Path) -> NodeCertificate:
        """An operator's certificate and key (PEM files), checked to belong together."""
        try:
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load --tls-cert/--tls-key: {exc}") from exc
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
                != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
            raise ConfigError(f"{key_path} is not the key of {cert_path}")
        return cls(cert_pem, key_pem, cert_path, key_path, identity_bound=False)

    @property
    def created(self) -> datetime.datetime:
        """When the certificate was made (its notBefore is backdated an hour)."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.not_valid_before_utc + datetime.timedelta(hours=1)

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.3-only server context (for the HTTP listeners)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- client side


async def fetch_certificate(address: str, *, timeout: float = 5.0) -> bytes:
    """The certificate (DER) the TLS server at host:port presents (TLS 1.3, unverified:
    the caller checks it with `peer_of_certificate` before trusting it)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=SERVER_NAME),
            timeout)
    except (OSError, ValueError, TimeoutError, ssl.SSLError) as exc:
        raise UnavailableError(f"TLS handshake with {address} failed: {exc}",
                               code="UNAVAILABLE") from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        # No close_notify exchange: gRPC servers do not answer it (a graceful close
        # would wait for the SSL shutdown timeout).
        writer.transport.abort()
    if not der:
        raise UnavailableError(f"{address} presented no TLS certificate", code="UNAVAILABLE")
    return bytes(der)


# How long calls in flight on a replaced channel may finish before it closes.
_RETIRE_GRACE = 30.0


class PeerChannels:
    """gRPC channels pinned to the certificate a peer proves it holds.

    `channel(peer, address)` returns a cached channel whose only trusted root is the
    certificate fetched from `address` and verified to name `peer`; a server holding
    another key is refused (UnavailableError, `refused` counts it, logged once per peer).
    `forget(address)` drops the pin after a transport failure so that a rotated
    certificate is fetched anew.
    """

    def __init__(self, *, options: Sequence[tuple[str, Any]] = (), timeout: float = 5.0) -> None:
        import grpc

        self._grpc = grpc
        self._options = list(options)
        self._timeout = timeout
        self._channels: dict[tuple[PeerId, str], Any] = {}
        self._locks: dict[tuple[PeerId, str], asyncio.Lock] = {}
        # Channels replaced while calls may be in flight on them: closed with a grace period
        # in the background (closing at once would cancel those calls).
        self._retiring: dict[asyncio.Task[None], Any] = {}
        # Handshakes refused because the server was not the expected peer.
        self.refused = 0

    def _retire(self, channel: Any) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(_RETIRE_GRACE))
        self._retiring[task] = channel
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def channel(self, peer: PeerId, address: str) -> Any:
        key = (peer, address)
        channel = self._channels.get(key)
        if channel is not None:
            if channel.get_state() != self._grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return channel
            # Its handshakes fail: perhaps a rotated certificate. Pin it anew.
            retired = self._channels.pop(key, None)
            if retired is not None:
                self._retire(retired)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            channel = self._channels.get(key)
            if channel is None:
                der = await fetch_certificate(address, timeout=self._timeout)
                self.check(peer, address, der)
                pem = x509.load_der_x509_certificate(der).public_bytes(
                    serialization.Encoding.PEM)
                credentials = self._grpc.ssl_channel_credentials(root_certificates=pem)
                channel = self._grpc.aio.secure_channel(
                    address, credentials,
                    options=[*self._options, ("grpc.ssl_target_name_override", SERVER_NAME)])
                self._channels[key] = channel
        return channel

    def check(self, peer: PeerId, address: str, der: bytes) -> None:
        """Raise UnavailableError unless `der` proves `peer` (counted, logged once)."""
        try:
            found: PeerId | str = peer_of_certificate(der)
        except IntegrityError as exc:
            found = f"no valid identity ({exc})"
        if found == peer:
            return
        self.refused += 1
        if peer not in _LOGGED:
            if len(_LOGGED) >= _MAX_LOGGED:
                _LOGGED.clear()
            _LOGGED.add(peer)
            log.warning("refused %s at %s: its TLS certificate proves %s", peer, address, found,
                        extra={"peer": str(peer), "endpoint": address})
        raise UnavailableError(f"{address} is not {peer}: its TLS certificate proves {found}",
                               code="UNAVAILABLE")

    async def forget(self, address: str) -> None:
        for key in [k for k in self._channels if k[1] == address]:
            self._retire(self._channels.pop(key))

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
        retiring, self._retiring = dict(self._retiring), {}
        for task, channel in retiring.items():
            task.cancel()
            await channel.close()
        await asyncio.gather(*retiring, return_exceptions=True)
