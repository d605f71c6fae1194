from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicateRequest(_message.Message):
    __slots__ = ("start", "ack")
    START_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    start: ReplicaStart
    ack: ReplicaAck
    def __init__(self, start: _Optional[_Union[ReplicaStart, _Mapping]] = ..., ack: _Optional[_Union[ReplicaAck, _Mapping]] = ...) -> None: ...

class ReplicaStart(_message.Message):
    __slots__ = ("tenant_id", "replica_id", "last_lsn", "last_record_sha256", "epoch")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_RECORD_SHA256_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    replica_id: str
    last_lsn: int
    last_record_sha256: bytes
    epoch: int
    def __init__(self, tenant_id: _Optional[str] = ..., replica_id: _Optional[str] = ..., last_lsn: _Optional[int] = ..., last_record_sha256: _Optional[bytes] = ..., epoch: _Optional[int] = ...) -> None: ...

class ReplicaAck(_message.Message):
    __slots__ = ("durable_lsn",)
    DURABLE_LSN_FIELD_NUMBER: _ClassVar[int]
    durable_lsn: int
    def __init__(self, durable_lsn: _Optional[int] = ...) -> None: ...

class ReplicateResponse(_message.Message):
    __slots__ = ("records", "snapshot_chunk", "snapshot_end", "heartbeat")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    records: LogRecords
    snapshot_chunk: SnapshotChunk
    snapshot_end: SnapshotEnd
    heartbeat: ReplicaHeartbeat
    def __init__(self, records: _Optional[_Union[LogRecords, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., snapshot_end: _Optional[_Union[SnapshotEnd, _Mapping]] = ..., heartbeat: _Optional[_Union[ReplicaHeartbeat, _Mapping]] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("lsn", "sealed")
    LSN_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    sealed: bytes
    def __init__(self, lsn: _Optional[int] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class LogRecords(_message.Message):
    __slots__ = ("epoch", "records")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, epoch: _Optional[int] = ..., records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("file", "offset", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SnapshotEnd(_message.Message):
    __slots__ = ("lsn", "epoch", "files", "bytes", "diverged", "reason")
    LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    epoch: int
    files: int
    bytes: int
    diverged: bool
    reason: str
    def __init__(self, lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., diverged: bool = ..., reason: _Optional[str] = ...) -> None: ...

class ReplicaHeartbeat(_message.Message):
    __slots__ = ("last_lsn", "epoch")
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    last_lsn: int
    epoch: int
    def __init__(self, last_lsn: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...
