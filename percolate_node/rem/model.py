"""REM records: Documents and their Resources (chunks), Entities and Edges, Moments.

Ids are content hashes where the content defines the record (so the same upload twice
is one document, and a re-chunked uri replaces its chunks in place), and caller-chosen
or random otherwise. Every datetime is timezone-aware UTC.
"""
from __future__ import annotations

import hashlib
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from percolate_node.rem.errors import InvalidRecordError

EMBEDDING_DIM = 384
Kind = Literal["document", "resource", "entity", "moment"]
KINDS: tuple[Kind, ...] = ("document", "resource", "entity", "moment")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def document_id(content: bytes) -> str:
    """A document's id: the sha256 of its bytes."""
    return hashlib.sha256(content).hexdigest()


def resource_id(uri: str, ordinal: int) -> str:
    """A chunk's id: the sha256 of its document's uri and its position in it."""
    return hashlib.sha256(f"{uri}\0{ordinal}".encode()).hexdigest()


def normalise_name(name: str) -> str:
    """The form names and aliases are matched in: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def entity_id(type: str, name: str) -> str:
    """A stable id for an entity known by type and name (for idempotent upserts)."""
    return hashlib.sha256(f"{type}\0{normalise_name(name)}".encode()).hexdigest()[:32]


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidRecordError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(timezone.utc)


@dataclass(kw_only=True)
class Document:
    id: str
    uri: str
    title: str = ""
    format: str = ""
    mime: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    created: datetime = field(default_factory=utc_now)
    updated: datetime = field(default_factory=utc_now)
    deleted: bool = False

    def __post_init__(self) -> None:
        if not self.id or not self.uri:
            raise InvalidRecordError("a document needs an id (document_id(content)) and a uri")
        self.created = _utc(self.created, "document.created")
        self.updated = _utc(self.updated, "document.updated")


@dataclass(kw_only=True)
class Resource:
    """A chunk of a document; ``id`` defaults to ``resource_id(uri, ordinal)``."""

    document_id: str
    uri: str
    ordinal: int
    text: str
    id: str = ""
    embedding: np.ndarray | None = field(default=None, compare=False)
    page_span: tuple[int, int] | None = None
    heading_path: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False

    def __post_init__(self) -> None:
        if self.ordinal < 0:
            raise InvalidRecordError(f"resource ordinal must be >= 0, got {self.ordinal}")
        self.id = self.id or resource_id(self.uri, self.ordinal)
        if self.page_span is not None:
            self.page_span = (int(self.page_span[0]), int(self.page_span[1]))
        if self.embedding is not None:
            self.embedding = np.asarray(self.embedding, dtype=np.float32)
            if self.embedding.shape != (EMBEDDING_DIM,):
                raise InvalidRecordError(f"embedding of resource {self.id} has shape {self.embedding.shape}, "
                                         f"expected ({EMBEDDING_DIM},)")


@dataclass(kw_only=True)
class Entity:
    """A named thing; ``id`` defaults to ``entity_id(type, name)``."""

    type: str
    name: str
    id: str = ""
    aliases: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False

    def __post_init__(self) -> None:
        if not self.type or not normalise_name(self.name):
            raise InvalidRecordError("an entity needs a type and a non-blank name")
        self.id = self.id or entity_id(self.type, self.name)

    def names(self) -> set[str]:
        """Normalised name and aliases: what the name index holds for this entity."""
        return {normalise_name(n) for n in (self.name, *self.aliases)} - {""}


@dataclass(kw_only=True)
class Edge:
    """A directed, typed link; the kinds are filled in by ``link`` and let traversal load nodes."""

    from_id: str
    to_id: str
    relation: str
    properties: dict[str, Any] = field(default_factory=dict)
    from_kind: Kind = "entity"
    to_kind: Kind = "entity"

    def __post_init__(self) -> None:
        if not self.relation:
            raise InvalidRecordError("an edge needs a relation")


@dataclass(kw_only=True)
class Moment:
    """Something that happened over ``[start, end]``; ``id`` defaults to a random one."""

    start: datetime
    end: datetime
    type: str
    summary: str = ""
    references: list[str] = field(default_factory=list)
    id: str = ""
    deleted: bool = False

    def __post_init__(self) -> None:
        self.start = _utc(self.start, "moment.start")
        self.end = _utc(self.end, "moment.end")
        if self.end < self.start:
            raise InvalidRecordError(f"moment ends ({self.end.isoformat()}) "
                                     f"before it starts ({self.start.isoformat()})")
        self.id = self.id or uuid.uuid4().hex


Record = Document | Resource | Entity | Moment
RECORD_TYPES: dict[Kind, type] = {"document": Document, "resource": Resource, "entity": Entity, "moment": Moment}


@dataclass
class IngestResult:
    document_id: str
    new: bool  # False: this content was already stored, nothing was written
    resource_ids: list[str]
    replaced_document_id: str | None = None  # the previous document at the same uri, now deleted


@dataclass
class Traversal:
    nodes: list[Record]  # start first, then breadth-first
    edges: list[Edge]
    truncated: bool = False  # the node limit stopped the walk early
