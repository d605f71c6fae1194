"""The tenant node's search indexes: semantic (HNSW), keyword (BM25) and hybrid (fusion.py),
with filters on uri, document, entity type and creation time.

In memory only: they hold tenant content, so they are rebuilt from the encrypted store
at start and never written to disk by this package (the node seals the one part worth
keeping, the HNSW graph, into its store: ``GraphSnapshot``). ``SearchIndex`` is the entry point.
"""
from .filters import MetadataTable, ResourceMeta, SearchFilters
from .fusion import RRF_K, FusionParams, convex_fusion, reciprocal_rank_fusion
from .hybrid import GraphSnapshot, Hit, Mode, RebuildProgress, RebuildReport, SearchIndex
from .keyword import STOP_WORDS, Bm25Params, KeywordIndex, tokenize
from .slots import Selection, SlotMap
from .vector import HnswParams, VectorIndex

__all__ = ["Bm25Params", "FusionParams", "convex_fusion", "GraphSnapshot", "Hit", "HnswParams", "KeywordIndex", "MetadataTable", "Mode", "RRF_K",
           "RebuildProgress", "RebuildReport", "ResourceMeta", "SearchFilters", "SearchIndex", "Selection",
           "SlotMap", "STOP_WORDS", "VectorIndex", "reciprocal_rank_fusion", "tokenize"]
