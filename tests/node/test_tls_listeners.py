"""The node's listeners: TLS for everything beyond loopback, foreign clients over TLS.

tritonclient (ssl=True) and the openai client reach a node with the certificate that
`swarm-node cert` prints, or with an operator's certificate (--tls-cert/--tls-key).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as tc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swarm._types import PeerId
from swarm.node._builtins import MLP_DIMS
from swarm.node._cli import main as swarm_node
from swarm.node._runtime import Model
from swarm.protocol import Identity, PeerChannels, peer_of_certificate
from swarm.protocol._tls import fetch_certificate
from tests.conftest import NodeFactory


def cert_of(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> bytes:
    assert swarm_node(["cert", "--data-dir", str(data_dir)]) == 0
    return capsys.readouterr().out.encode()


def triton_infer(address: str, root: Path) -> np.ndarray:
    client = tc.InferenceServerClient(address, ssl=True, root_certificates=str(root))
    try:
        x = np.ones((2, MLP_DIMS[0]), np.float32)
        tensor = tc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        out: np.ndarray = client.infer("builtin/mlp", [tensor]).as_numpy("output")
        return out
    finally:
        client.close()


def test_cert_creates_the_identity_and_prints_a_certificate_bound_to_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = cert_of(tmp_path / "fresh", capsys)
    identity = Identity.load(tmp_path / "fresh" / "identity.key")
    assert peer_of_certificate(pem) == identity.peer_id
    assert cert_of(tmp_path / "fresh", capsys) == pem  # stable until rotated


async def test_tritonclient_with_ssl_and_the_printed_certificate(
        start_node: NodeFactory, mlp: Model, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with start_node([mlp]) as node:
        root = tmp_path / "node.pem"
        root.write_bytes(cert_of(node.config.data_dir, capsys))
        assert root.read_bytes() == node.certificate.cert_pem
        out = await asyncio.to_thread(triton_infer, f"localhost:{node.tls_port}", root)
        assert out.shape == (2, MLP_DIMS[-1])
        # The swarm port speaks nothing but TLS.
        async with grpc.aio.insecure_channel(node.tls_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert b"swarm_tls_peer_refused_total" in node.metrics.render()


def operator_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "op.crt", directory / "op.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_operator_certificate_serves_tritonclient_and_openai_over_tls(
        start_node: NodeFactory, mlp: Model, tmp_path: Path) -> None:
    cert, key = operator_certificate(tmp_path)
    async with start_node([mlp], tls_cert=cert, tls_key=key, tls_http=True,
                          http_port=0) as node:
        out = await asyncio.to_thread(triton_infer, f"localhost:{node.tls_port}", cert)
        assert out.shape == (2, MLP_DIMS[-1])
        context = ssl.create_default_context(cafile=str(cert))
        client = openai.AsyncOpenAI(base_url=f"https://localhost:{node.http_port}/v1",
                                    api_key="unused", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(verify=context))
        try:
            models = await client.models.list()
        finally:
            await client.close()
        assert "builtin/mlp" in {m.id for m in models.data}
        # TLS 1.3 only.
        old = ssl.create_default_context(cafile=str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(verify=old) as plain:
            with pytest.raises(httpx.ConnectError):
                await plain.get(f"https://localhost:{node.http_port}/v1/models")


async def test_beyond_loopback_grpc_plaintext_stays_on_loopback_and_http_is_tls(
        start_node: NodeFactory, mlp: Model) -> None:
    async with start_node([mlp], listen_host="0.0.0.0", http_port=0) as node:
        assert node.grpc_address.startswith("127.0.0.1:")
        assert node.http_tls
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://127.0.0.1:{node.metrics_port}/metrics")
        # Local tools keep their plaintext port.
        async with grpc.aio.insecure_channel(node.grpc_address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_certificate_rotates_on_schedule_without_a_restart(
        start_node: NodeFactory, mlp: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    async with start_node([mlp]) as node:
        peer = PeerId(node.peer_id)
        before = await fetch_certificate(node.tls_address)
        assert peer_of_certificate(before) == peer
        channels = PeerChannels()
        try:
            channel = await channels.channel(peer, node.tls_address)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
            assert node.certificates is not None
            with monkeypatch.context() as patch:  # the current certificate is due
                patch.setattr("swarm.node._certs.ROTATE_AFTER", datetime.timedelta(0))
                after = await fetch_certificate(node.tls_address)  # the next handshake rotates
            assert after != before
            assert peer_of_certificate(after) == peer  # the same identity
            assert node.certificates.rotations >= 1
            # A client pinned to the old certificate pins the new one after a failure.
            await channels.forget(node.tls_address)
            channel = await channels.channel(peer, node.tls_address)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        finally:
            await channels.close()
