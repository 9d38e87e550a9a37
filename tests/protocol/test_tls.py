"""Identity-bound TLS: certificates prove a peer id; pinned channels refuse impostors."""

from __future__ import annotations

import datetime
import logging

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from swarm._errors import IntegrityError, UnavailableError
from swarm.protocol import Identity
from swarm.protocol._tls import (
    EXTENSION_OID,
    NodeCertificate,
    PeerChannels,
    make_certificate,
    peer_of_certificate,
)


def test_certificate_proves_its_identity() -> None:
    identity = Identity.generate()
    cert, _ = make_certificate(identity, hosts=["10.0.0.5", "node.example"])
    assert peer_of_certificate(cert) == identity.peer_id
    parsed = x509.load_pem_x509_certificate(cert)
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node.example" in names.get_values_for_type(x509.DNSName)


def test_forged_extension_is_refused() -> None:
    # An attacker copies X's extension into a certificate for its own key.
    victim, attacker = Identity.generate(), Identity.generate()
    victim_cert = x509.load_pem_x509_certificate(make_certificate(victim)[0])
    ext = victim_cert.extensions.get_extension_for_oid(EXTENSION_OID).value
    own, _ = make_certificate(attacker)
    parsed = x509.load_pem_x509_certificate(own)
    assert ext != parsed.extensions.get_extension_for_oid(EXTENSION_OID).value
    key = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateBuilder().subject_name(parsed.subject).issuer_name(parsed.subject)
              .public_key(key.public_key()).serial_number(1)
              .not_valid_before(parsed.not_valid_before_utc)
              .not_valid_after(parsed.not_valid_after_utc)
              .add_extension(ext, critical=False).sign(key, hashes.SHA256()))
    with pytest.raises(IntegrityError, match="not signed by its identity"):
        peer_of_certificate(forged.public_bytes(Encoding.PEM))


def test_garbage_and_expired_certificates_are_refused() -> None:
    with pytest.raises(IntegrityError):
        peer_of_certificate(b"\x30\x03\x02\x01\x00")
    identity = Identity.generate()
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=90)
    cert, _ = make_certificate(identity, now=old)
    with pytest.raises(IntegrityError, match="not valid now"):
        peer_of_certificate(cert)


def test_certificate_rotates_without_changing_identity(tmp_path) -> None:
    identity = Identity.generate()
    first = NodeCertificate.load_or_create(tmp_path, identity)
    assert NodeCertificate.load_or_create(tmp_path, identity).cert_pem == first.cert_pem
    assert (first.key_path.stat().st_mode & 0o077) == 0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=8)
    rotated = NodeCertificate.load_or_create(tmp_path, identity, now=later)
    assert rotated.cert_pem != first.cert_pem
    assert peer_of_certificate(rotated.cert_pem, now=later) == identity.peer_id


async def _serve(certificate: NodeCertificate) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials([(certificate.key_pem, certificate.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_client_refuses_a_server_holding_another_key(tmp_path, caplog) -> None:
    expected, impostor = Identity.generate(), Identity.generate()
    server, address = await _serve(NodeCertificate.load_or_create(tmp_path, impostor))
    channels = PeerChannels()
    try:
        with caplog.at_level(logging.WARNING, logger="swarm.tls"):
            for _ in range(2):
                with pytest.raises(UnavailableError, match=str(impostor.peer_id)):
                    await channels.channel(expected.peer_id, address)
        assert channels.refused == 2
        assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1
        # The genuine peer at the same address is accepted and answers over TLS.
        channel = await channels.channel(impostor.peer_id, address)
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channels.close()
        await server.stop(None)


async def test_plaintext_client_cannot_talk_to_the_tls_port(tmp_path) -> None:
    server, address = await _serve(NodeCertificate.load_or_create(tmp_path, Identity.generate()))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await server.stop(None)


async def test_a_restarted_peer_with_a_new_certificate_is_pinned_anew(tmp_path) -> None:
    identity = Identity.generate()
    first = NodeCertificate.load_or_create(tmp_path / "a", identity)
    server, address = await _serve(first)
    channels = PeerChannels()
    try:
        stub = health_pb2_grpc.HealthStub(await channels.channel(identity.peer_id, address))
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await server.stop(None)
        # The same peer comes back on the same port with a rotated certificate.
        second = NodeCertificate.load_or_create(tmp_path / "b", identity)
        assert second.cert_pem != first.cert_pem
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_secure_port(address, grpc.ssl_server_credentials(
            [(second.key_pem, second.cert_pem)]))
        await server.start()
        with pytest.raises(grpc.aio.AioRpcError):  # the old pin fails the handshake
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        stub = health_pb2_grpc.HealthStub(await channels.channel(identity.peer_id, address))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert channels.refused == 0
    finally:
        await channels.close()
        await server.stop(None)
