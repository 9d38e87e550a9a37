from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hardware(_message.Message):
    __slots__ = ("device_kind", "device_count", "memory_bytes", "device_name")
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    device_kind: str
    device_count: int
    memory_bytes: int
    device_name: str
    def __init__(self, device_kind: _Optional[str] = ..., device_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., device_name: _Optional[str] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("per_request_micros", "per_1k_items_micros")
    PER_REQUEST_MICROS_FIELD_NUMBER: _ClassVar[int]
    PER_1K_ITEMS_MICROS_FIELD_NUMBER: _ClassVar[int]
    per_request_micros: int
    per_1k_items_micros: int
    def __init__(self, per_request_micros: _Optional[int] = ..., per_1k_items_micros: _Optional[int] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("digest", "name", "tags", "max_batch_size", "items_per_second", "queue_depth", "ready", "instance_devices", "replicas_reason")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_DEVICES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_REASON_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    items_per_second: float
    queue_depth: int
    ready: bool
    instance_devices: _containers.RepeatedScalarFieldContainer[str]
    replicas_reason: str
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., items_per_second: _Optional[float] = ..., queue_depth: _Optional[int] = ..., ready: _Optional[bool] = ..., instance_devices: _Optional[_Iterable[str]] = ..., replicas_reason: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("peer_id", "software_version", "grpc_endpoints", "models", "hardware", "price", "region", "free_accelerator_memory_bytes", "started_at_unix_ns", "draining", "autoscale", "scaling", "replicas", "devices", "replica_scaling")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FREE_ACCELERATOR_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_FIELD_NUMBER: _ClassVar[int]
    SCALING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SCALING_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    software_version: str
    grpc_endpoints: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    hardware: Hardware
    price: Price
    region: str
    free_accelerator_memory_bytes: int
    started_at_unix_ns: int
    draining: bool
    autoscale: bool
    scaling: _containers.RepeatedCompositeFieldContainer[ScalingEvent]
    replicas: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    replica_scaling: _containers.RepeatedCompositeFieldContainer[ScalingEvent]
    def __init__(self, peer_id: _Optional[str] = ..., software_version: _Optional[str] = ..., grpc_endpoints: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., price: _Optional[_Union[Price, _Mapping]] = ..., region: _Optional[str] = ..., free_accelerator_memory_bytes: _Optional[int] = ..., started_at_unix_ns: _Optional[int] = ..., draining: _Optional[bool] = ..., autoscale: _Optional[bool] = ..., scaling: _Optional[_Iterable[_Union[ScalingEvent, _Mapping]]] = ..., replicas: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., replica_scaling: _Optional[_Iterable[_Union[ScalingEvent, _Mapping]]] = ...) -> None: ...

class ScalingEvent(_message.Message):
    __slots__ = ("at_unix_ns", "action", "model", "digest", "reason", "outcome", "error", "device")
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    at_unix_ns: int
    action: str
    model: str
    digest: str
    reason: str
    outcome: str
    error: str
    device: str
    def __init__(self, at_unix_ns: _Optional[int] = ..., action: _Optional[str] = ..., model: _Optional[str] = ..., digest: _Optional[str] = ..., reason: _Optional[str] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
