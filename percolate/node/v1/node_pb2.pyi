from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OcrMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OCR_MODE_AUTO: _ClassVar[OcrMode]
    OCR_MODE_ALWAYS: _ClassVar[OcrMode]
    OCR_MODE_NEVER: _ClassVar[OcrMode]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_SEMANTIC: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_CONVEX: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_DOCUMENT: _ClassVar[Kind]
    KIND_RESOURCE: _ClassVar[Kind]
    KIND_ENTITY: _ClassVar[Kind]
    KIND_MOMENT: _ClassVar[Kind]
OCR_MODE_AUTO: OcrMode
OCR_MODE_ALWAYS: OcrMode
OCR_MODE_NEVER: OcrMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_SEMANTIC: SearchMode
SEARCH_MODE_KEYWORD: SearchMode
FUSION_METHOD_CONVEX: FusionMethod
FUSION_METHOD_RRF: FusionMethod
KIND_UNSPECIFIED: Kind
KIND_DOCUMENT: Kind
KIND_RESOURCE: Kind
KIND_ENTITY: Kind
KIND_MOMENT: Kind

class IngestRequest(_message.Message):
    __slots__ = ("content", "filename", "uri", "ocr", "chunk_tokens")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    OCR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    filename: str
    uri: str
    ocr: OcrMode
    chunk_tokens: int
    def __init__(self, content: _Optional[bytes] = ..., filename: _Optional[str] = ..., uri: _Optional[str] = ..., ocr: _Optional[_Union[OcrMode, str]] = ..., chunk_tokens: _Optional[int] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("document_id", "created", "resources", "pages", "format", "warnings", "moment_id")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MOMENT_ID_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    created: bool
    resources: int
    pages: int
    format: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    moment_id: str
    def __init__(self, document_id: _Optional[str] = ..., created: bool = ..., resources: _Optional[int] = ..., pages: _Optional[int] = ..., format: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., moment_id: _Optional[str] = ...) -> None: ...

class SearchFilters(_message.Message):
    __slots__ = ("uris", "uri_prefix", "entity_types", "created_after", "created_before")
    URIS_FIELD_NUMBER: _ClassVar[int]
    URI_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    uri_prefix: str
    entity_types: _containers.RepeatedScalarFieldContainer[str]
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, uris: _Optional[_Iterable[str]] = ..., uri_prefix: _Optional[str] = ..., entity_types: _Optional[_Iterable[str]] = ..., created_after: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FusionOptions(_message.Message):
    __slots__ = ("method", "semantic_weight", "all_terms_boost")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ALL_TERMS_BOOST_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    semantic_weight: float
    all_terms_boost: float
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., semantic_weight: _Optional[float] = ..., all_terms_boost: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "mode", "limit", "filters", "fusion")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    query: str
    mode: SearchMode
    limit: int
    filters: SearchFilters
    fusion: FusionOptions
    def __init__(self, query: _Optional[str] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., limit: _Optional[int] = ..., filters: _Optional[_Union[SearchFilters, _Mapping]] = ..., fusion: _Optional[_Union[FusionOptions, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("resource_id", "score", "text", "uri", "document_id", "page_start", "page_end", "heading_path", "semantic_rank", "keyword_rank")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_END_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_RANK_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_RANK_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    score: float
    text: str
    uri: str
    document_id: str
    page_start: int
    page_end: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    semantic_rank: int
    keyword_rank: int
    def __init__(self, resource_id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., uri: _Optional[str] = ..., document_id: _Optional[str] = ..., page_start: _Optional[int] = ..., page_end: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., semantic_rank: _Optional[int] = ..., keyword_rank: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "mode")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    mode: SearchMode
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., mode: _Optional[_Union[SearchMode, str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id", "include_embedding")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_embedding: bool
    def __init__(self, id: _Optional[str] = ..., include_embedding: bool = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "uri", "title", "format", "mime_type", "metadata", "created", "pages", "resource_ids")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    title: str
    format: str
    mime_type: str
    metadata: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    pages: int
    resource_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., title: _Optional[str] = ..., format: _Optional[str] = ..., mime_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., pages: _Optional[int] = ..., resource_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("id", "document_id", "uri", "ordinal", "text", "page_start", "page_end", "heading_path", "metadata", "embedding")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ORDINAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_END_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    document_id: str
    uri: str
    ordinal: int
    text: str
    page_start: int
    page_end: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., document_id: _Optional[str] = ..., uri: _Optional[str] = ..., ordinal: _Optional[int] = ..., text: _Optional[str] = ..., page_start: _Optional[int] = ..., page_end: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("id", "type", "name", "aliases", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    properties: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FindEntitiesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class FindEntitiesResponse(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class PutEntityRequest(_message.Message):
    __slots__ = ("id", "type", "name", "aliases", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    properties: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Edge(_message.Message):
    __slots__ = ("from_id", "to_id", "relation", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    from_id: str
    to_id: str
    relation: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, from_id: _Optional[str] = ..., to_id: _Optional[str] = ..., relation: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("from_id", "to_id", "relation", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    from_id: str
    to_id: str
    relation: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, from_id: _Optional[str] = ..., to_id: _Optional[str] = ..., relation: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TraverseRequest(_message.Message):
    __slots__ = ("start_id", "depth", "relation")
    START_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    start_id: str
    depth: int
    relation: str
    def __init__(self, start_id: _Optional[str] = ..., depth: _Optional[int] = ..., relation: _Optional[str] = ...) -> None: ...

class GraphNode(_message.Message):
    __slots__ = ("id", "kind", "label", "depth")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    label: str
    depth: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., label: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class TraverseResponse(_message.Message):
    __slots__ = ("nodes", "edges")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[GraphNode]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(self, nodes: _Optional[_Iterable[_Union[GraphNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...) -> None: ...

class Moment(_message.Message):
    __slots__ = ("id", "start", "end", "type", "summary", "references")
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    type: str
    summary: str
    references: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., summary: _Optional[str] = ..., references: _Optional[_Iterable[str]] = ...) -> None: ...

class AddMomentRequest(_message.Message):
    __slots__ = ("start", "end", "type", "summary", "references")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    type: str
    summary: str
    references: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., summary: _Optional[str] = ..., references: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMomentsRequest(_message.Message):
    __slots__ = ("start", "end", "type", "limit")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    type: str
    limit: int
    def __init__(self, start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMomentsResponse(_message.Message):
    __slots__ = ("moments",)
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    moments: _containers.RepeatedCompositeFieldContainer[Moment]
    def __init__(self, moments: _Optional[_Iterable[_Union[Moment, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    id: str
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., id: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tenant_id", "documents", "resources", "entities", "moments", "storage_bytes", "index_entries", "index_rebuild_seconds", "last_lsn", "shipped_lsn", "dek_seals", "dek_seal_limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    INDEX_REBUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_LSN_FIELD_NUMBER: _ClassVar[int]
    DEK_SEALS_FIELD_NUMBER: _ClassVar[int]
    DEK_SEAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    documents: int
    resources: int
    entities: int
    moments: int
    storage_bytes: int
    index_entries: int
    index_rebuild_seconds: float
    last_lsn: int
    shipped_lsn: int
    dek_seals: int
    dek_seal_limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., documents: _Optional[int] = ..., resources: _Optional[int] = ..., entities: _Optional[int] = ..., moments: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., index_entries: _Optional[int] = ..., index_rebuild_seconds: _Optional[float] = ..., last_lsn: _Optional[int] = ..., shipped_lsn: _Optional[int] = ..., dek_seals: _Optional[int] = ..., dek_seal_limit: _Optional[int] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("snapshot_id", "lsn", "files", "uploaded_files", "uploaded_bytes", "seconds", "location")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FILES_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    lsn: int
    files: int
    uploaded_files: int
    uploaded_bytes: int
    seconds: float
    location: str
    def __init__(self, snapshot_id: _Optional[str] = ..., lsn: _Optional[int] = ..., files: _Optional[int] = ..., uploaded_files: _Optional[int] = ..., uploaded_bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., location: _Optional[str] = ...) -> None: ...

class ReplicaStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatusResponse(_message.Message):
    __slots__ = ("replica_id", "role", "epoch", "lease_holder", "lease_epoch", "lease_valid_seconds", "last_lsn", "standby", "acked_lsn", "lag_records", "lag_seconds", "synchronous", "strict", "failovers", "lease_refused", "diverged_copies", "replication_error")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_VALID_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    ACKED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    LEASE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_COPIES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    role: str
    epoch: int
    lease_holder: str
    lease_epoch: int
    lease_valid_seconds: float
    last_lsn: int
    standby: str
    acked_lsn: int
    lag_records: int
    lag_seconds: float
    synchronous: bool
    strict: bool
    failovers: int
    lease_refused: str
    diverged_copies: _containers.RepeatedScalarFieldContainer[str]
    replication_error: str
    def __init__(self, replica_id: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., lease_holder: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., lease_valid_seconds: _Optional[float] = ..., last_lsn: _Optional[int] = ..., standby: _Optional[str] = ..., acked_lsn: _Optional[int] = ..., lag_records: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., synchronous: bool = ..., strict: bool = ..., failovers: _Optional[int] = ..., lease_refused: _Optional[str] = ..., diverged_copies: _Optional[_Iterable[str]] = ..., replication_error: _Optional[str] = ...) -> None: ...

class FailoverRequest(_message.Message):
    __slots__ = ("timeout_seconds",)
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timeout_seconds: float
    def __init__(self, timeout_seconds: _Optional[float] = ...) -> None: ...

class FailoverResponse(_message.Message):
    __slots__ = ("previous_active", "new_active", "lsn", "epoch", "seconds")
    PREVIOUS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    NEW_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    previous_active: str
    new_active: str
    lsn: int
    epoch: int
    seconds: float
    def __init__(self, previous_active: _Optional[str] = ..., new_active: _Optional[str] = ..., lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
