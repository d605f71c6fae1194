"""One small interface over object storage, with create-only writes.

Targets (by URL): a local folder (``file:///path`` or a plain path; the embedded default),
S3-compatible storage (``s3://bucket/prefix``: any endpoint, region and credentials from
the usual ``AWS_*`` environment or given options), and what obstore gives besides
(``gs://``, ``az://``). Every write is create-only (a conditional put), so a writer can
never overwrite an object, including one written by a newer primary; deletion exists for
retention only. Keys are ``/``-separated and relative to the store's root.
"""
from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from percolate_common.files import sync_folder
from percolate_node.durability.errors import (ObjectExistsError, ObjectMissingError,
                                              ObjectStoreUnavailableError)


class ObjectStore(Protocol):
    url: str

    def put_new(self, key: str, data: bytes) -> None:
        """Write ``key`` only if absent; ``ObjectExistsError`` otherwise."""

    def get(self, key: str) -> bytes:
        """The object's bytes; ``ObjectMissingError`` if absent."""

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (retention only); absent is fine."""


class LocalObjectStore:
    """A folder as an object store: create-only by ``link``, which fails on an existing name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ObjectMissingError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put_new(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".partial-", dir=path.parent)
        except OSError as error:
            raise ObjectStoreUnavailableError(f"cannot write under {path.parent}: {error}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)  # atomic and create-only: the name appears whole or not at all
            except FileExistsError:
                raise ObjectExistsError(f"{self.url}/{key} already exists; objects are never overwritten") from None
            sync_folder(path.parent)
        except OSError as error:
            raise ObjectStoreUnavailableError(f"cannot write {path}: {error}") from None
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(f"{self.url}/{key} is missing") from None
        except OSError as error:
            raise ObjectStoreUnavailableError(f"cannot read {self.url}/{key}: {error}") from None

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return []
        keys = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith(".partial-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass


class RemoteObjectStore:
    """S3-compatible, GCS or Azure storage through obstore (conditional create on every write)."""

    def __init__(self, url: str, options: dict[str, str] | None = None) -> None:
        from obstore.store import from_url

        self.url = url.rstrip("/")
        options = dict(options or {})
        client_options = {}
        endpoint = str(options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL")
                       or os.environ.get("AWS_ENDPOINT") or "")
        self.endpoint = endpoint
        allow = options.pop("allow_http", "") or os.environ.get("AWS_ALLOW_HTTP", "")
        if allow.lower() in ("1", "true") or endpoint.startswith("http://"):
            client_options["allow_http"] = "true"  # a plain-HTTP endpoint (a local S3 server) was asked for
        client_options["timeout"] = options.pop("timeout", "30s")
        retry = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
        try:
            self._store = from_url(self.url, client_options=client_options, retry_config=retry,
                                   **{k: v for k, v in options.items() if v})
        except Exception as error:  # bad URL or options: say which
            raise ObjectStoreUnavailableError(f"cannot configure object store {self.url}: {error}") from None

    def put_new(self, key: str, data: bytes) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            raise ObjectExistsError(f"{self.url}/{key} already exists; objects are never overwritten") from None
        except Exception as error:
            raise ObjectStoreUnavailableError(f"cannot write {self.url}/{key}: {_first_line(error)}") from None

    def get(self, key: str) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissingError(f"{self.url}/{key} is missing") from None
        except Exception as error:
            raise ObjectStoreUnavailableError(f"cannot read {self.url}/{key}: {_first_line(error)}") from None

    def list(self, prefix: str) -> list[str]:
        import obstore

        try:
            return sorted(meta["path"] for batch in obstore.list(self._store, prefix=prefix or None)
                          for meta in batch)
        except Exception as error:
            raise ObjectStoreUnavailableError(f"cannot list {self.url}/{prefix}: {_first_line(error)}") from None

    def delete(self, key: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            pass
        except Exception as error:
            raise ObjectStoreUnavailableError(f"cannot delete {self.url}/{key}: {_first_line(error)}") from None


def open_object_store(url: str, options: dict[str, str] | None = None) -> ObjectStore:
    """The store for ``url``: a path or ``file://`` URL is a local folder, anything else obstore's."""
    parsed = urlparse(url)
    if not parsed.scheme or parsed.scheme == "file":
        return LocalObjectStore(Path(parsed.path if parsed.scheme else url))
    return RemoteObjectStore(url, options)



def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
