"""Manifests: one-pass file hashing, canonical digest, signature verification, validation."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from swarm._errors import IntegrityError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._tensors import Tolerance
from swarm._types import Digest
from swarm.node._runtime import TensorSpec
from swarm.protocol import Identity
from swarm.registry import (
    BatchingDefaults,
    FileEntry,
    Manifest,
    ModelFormat,
    RuntimeNeeds,
    file_entry,
    manifest_digest,
    manifest_for_file,
    sign_manifest,
    verify_manifest,
)
from swarm.registry._manifest import MANIFEST_DOMAIN, canonical_payload

PUBLISHER = Identity.from_seed(bytes(range(32)))
OTHER = Identity.from_seed(bytes(range(1, 33)))
DATA = bytes(i % 253 for i in range(2500))
INPUTS = (TensorSpec("input", "FP32", (-1, 16)),)
OUTPUTS = (TensorSpec("output", "FP32", (-1, 4)),)
# Pinned: a change here means every published version would change identity.
GOLDEN_DIGEST = "sha256:46f66a81c05696b525b40627afcc2e1ae7c83a2defc3bc06cbd0893201b84ec5"


def make(tmp_path: Path, **changes: object) -> Manifest:
    path = tmp_path / "model.pt2"
    path.write_bytes(DATA)
    manifest = manifest_for_file(
        path, "acme/classifier", "1.0.0", format=ModelFormat.TORCH_EXPORT,
        inputs=INPUTS, outputs=OUTPUTS, publisher=PUBLISHER.public_key,
        created_at=1_790_000_000.123, chunk_size=1024,
        batching=BatchingDefaults(max_batch_size=32, max_queue_delay=0.0015,
                                  preferred_batch_sizes=(8, 16)),
        runtime=RuntimeNeeds("cuda", 2 << 30),
    )
    return dataclasses.replace(manifest, **changes)  # type: ignore[arg-type]


def resign(payload: bytes, identity: Identity) -> bytes:
    return registry_pb2.SignedManifest(
        payload=payload, signature=identity.sign(MANIFEST_DOMAIN + payload)).SerializeToString()


def test_file_entry_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(DATA)
    entry = file_entry(path, chunk_size=1024)
    assert entry.path == "weights.bin"
    assert entry.digest == Digest.of(DATA)
    assert entry.size == 2500
    assert entry.chunks == (Digest.of(DATA[:1024]), Digest.of(DATA[1024:2048]),
                            Digest.of(DATA[2048:]))
    assert entry.chunk_span(2) == (2048, 452)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_entry(empty).chunks == ()
    assert file_entry(path, name="sub/dir/w.bin").path == "sub/dir/w.bin"


def test_roundtrip_and_digest(tmp_path: Path) -> None:
    manifest = make(tmp_path)
    signed = sign_manifest(manifest, PUBLISHER)
    decoded, digest = verify_manifest(signed)
    assert decoded == manifest
    assert digest == manifest_digest(manifest)
    payload = registry_pb2.SignedManifest.FromString(signed).payload
    assert digest == Digest(hashlib.sha256(payload).hexdigest())
    assert manifest.blobs == {Digest.of(DATA)}
    assert manifest.total_size == 2500


def test_digest_is_canonical_and_pinned(tmp_path: Path) -> None:
    manifest = make(tmp_path)
    digest = manifest_digest(manifest)
    # Same content built again (and re-encoded after a decode) has the same identity.
    assert manifest_digest(make(tmp_path)) == digest
    assert manifest_digest(verify_manifest(sign_manifest(manifest, PUBLISHER))[0]) == digest
    assert str(digest) == GOLDEN_DIGEST


@pytest.mark.parametrize("change", [
    {"version": "1.0.1"},
    {"created_at": 1_790_000_000.124},
    {"runtime": RuntimeNeeds("cpu", 0)},
    {"batching": BatchingDefaults(max_batch_size=16)},
    {"outputs": (TensorSpec("output", "FP16", (-1, 4)),)},
    {"publisher": OTHER.public_key},
    {"tolerance": Tolerance(rtol=1e-3, atol=1e-5)},
])
def test_digest_covers_every_field(tmp_path: Path, change: dict[str, object]) -> None:
    assert manifest_digest(make(tmp_path, **change)) != manifest_digest(make(tmp_path))


def test_flipped_payload_byte_rejected(tmp_path: Path) -> None:
    signed = registry_pb2.SignedManifest.FromString(sign_manifest(make(tmp_path), PUBLISHER))
    for i in range(len(signed.payload)):
        payload = bytearray(signed.payload)
        payload[i] ^= 0x01
        tampered = registry_pb2.SignedManifest(payload=bytes(payload), signature=signed.signature)
        with pytest.raises(IntegrityError):
            verify_manifest(tampered.SerializeToString())


@pytest.mark.parametrize("index", [0, 31, 63])
def test_flipped_signature_byte_rejected(tmp_path: Path, index: int) -> None:
    signed = registry_pb2.SignedManifest.FromString(sign_manifest(make(tmp_path), PUBLISHER))
    signature = bytearray(signed.signature)
    signature[index] ^= 0x80
    tampered = registry_pb2.SignedManifest(payload=signed.payload, signature=bytes(signature))
    with pytest.raises(IntegrityError, match="signature"):
        verify_manifest(tampered.SerializeToString())


def test_swapped_publisher_key_rejected(tmp_path: Path) -> None:
    signed = registry_pb2.SignedManifest.FromString(sign_manifest(make(tmp_path), PUBLISHER))
    msg = registry_pb2.Manifest.FromString(signed.payload)
    msg.publisher = OTHER.public_key
    swapped = registry_pb2.SignedManifest(payload=msg.SerializeToString(deterministic=True),
                                          signature=signed.signature)
    with pytest.raises(IntegrityError, match="signature"):
        verify_manifest(swapped.SerializeToString())


def test_resigned_by_another_key_is_another_version(tmp_path: Path) -> None:
    # Anyone may sign a manifest as themselves; it is then a different digest and publisher,
    # and only the namespace owner's tags point at digests.
    theirs = make(tmp_path, publisher=OTHER.public_key)
    decoded, digest = verify_manifest(sign_manifest(theirs, OTHER))
    assert decoded.publisher == OTHER.public_key
    assert digest != manifest_digest(make(tmp_path))
    with pytest.raises(ValueError, match="publisher"):
        sign_manifest(make(tmp_path), OTHER)


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05hello", b"x" * (5 << 20)])
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        verify_manifest(data)


@pytest.mark.parametrize("mutate", [
    lambda m: setattr(m, "name", "Not A Name"),
    lambda m: setattr(m, "format", "pickle"),
    lambda m: m.files[0].chunk_sha256.pop(),
    lambda m: setattr(m.files[0], "path", "../../etc/passwd"),
    lambda m: setattr(m.files[0], "digest", "md5:abc"),
    lambda m: setattr(m.inputs[0], "datatype", "FP128"),
    lambda m: m.files[0].chunk_sha256.__setitem__(0, b"short"),
])
def test_validly_signed_but_malformed_rejected(tmp_path: Path, mutate: object) -> None:
    msg = registry_pb2.Manifest.FromString(
        registry_pb2.SignedManifest.FromString(sign_manifest(make(tmp_path), PUBLISHER)).payload)
    mutate(msg)  # type: ignore[operator]
    with pytest.raises(IntegrityError, match="malformed"):
        verify_manifest(resign(msg.SerializeToString(), PUBLISHER))


def test_unknown_fields_are_signed_and_part_of_the_digest(tmp_path: Path) -> None:
    payload = registry_pb2.SignedManifest.FromString(
        sign_manifest(make(tmp_path), PUBLISHER)).payload
    newer = payload + b"\xa2\x06\x03new"  # field 100, length-delimited: from a newer publisher
    decoded, digest = verify_manifest(resign(newer, PUBLISHER))
    assert decoded == make(tmp_path)
    assert digest == Digest.of(newer) != manifest_digest(decoded)


def test_tolerance_round_trips_and_defaults_by_datatype(tmp_path: Path) -> None:
    declared = make(tmp_path, tolerance=Tolerance(rtol=1e-3, atol=1e-6))
    decoded, _ = verify_manifest(sign_manifest(declared, PUBLISHER))
    assert decoded.tolerance == Tolerance(rtol=1e-3, atol=1e-6)
    assert decoded.output_tolerance == decoded.tolerance
    # Without one (every manifest published before the field existed: GOLDEN_DIGEST holds).
    assert make(tmp_path).tolerance is None
    assert make(tmp_path).output_tolerance == Tolerance(rtol=1e-4, atol=1e-5)  # FP32
    fp16 = make(tmp_path, outputs=(TensorSpec("a", "FP16", (-1,)), TensorSpec("b", "INT64", (-1,))))
    assert fp16.output_tolerance == Tolerance(rtol=1e-2, atol=1e-3)


def test_a_signed_manifest_with_a_bad_tolerance_is_refused(tmp_path: Path) -> None:
    msg = registry_pb2.Manifest.FromString(canonical_payload(make(tmp_path)))
    msg.tolerance.rtol = float("nan")
    with pytest.raises(IntegrityError, match="tolerance"):
        verify_manifest(resign(msg.SerializeToString(deterministic=True), PUBLISHER))


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "classifier"}, "namespace/name"),
    ({"version": "has space"}, "version"),
    ({"architecture": "mlp"}, "architecture"),
    ({"format": ModelFormat.SAFETENSORS_BUILTIN}, "architecture"),
    ({"files": ()}, "files"),
    ({"inputs": (TensorSpec("x", "FP32", (-1,)), TensorSpec("x", "FP32", (-1,)))}, "unique"),
    ({"inputs": (TensorSpec("x", "FP32", (-2,)),)}, "dimensions"),
    ({"publisher": b"short"}, "32-byte"),
])
def test_manifest_validation(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **change)


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../b", "a//b", "", "a/./b", "dir/"])
def test_unsafe_file_paths_refused(path: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        FileEntry(path, Digest.of(b""), 0, 1024, ())


def test_safetensors_builtin_names_architecture(tmp_path: Path) -> None:
    manifest = make(tmp_path, format=ModelFormat.SAFETENSORS_BUILTIN, architecture="mlp")
    decoded, _ = verify_manifest(sign_manifest(manifest, PUBLISHER))
    assert decoded.format is ModelFormat.SAFETENSORS_BUILTIN
    assert decoded.architecture == "mlp"
