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


class LeaseUnavailableError(Exception):
    """The coordination service could not be reached or answered an error (retried)."""


class ReplicationError(Exception):
    """The replication stream failed (the standby reconnects)."""
