from swarm._proto.swarm.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelOffer(_message.Message):
    __slots__ = ("digest", "name", "tags", "max_batch_size", "items_per_second", "queue_depth", "arrival_rate", "queue_wait_s", "utilization", "memory_bytes", "autoscaled", "running_sequences", "waiting_sequences", "tokens_per_second", "sequence_tokens_per_second", "queued_prompt_tokens", "queued_decode_tokens")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    WAITING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUEUED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    items_per_second: float
    queue_depth: int
    arrival_rate: float
    queue_wait_s: float
    utilization: float
    memory_bytes: int
    autoscaled: bool
    running_sequences: int
    waiting_sequences: int
    tokens_per_second: float
    sequence_tokens_per_second: float
    queued_prompt_tokens: int
    queued_decode_tokens: int
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., items_per_second: _Optional[float] = ..., queue_depth: _Optional[int] = ..., arrival_rate: _Optional[float] = ..., queue_wait_s: _Optional[float] = ..., utilization: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., autoscaled: _Optional[bool] = ..., running_sequences: _Optional[int] = ..., waiting_sequences: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., sequence_tokens_per_second: _Optional[float] = ..., queued_prompt_tokens: _Optional[int] = ..., queued_decode_tokens: _Optional[int] = ...) -> None: ...

class CapacityAdvert(_message.Message):
    __slots__ = ("peer_id", "grpc_endpoints", "models", "queue_depth", "free_accelerator_memory_bytes", "hardware", "price", "region", "software_version", "sequence", "timestamp_unix_ms", "ttl_ms", "draining", "stored", "p2p_addrs", "mesh")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    FREE_ACCELERATOR_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    P2P_ADDRS_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    grpc_endpoints: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[ModelOffer]
    queue_depth: int
    free_accelerator_memory_bytes: int
    hardware: _node_pb2.Hardware
    price: _node_pb2.Price
    region: str
    software_version: str
    sequence: int
    timestamp_unix_ms: int
    ttl_ms: int
    draining: bool
    stored: _containers.RepeatedScalarFieldContainer[str]
    p2p_addrs: _containers.RepeatedScalarFieldContainer[str]
    mesh: MeshMember
    def __init__(self, peer_id: _Optional[str] = ..., grpc_endpoints: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[ModelOffer, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., free_accelerator_memory_bytes: _Optional[int] = ..., hardware: _Optional[_Union[_node_pb2.Hardware, _Mapping]] = ..., price: _Optional[_Union[_node_pb2.Price, _Mapping]] = ..., region: _Optional[str] = ..., software_version: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_unix_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., draining: _Optional[bool] = ..., stored: _Optional[_Iterable[str]] = ..., p2p_addrs: _Optional[_Iterable[str]] = ..., mesh: _Optional[_Union[MeshMember, _Mapping]] = ...) -> None: ...

class MeshMember(_message.Message):
    __slots__ = ("public_key", "endpoint", "address", "grpc_port", "relay")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    endpoint: str
    address: str
    grpc_port: int
    relay: bool
    def __init__(self, public_key: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., address: _Optional[str] = ..., grpc_port: _Optional[int] = ..., relay: _Optional[bool] = ...) -> None: ...

class SignedAdvert(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
