"""The lease record in etcd v3, through etcd's JSON gateway (``etcd3gw``).

Compare-and-swap is one transaction: ``mod_revision`` of the key equal to what was read
(or ``create_revision`` 0 to create), then put. The key never expires on its own: expiry
is the observers' decision (``lease.LeaseElector``), the same as for Kubernetes.

Whoever can write the key decides who is active, so production etcd should have TLS with
client certificates (``ca``, ``cert``, ``key``) and/or authentication (``user``/``password``:
a token from ``/v3/auth/authenticate``, renewed when etcd refuses it), and a role limited to
the tenant's key prefix.
"""
from __future__ import annotations

import base64

from .errors import LeaseUnavailableError
from .lease import LeaseRecord


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class EtcdLease:
    def __init__(self, host: str, port: int, key: str, protocol: str = "http", timeout_s: float = 2.0,
                 ca: str | None = None, cert: str | None = None, key_file: str | None = None,
                 user: str = "", password: str = "") -> None:
        import etcd3gw
        import requests

        self.key = key
        self.session = requests.Session()
        self.client = etcd3gw.client(host=host, port=port, protocol=protocol, timeout=timeout_s, api_path="/v3/",
                                     ca_cert=ca, cert_cert=cert, cert_key=key_file, session=self.session)
        self._where = f"etcd {protocol}://{host}:{port}{key}"
        self._user, self._password = user, password
        if user:
            self._authenticate()

    def _authenticate(self) -> None:
        self.session.headers.pop("Authorization", None)
        try:
            reply = self.client.post(self.client.get_url("/auth/authenticate"),
                                     json={"name": self._user, "password": self._password})
        except Exception as error:
            raise LeaseUnavailableError(f"{self._where}: authenticating as {self._user}: {error}") from None
        self.session.headers["Authorization"] = reply["token"]

    def _call(self, method, *args, **kwargs):
        """One etcd call; with a user, a refused (expired) token is renewed once."""
        try:
            return method(*args, **kwargs)
        except Exception as error:
            if self._user and "token" in str(error).lower():
                self._authenticate()
                try:
                    return method(*args, **kwargs)
                except Exception as again:
                    raise LeaseUnavailableError(f"{self._where}: {again}") from None
            raise LeaseUnavailableError(f"{self._where}: {error}") from None

    def describe(self) -> str:
        return self._where

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        found = self._call(self.client.get, self.key, metadata=True)
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
        return bool(self._call(self.client.transaction, txn).get("succeeded", False))
