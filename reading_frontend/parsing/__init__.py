"""Document parsing for the reading service: plain functions over bytes, no gRPC or Triton.

``parse_document`` detects the format from the content and returns pages of typed blocks;
``chunk_document`` turns them into embedding-sized chunks. The server maps these frozen
dataclasses onto ``percolate.reading.v1`` messages and ``DocumentError`` onto status codes.
"""
from .chunking import chunk_document
from .detect import detect_format
from .document import parse_document
from .errors import (CorruptDocumentError, DocumentError, DocumentTooLargeError,
                     EmptyDocumentError, EncryptedDocumentError, UnsupportedFormatError)
from .model import Block, Chunk, OcrFn, Page, ParsedDocument, ParseLimits, Table

__all__ = [
    "Block", "Chunk", "CorruptDocumentError", "DocumentError", "DocumentTooLargeError",
    "EmptyDocumentError", "EncryptedDocumentError", "OcrFn", "Page", "ParseLimits",
    "ParsedDocument", "Table", "UnsupportedFormatError", "chunk_document", "detect_format",
    "parse_document",
]
