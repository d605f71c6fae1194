"""Errors of replication and the lease; the node maps them to gRPC codes in ``errors.status_for``."""
from __future__ import annotations

import grpc

from percolate_node.errors import NodeError


class NotActiveError(NodeError):
    """This replica is not the active one (standby, or its lease ran out): clients retry elsewhere."""

    code = grpc.StatusCode.UNAVAILABLE


class NoStandbyError(NodeError):
    """Strict mode: no standby confirms writes, so none is accepted."""

    code = grpc.StatusCode.UNAVAILABLE


class HandoverError(NodeError):
    """A planned handover cannot happen now (no standby connected, or it did not catch up in
    time); this replica stays the active one and nothing changed."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotReplicatedError(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("this node has no standby and no lease (PERCOLATE_NODE_HA_LEASE_URL is not set)")


class LeaseUnavailableError(Exception):
    """The coordination service could not be reached or answered an error (retried)."""


class ReplicationError(Exception):
    """The replication stream failed (the standby reconnects)."""
