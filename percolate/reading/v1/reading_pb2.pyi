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

class BlockType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOCK_TYPE_UNSPECIFIED: _ClassVar[BlockType]
    BLOCK_TYPE_HEADING: _ClassVar[BlockType]
    BLOCK_TYPE_PARAGRAPH: _ClassVar[BlockType]
    BLOCK_TYPE_LIST_ITEM: _ClassVar[BlockType]
    BLOCK_TYPE_TABLE: _ClassVar[BlockType]
    BLOCK_TYPE_OCR_TEXT: _ClassVar[BlockType]
OCR_MODE_AUTO: OcrMode
OCR_MODE_ALWAYS: OcrMode
OCR_MODE_NEVER: OcrMode
BLOCK_TYPE_UNSPECIFIED: BlockType
BLOCK_TYPE_HEADING: BlockType
BLOCK_TYPE_PARAGRAPH: BlockType
BLOCK_TYPE_LIST_ITEM: BlockType
BLOCK_TYPE_TABLE: BlockType
BLOCK_TYPE_OCR_TEXT: BlockType

class EmbedRequest(_message.Message):
    __slots__ = ("tenant_id", "texts", "model", "normalize", "truncate")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    normalize: bool
    truncate: bool
    def __init__(self, tenant_id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., normalize: bool = ..., truncate: bool = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "token_count", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    token_count: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., token_count: _Optional[int] = ..., truncated: bool = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "dimensions", "embeddings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    dimensions: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, model: _Optional[str] = ..., dimensions: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class OcrRequest(_message.Message):
    __slots__ = ("tenant_id", "image")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    image: bytes
    def __init__(self, tenant_id: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class OcrLine(_message.Message):
    __slots__ = ("text", "confidence", "box")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    text: str
    confidence: float
    box: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, text: _Optional[str] = ..., confidence: _Optional[float] = ..., box: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class OcrResponse(_message.Message):
    __slots__ = ("lines", "width", "height")
    LINES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[OcrLine]
    width: int
    height: int
    def __init__(self, lines: _Optional[_Iterable[_Union[OcrLine, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ParseOptions(_message.Message):
    __slots__ = ("ocr", "chunk_tokens", "chunk_overlap_tokens", "embed", "normalize")
    OCR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EMBED_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    ocr: OcrMode
    chunk_tokens: int
    chunk_overlap_tokens: int
    embed: bool
    normalize: bool
    def __init__(self, ocr: _Optional[_Union[OcrMode, str]] = ..., chunk_tokens: _Optional[int] = ..., chunk_overlap_tokens: _Optional[int] = ..., embed: bool = ..., normalize: bool = ...) -> None: ...

class ParseRequest(_message.Message):
    __slots__ = ("tenant_id", "content", "filename", "mime_type", "options")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    content: bytes
    filename: str
    mime_type: str
    options: ParseOptions
    def __init__(self, tenant_id: _Optional[str] = ..., content: _Optional[bytes] = ..., filename: _Optional[str] = ..., mime_type: _Optional[str] = ..., options: _Optional[_Union[ParseOptions, _Mapping]] = ...) -> None: ...

class TableRow(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cells: _Optional[_Iterable[str]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("name", "rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: _containers.RepeatedCompositeFieldContainer[TableRow]
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[TableRow, _Mapping]]] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("type", "text", "level", "table")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    type: BlockType
    text: str
    level: int
    table: Table
    def __init__(self, type: _Optional[_Union[BlockType, str]] = ..., text: _Optional[str] = ..., level: _Optional[int] = ..., table: _Optional[_Union[Table, _Mapping]] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("number", "text", "blocks", "ocr_used")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    OCR_USED_FIELD_NUMBER: _ClassVar[int]
    number: int
    text: str
    blocks: _containers.RepeatedCompositeFieldContainer[Block]
    ocr_used: bool
    def __init__(self, number: _Optional[int] = ..., text: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[Block, _Mapping]]] = ..., ocr_used: bool = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("ordinal", "text", "page_start", "page_end", "heading_path", "token_count", "embedding")
    ORDINAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_END_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ordinal: int
    text: str
    page_start: int
    page_end: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    token_count: int
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ordinal: _Optional[int] = ..., text: _Optional[str] = ..., page_start: _Optional[int] = ..., page_end: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., token_count: _Optional[int] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class ParseResponse(_message.Message):
    __slots__ = ("format", "mime_type", "metadata", "pages", "chunks", "warnings", "embedding_model", "embedding_dimensions")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    format: str
    mime_type: str
    metadata: _containers.ScalarMap[str, str]
    pages: _containers.RepeatedCompositeFieldContainer[Page]
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    embedding_model: str
    embedding_dimensions: int
    def __init__(self, format: _Optional[str] = ..., mime_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., pages: _Optional[_Iterable[_Union[Page, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., embedding_model: _Optional[str] = ..., embedding_dimensions: _Optional[int] = ...) -> None: ...

class TranscribeOptions(_message.Message):
    __slots__ = ("language",)
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    language: str
    def __init__(self, language: _Optional[str] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("tenant_id", "audio", "filename", "mime_type", "options")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    audio: bytes
    filename: str
    mime_type: str
    options: TranscribeOptions
    def __init__(self, tenant_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., filename: _Optional[str] = ..., mime_type: _Optional[str] = ..., options: _Optional[_Union[TranscribeOptions, _Mapping]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("start", "end", "text", "window")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    text: str
    window: int
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ..., text: _Optional[str] = ..., window: _Optional[int] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("text", "segments", "language", "duration", "windows", "model", "source_sample_rate", "source_channels", "format")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    language: str
    duration: float
    windows: int
    model: str
    source_sample_rate: int
    source_channels: int
    format: str
    def __init__(self, text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., language: _Optional[str] = ..., duration: _Optional[float] = ..., windows: _Optional[int] = ..., model: _Optional[str] = ..., source_sample_rate: _Optional[int] = ..., source_channels: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions", "state", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    state: str
    description: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_texts_per_embed", "max_tokens_per_text", "max_image_pixels", "max_pages", "max_queue_depth", "max_in_flight", "max_audio_seconds")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_EMBED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_texts_per_embed: int
    max_tokens_per_text: int
    max_image_pixels: int
    max_pages: int
    max_queue_depth: int
    max_in_flight: int
    max_audio_seconds: float
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_texts_per_embed: _Optional[int] = ..., max_tokens_per_text: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_pages: _Optional[int] = ..., max_queue_depth: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., max_audio_seconds: _Optional[float] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("service_version", "tenant_id", "models", "limits", "formats")
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    service_version: str
    tenant_id: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_version: _Optional[str] = ..., tenant_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., formats: _Optional[_Iterable[str]] = ...) -> None: ...
