"""The lease record in etcd v3, through etcd's JSON gateway (``etcd3gw``).

Compare-and-swap is one transaction: ``mod_revision`` of the key equal to what was read
(or ``create_revision`` 0 to create), then put. The key never expires on its own: expiry
is the observers' decision (``lease.LeaseElector``), the same as for Kubernetes.
"""
from __future__ import annotations

import base64

from .errors import LeaseUnavailableError
from .lease import LeaseRecord


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class EtcdLease:
    def __init__(self, host: str, port: int, key: str, protocol: str = "http", timeout_s: float = 2.0) -> None:
        import etcd3gw

        self.key = key
        self.client = etcd3gw.client(host=host, port=port, protocol=protocol, timeout=timeout_s, api_path="/v3/")
        self._where = f"etcd {protocol}://{host}:{port}{key}"

    def describe(self) -> str:
        return self._where

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        try:
            found = self.client.get(self.key, metadata=True)
        except Exception as error:
            raise LeaseUnavailableError(f"{self._where}: {error}") from None
        if not found:
            return None, None
        value, meta = found[0]
        return LeaseRecord.from_json(value), str(meta["mod_revision"])

    def write(self, record: LeaseRecord, version: str | None) -> bool:
        key = _b64(self.key)
        compare = ({"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0} if version is None
                   else {"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": int(version)})
        txn = {"compare": [compare], "success": [{"request_put": {"key": key, "value": _b64(record.to_json())}}],
               "failure": []}
        try:
            return bool(self.client.transaction(txn).get("succeeded", False))
        except Exception as error:
            raise LeaseUnavailableError(f"{self._where}: {error}") from None
