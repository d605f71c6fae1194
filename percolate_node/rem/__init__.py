"""The REM model (Resources, Entities, Moments) over the encrypted store."""
from percolate_node.rem.errors import InvalidRecordError, NotFoundError, RemError
from percolate_node.rem.model import (EMBEDDING_DIM, KINDS, Document, Edge, Entity, IngestResult, Kind, Moment,
                                      Resource, Traversal, document_id, entity_id, normalise_name, resource_id)
from percolate_node.rem.repository import MemoryRepository

__all__ = ["EMBEDDING_DIM", "KINDS", "Document", "Edge", "Entity", "IngestResult", "InvalidRecordError", "Kind",
           "MemoryRepository", "Moment", "NotFoundError", "RemError", "Resource", "Traversal", "document_id",
           "entity_id", "normalise_name", "resource_id"]
