"""AES-256-GCM: sealing values with DEKs and wrapping keys with the KEK.

A sealed value is ``version (1) | DEK id (4, big-endian) | nonce (12) | ciphertext | tag (16)``.
Its associated data is ``version | DEK id | tenant | 0 | column family | 0 | key``, so a
value opens only at the exact tenant, column family and key it was written to, and
its header cannot be edited to point at another DEK. Nonces are random (96 bits): keep
each DEK under 2**32 seals (rotate) to stay inside GCM's random-nonce bound.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from percolate_node.store.errors import TamperedValueError

FORMAT_VERSION = 1
WRAP_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(">BI")
HEADER_BYTES = _HEADER.size
_BODY = HEADER_BYTES + NONCE_BYTES
_MIN_SEALED = _BODY + TAG_BYTES


def sealed_dek_id(sealed: bytes) -> int | None:
    """The DEK id a sealed value names, read without decrypting (None if malformed)."""
    if len(sealed) < _MIN_SEALED or sealed[0] != FORMAT_VERSION:
        return None
    return int.from_bytes(sealed[1:HEADER_BYTES], "big")


class Sealer:
    """Seals and opens one tenant's values; the highest DEK id seals new writes.

    Its keys never change: the store builds a new Sealer when the keyring changes, so
    readers on other threads always see one consistent set. Ciphers and associated-data
    prefixes are cached by (column family, 5-byte header): one dict hit and one AEAD call
    per value.
    """

    def __init__(self, tenant_id: str, deks: Mapping[int, bytes]) -> None:
        self.active = max(deks)
        self._tenant = tenant_id.encode()
        self._ciphers = {_HEADER.pack(FORMAT_VERSION, dek_id): AESGCM(dek) for dek_id, dek in deks.items()}
        self._active_header = _HEADER.pack(FORMAT_VERSION, self.active)
        self._openers: dict[tuple[str, bytes], tuple[AESGCM, bytes]] = {}

    def __contains__(self, dek_id: int) -> bool:
        return _HEADER.pack(FORMAT_VERSION, dek_id) in self._ciphers

    def seal(self, cf: str, key: bytes, value: bytes, nonce: bytes) -> bytes:
        """Seal with the active DEK; ``nonce`` is 12 fresh bytes from ``nonces()``, never reused."""
        header = self._active_header
        cipher, context = self._openers.get((cf, header)) or self._opener(cf, key, header)
        return b"".join((header, nonce, cipher.encrypt(nonce, value, context + key)))

    def open(self, cf: str, key: bytes, sealed: bytes) -> bytes:
        header = sealed[:HEADER_BYTES]
        cipher, context = self._openers.get((cf, header)) or self._opener(cf, key, header)
        try:
            return cipher.decrypt(sealed[HEADER_BYTES:_BODY], memoryview(sealed)[_BODY:], context + key)
        except (InvalidTag, ValueError):  # ValueError: truncated below a nonce and a tag
            raise TamperedValueError(cf, key, "authentication tag mismatch") from None

    def _opener(self, cf: str, key: bytes, header: bytes) -> tuple[AESGCM, bytes]:
        """The cipher and associated-data prefix for values with this header in ``cf``."""
        if len(header) < HEADER_BYTES or header[0] != FORMAT_VERSION:
            raise TamperedValueError(cf, key, "malformed header")
        cipher = self._ciphers.get(header)
        if cipher is None:
            dek_id = int.from_bytes(header[1:], "big")
            raise TamperedValueError(cf, key, f"sealed with DEK {dek_id}, which this keyring does not hold")
        opener = self._openers[(cf, header)] = (cipher, header + self._tenant + b"\0" + cf.encode() + b"\0")
        return opener


def nonces(count: int) -> Iterator[bytes]:
    """``count`` random 96-bit nonces from one read of the OS CSPRNG (a syscall per batch, not per value)."""
    pool = os.urandom(NONCE_BYTES * count)
    return (pool[i:i + NONCE_BYTES] for i in range(0, len(pool), NONCE_BYTES))


def wrap(kek: bytes, secret: bytes, context: bytes) -> bytes:
    """``secret`` encrypted under the KEK, bound to ``context`` (tenant and record name)."""
    nonce = os.urandom(NONCE_BYTES)
    version = bytes([WRAP_VERSION])
    return version + nonce + AESGCM(kek).encrypt(nonce, secret, version + context)


def unwrap(kek: bytes, blob: bytes, context: bytes) -> bytes | None:
    """The secret inside ``blob``, or None when this KEK (or context) does not open it."""
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != WRAP_VERSION:
        return None
    try:
        return AESGCM(kek).decrypt(blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:], blob[:1] + context)
    except InvalidTag:
        return None
