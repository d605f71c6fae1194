"""``percolate.node.v1.NodeService``: thin handlers over ``NodeMemory``.

Every handler authenticates the caller, converts protobuf to plain values, calls the
memory, converts back, records metrics, and maps errors to a status in one place.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import node_pb2_grpc

from .auth import NodeAuthenticator
from .errors import BackupsNotConfiguredError, InvalidRequestError, status_for
from .memory import NodeMemory
from .metrics import NodeMetrics
from .rem import Document, Edge, Entity, Moment, Resource, Traversal
from .search import FusionParams, SearchFilters

log = logging.getLogger("percolate.node")
_MODES = {pb.SEARCH_MODE_HYBRID: "hybrid", pb.SEARCH_MODE_SEMANTIC: "semantic",
          pb.SEARCH_MODE_KEYWORD: "keyword"}
_KINDS = {pb.KIND_DOCUMENT: "document", pb.KIND_RESOURCE: "resource",
          pb.KIND_ENTITY: "entity", pb.KIND_MOMENT: "moment"}
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)
WRITES = frozenset({"Ingest", "PutEntity", "Link", "AddMoment", "Delete"})
"""Methods that write: with replication, accepted on the active only and acknowledged after the standby."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _fusion(options: pb.FusionOptions) -> FusionParams:
    defaults = FusionParams()
    try:
        return FusionParams(
            method="rrf" if options.method == pb.FUSION_METHOD_RRF else "convex",
            semantic_weight=options.semantic_weight if options.HasField("semantic_weight") else defaults.semantic_weight,
            all_terms_boost=options.all_terms_boost if options.HasField("all_terms_boost") else defaults.all_terms_boost)
    except ValueError as error:
        raise InvalidRequestError(f"fusion: {error}") from None


def _time(stamp: Timestamp, default: datetime | None = None) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default
    return stamp.ToDatetime(tzinfo=timezone.utc)


def _stamp(moment: datetime | None) -> Timestamp:
    stamp = Timestamp()
    if moment is not None:
        stamp.FromDatetime(moment)
    return stamp


def _strings(values: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}


def document_message(d: Document, resource_ids: list[str]) -> pb.Document:
    return pb.Document(id=d.id, uri=d.uri, title=d.title, format=d.format, mime_type=d.mime,
                       metadata=_strings(d.metadata), created=_stamp(d.created),
                       pages=int(d.metadata.get("pages", 0)), resource_ids=resource_ids)


def _span(r: Resource) -> tuple[int, int]:
    return r.page_span or (0, 0)


def resource_message(r: Resource, include_embedding: bool = False) -> pb.Resource:
    message = pb.Resource(id=r.id, document_id=r.document_id, uri=r.uri, ordinal=r.ordinal,
                          text=r.text, page_start=_span(r)[0], page_end=_span(r)[1],
                          heading_path=list(r.heading_path), metadata=_strings(r.metadata))
    if include_embedding and r.embedding is not None:
        message.embedding.extend(r.embedding.tolist())
    return message


def entity_message(e: Entity) -> pb.Entity:
    return pb.Entity(id=e.id, type=e.type, name=e.name, aliases=list(e.aliases),
                     properties=_strings(e.properties))


def edge_message(e: Edge) -> pb.Edge:
    return pb.Edge(from_id=e.from_id, to_id=e.to_id, relation=e.relation, properties=_strings(e.properties))


def graph_message(traversal: Traversal, start_id: str) -> pb.TraverseResponse:
    """Nodes with their kind, a label and their hop distance from the start."""
    depth = {start_id: 0}
    frontier = [start_id]
    while frontier:
        following = []
        for node in frontier:
            for edge in traversal.edges:
                for a, b in ((edge.from_id, edge.to_id), (edge.to_id, edge.from_id)):
                    if a == node and b not in depth:
                        depth[b] = depth[node] + 1
                        following.append(b)
        frontier = following
    nodes = []
    for record in traversal.nodes:
        kind, label = {Entity: ("entity", lambda r: r.name), Resource: ("resource", lambda r: r.text[:80]),
                       Document: ("document", lambda r: r.title), Moment: ("moment", lambda r: r.summary)
                       }[type(record)]
        nodes.append(pb.GraphNode(id=record.id, kind=kind, label=label(record), depth=depth.get(record.id, 0)))
    return pb.TraverseResponse(nodes=nodes, edges=[edge_message(e) for e in traversal.edges])


def moment_message(m: Moment) -> pb.Moment:
    return pb.Moment(id=m.id, start=_stamp(m.start), end=_stamp(m.end), type=m.type,
                     summary=m.summary, references=list(m.references))


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, memory: NodeMemory, authenticator: NodeAuthenticator, metrics: NodeMetrics,
                 backup: Callable[[], object] = lambda: None,
                 replication: Callable[[], object] = lambda: None) -> None:
        self.memory = memory
        self._replication = replication  # the ReplicaController with a leader lease, else None
        self.authenticator = authenticator
        self.metrics = metrics
        self._backup = backup  # the node's BackupAgent, or None without backups

    async def _run(self, method: str, context, work: Callable[[], Awaitable]):
        started = time.perf_counter()
        status = "OK"
        memory = self.memory
        try:
            self.authenticator.check(context)
            replica = self._replication() if method in WRITES else None
            if replica is None:
                return await work()
            async with replica.writing():  # the active only; acknowledged once the standby has it
                result = await work()
            return result
        except Exception as error:  # every failure becomes a status; none escapes as a trace
            code, message = status_for(error)
            replica = self._replication()
            if replica is not None and code == grpc.StatusCode.FAILED_PRECONDITION and (
                    memory is not self.memory or replica.installing):  # a standby swapping in a snapshot
                code, message = grpc.StatusCode.UNAVAILABLE, "this standby is installing the active's snapshot; retry"
            status = code.name
            if code == grpc.StatusCode.DATA_LOSS:
                self.memory.note_damage(error)
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", method, type(error).__name__, exc_info=error)
        finally:
            self.metrics.observe(method, status, time.perf_counter() - started)
        await context.abort(code, message)

    async def Ingest(self, request, context):
        async def work():
            outcome = await self.memory.ingest(request.content, request.filename, request.uri,
                                               request.ocr, request.chunk_tokens)
            return pb.IngestResponse(document_id=outcome.document_id, created=outcome.created,
                                     resources=outcome.resources, pages=outcome.pages,
                                     format=outcome.format, warnings=list(outcome.warnings),
                                     moment_id=outcome.moment_id)
        return await self._run("Ingest", context, work)

    async def Search(self, request, context):
        async def work():
            f = request.filters
            filters = SearchFilters(uris=frozenset(f.uris) or None, uri_prefix=f.uri_prefix or None,
                                    entity_types=frozenset(f.entity_types) or None,
                                    created_after=_time(f.created_after), created_before=_time(f.created_before))
            mode = _MODES[request.mode]
            results = await self.memory.search(request.query, mode, request.limit or 10, filters,
                                               _fusion(request.fusion))
            return pb.SearchResponse(mode=request.mode, hits=[
                pb.SearchHit(resource_id=r.resource.id, score=r.score, text=r.resource.text,
                             uri=r.resource.uri, document_id=r.resource.document_id,
                             page_start=_span(r.resource)[0], page_end=_span(r.resource)[1],
                             heading_path=list(r.resource.heading_path),
                             semantic_rank=r.semantic_rank, keyword_rank=r.keyword_rank)
                for r in results])
        return await self._run("Search", context, work)

    async def GetDocument(self, request, context):
        async def work():
            document = self.memory.get("document", request.id)
            return document_message(document, [r.id for r in self.memory.repository.list_resources(document.id)])
        return await self._run("GetDocument", context, work)

    async def GetResource(self, request, context):
        async def work():
            return resource_message(self.memory.get("resource", request.id), request.include_embedding)
        return await self._run("GetResource", context, work)

    async def GetEntity(self, request, context):
        async def work():
            return entity_message(self.memory.get("entity", request.id))
        return await self._run("GetEntity", context, work)

    async def GetMoment(self, request, context):
        async def work():
            return moment_message(self.memory.get("moment", request.id))
        return await self._run("GetMoment", context, work)

    async def FindEntities(self, request, context):
        async def work():
            if not request.name.strip():
                raise InvalidRequestError("name is empty")
            return pb.FindEntitiesResponse(
                entities=[entity_message(e) for e in self.memory.repository.find_entities(request.name)])
        return await self._run("FindEntities", context, work)

    async def PutEntity(self, request, context):
        async def work():
            entity = Entity(id=request.id, type=request.type, name=request.name,
                            aliases=list(request.aliases), properties=dict(request.properties))
            return entity_message(self.memory.put_entity(entity))
        return await self._run("PutEntity", context, work)

    async def Link(self, request, context):
        async def work():
            return edge_message(self.memory.link(request.from_id, request.to_id, request.relation,
                                                 dict(request.properties)))
        return await self._run("Link", context, work)

    async def Traverse(self, request, context):
        async def work():
            graph = self.memory.traverse(request.start_id, request.depth or 1, request.relation)
            return graph_message(graph, request.start_id)
        return await self._run("Traverse", context, work)

    async def AddMoment(self, request, context):
        async def work():
            start = _time(request.start)
            if start is None:
                raise InvalidRequestError("a moment needs a start time")
            end = _time(request.end, start)
            moment = Moment(start=start, end=end, type=request.type or "note", summary=request.summary,
                            references=list(request.references))
            return moment_message(self.memory.add_moment(moment))
        return await self._run("AddMoment", context, work)

    async def ListMoments(self, request, context):
        async def work():
            moments = self.memory.list_moments(_time(request.start, _EPOCH), _time(request.end, _FAR_FUTURE),
                                               request.type, request.limit)
            return pb.ListMomentsResponse(moments=[moment_message(m) for m in moments])
        return await self._run("ListMoments", context, work)

    async def Delete(self, request, context):
        async def work():
            if request.kind not in _KINDS:
                raise InvalidRequestError("name the kind of record to delete")
            return pb.DeleteResponse(deleted=self.memory.delete(_KINDS[request.kind], request.id))
        return await self._run("Delete", context, work)

    async def Stats(self, request, context):
        async def work():
            s = self.memory.stats()
            return pb.StatsResponse(
                tenant_id=self.memory.tenant_id, documents=s["documents"], resources=s["resources"],
                entities=s["entities"], moments=s["moments"], storage_bytes=s["storage_bytes"],
                index_entries=s["index_entries"], index_rebuild_seconds=s["index_rebuild_seconds"],
                last_lsn=self.memory.store.last_lsn, dek_seals=s["dek_seals"], dek_seal_limit=s["dek_seal_limit"],
                shipped_lsn=agent.shipped_lsn if (agent := self._backup()) is not None else 0)
        return await self._run("Stats", context, work)

    async def ReplicaStatus(self, request, context):
        async def work():
            replica = self._replication()
            if replica is None:
                return pb.ReplicaStatusResponse(role="single", last_lsn=self.memory.store.last_lsn,
                                                epoch=self.memory.store.epoch)
            return pb.ReplicaStatusResponse(**replica.status())
        return await self._run("ReplicaStatus", context, work)

    async def Failover(self, request, context):
        async def work():
            replica = self._replication()
            if replica is None:
                from .replication.errors import NotReplicatedError

                raise NotReplicatedError()
            if request.timeout_seconds < 0:
                raise InvalidRequestError("timeout_seconds must not be negative")
            return pb.FailoverResponse(**await replica.handover(request.timeout_seconds or 30.0))
        return await self._run("Failover", context, work)

    async def CreateSnapshot(self, request, context):
        async def work():
            agent = self._backup()
            if agent is None:
                raise BackupsNotConfiguredError()
            report = await asyncio.to_thread(agent.request_snapshot)
            info = report.info
            return pb.CreateSnapshotResponse(
                snapshot_id=info.id, lsn=info.lsn, files=len(info.files), uploaded_files=report.uploaded_files,
                uploaded_bytes=report.uploaded_bytes, seconds=report.seconds,
                location=f"{agent.objects.url}/{info.files[0]['object'].rsplit('/', 1)[0]}/" if info.files else "")
        return await self._run("CreateSnapshot", context, work)
