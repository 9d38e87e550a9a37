from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ManifestFile(_message.Message):
    __slots__ = ("path", "digest", "size", "chunk_size", "chunk_sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: str
    size: int
    chunk_size: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ManifestTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchingDefaults(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_us", "preferred_batch_sizes")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class RuntimeNeeds(_message.Message):
    __slots__ = ("device_kind", "min_memory_bytes")
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_kind: str
    min_memory_bytes: int
    def __init__(self, device_kind: _Optional[str] = ..., min_memory_bytes: _Optional[int] = ...) -> None: ...

class ManifestTolerance(_message.Message):
    __slots__ = ("rtol", "atol")
    RTOL_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    rtol: float
    atol: float
    def __init__(self, rtol: _Optional[float] = ..., atol: _Optional[float] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("name", "version", "format", "architecture", "files", "inputs", "outputs", "batching", "runtime", "publisher", "created_at_unix_ms", "tolerance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    format: str
    architecture: str
    files: _containers.RepeatedCompositeFieldContainer[ManifestFile]
    inputs: _containers.RepeatedCompositeFieldContainer[ManifestTensor]
    outputs: _containers.RepeatedCompositeFieldContainer[ManifestTensor]
    batching: BatchingDefaults
    runtime: RuntimeNeeds
    publisher: bytes
    created_at_unix_ms: int
    tolerance: ManifestTolerance
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., architecture: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ManifestFile, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[ManifestTensor, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[ManifestTensor, _Mapping]]] = ..., batching: _Optional[_Union[BatchingDefaults, _Mapping]] = ..., runtime: _Optional[_Union[RuntimeNeeds, _Mapping]] = ..., publisher: _Optional[bytes] = ..., created_at_unix_ms: _Optional[int] = ..., tolerance: _Optional[_Union[ManifestTolerance, _Mapping]] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TagRecord(_message.Message):
    __slots__ = ("publisher", "name", "tag", "target", "sequence", "timestamp_unix_ms")
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    publisher: bytes
    name: str
    tag: str
    target: str
    sequence: int
    timestamp_unix_ms: int
    def __init__(self, publisher: _Optional[bytes] = ..., name: _Optional[str] = ..., tag: _Optional[str] = ..., target: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_unix_ms: _Optional[int] = ...) -> None: ...

class SignedTag(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("digest", "offset", "length", "manifest")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    length: int
    manifest: str
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., manifest: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TagInfo(_message.Message):
    __slots__ = ("name", "tag", "target", "sequence", "previous", "publisher", "timestamp_unix_ms", "signed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    target: str
    sequence: int
    previous: str
    publisher: bytes
    timestamp_unix_ms: int
    signed: SignedTag
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ..., target: _Optional[str] = ..., sequence: _Optional[int] = ..., previous: _Optional[str] = ..., publisher: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., signed: _Optional[_Union[SignedTag, _Mapping]] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("digest", "name", "version", "size", "complete", "created_at_unix_ms")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    version: str
    size: int
    complete: bool
    created_at_unix_ms: int
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., size: _Optional[int] = ..., complete: _Optional[bool] = ..., created_at_unix_ms: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("tags", "versions")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TagInfo]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, tags: _Optional[_Iterable[_Union[TagInfo, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class PushData(_message.Message):
    __slots__ = ("file", "offset", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: int
    offset: int
    data: bytes
    def __init__(self, file: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("manifest", "data")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    data: PushData
    def __init__(self, manifest: _Optional[bytes] = ..., data: _Optional[_Union[PushData, _Mapping]] = ...) -> None: ...

class PushModelResponse(_message.Message):
    __slots__ = ("digest", "bytes_stored")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    bytes_stored: int
    def __init__(self, digest: _Optional[str] = ..., bytes_stored: _Optional[int] = ...) -> None: ...

class PublishTagResponse(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    def __init__(self, outcome: _Optional[str] = ...) -> None: ...
