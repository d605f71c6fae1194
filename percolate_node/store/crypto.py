"""AES-256-GCM: sealing values with DEKs and wrapping keys with the KEK.

A sealed value is ``version (1) | DEK id (4, big-endian) | nonce (12) | ciphertext | tag (16)``
(written and read by the ``_gcm`` extension; the KEK wrapping below uses ``cryptography``).
Its associated data is ``version | DEK id | tenant | 0 | column family | 0 | key``, so a
value opens only at the exact tenant, column family and key it was written to, and
its header cannot be edited to point at another DEK. Nonces are random (96 bits): each
DEK must stay under 2**32 seals (NIST SP 800-38D); the store counts seals per DEK in its
keyring and rotates well before that (``EncryptedStore``, ``seal_limit``).
"""
from __future__ import annotations

import os
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from percolate_node.store import _gcm
from percolate_node.store.errors import StoreError, TamperedValueError

FORMAT_VERSION = 1
WRAP_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 5  # version and DEK id
_MIN_SEALED = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
MAX_VALUE_BYTES = _gcm.MAX_VALUE_BYTES  # about 1 GiB: the most a value may hold so that it also opens
CIPHER_ENV = "PERCOLATE_STORE_CIPHER"
"""How values are sealed, read once at import: ``auto`` (the default) uses OpenSSL's GCM mode
over AES-NI for values up to 4 KB where the CPU has it (``_aes_ni.h``) and EVP for the rest;
``evp`` keeps all sealing of values and change-log records in the system OpenSSL's EVP,
which an OpenSSL FIPS-provider configuration governs (the AES-NI path runs OpenSSL's GCM
code outside its providers). That alone does not make a deployment FIPS-bound: the KEK
wrapping below uses ``cryptography``'s own OpenSSL, and gRPC's TLS its own library. The
sealed bytes are the same either way."""


def _choose_cipher(env: Mapping[str, str] = os.environ) -> str:
    """Apply ``PERCOLATE_STORE_CIPHER`` to the keys made from here on; the engine they get.
    ``StoreError`` naming the variable for anything but auto or evp."""
    raw = env.get(CIPHER_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in ("auto", "evp"):
        raise StoreError(f"{CIPHER_ENV}={raw!r} is not a cipher setting: use auto (the default) or evp")
    return "aes-ni" if _gcm._use_aes_ni(choice == "auto") else "evp"


try:
    _choose_cipher()
    _CIPHER_ERROR: StoreError | None = None
except StoreError as _error:  # raised when a store makes its keys: commands that open none still run
    _CIPHER_ERROR = _error


def check_cipher_setting() -> None:
    """``StoreError`` if ``PERCOLATE_STORE_CIPHER`` held something other than auto or evp."""
    if _CIPHER_ERROR is not None:
        raise _CIPHER_ERROR


def sealed_dek_id(sealed: bytes) -> int | None:
    """The DEK id a sealed value names, read without decrypting (None if malformed)."""
    if len(sealed) < _MIN_SEALED or sealed[0] != FORMAT_VERSION:
        return None
    return int.from_bytes(sealed[1:HEADER_BYTES], "big")


class Sealer:
    """Seals and opens one tenant's values; the highest DEK id seals new writes.

    Its keys never change: the store builds a new Sealer when the keyring changes, so
    readers on other threads always see one consistent set. The AEAD work is one call
    into ``_gcm`` (OpenSSL contexts kept per DEK, nonces from OpenSSL's CSPRNG); this
    class adds the per-column-family context and turns failures into
    ``TamperedValueError`` naming the key, and any other failure into ``StoreError``.
    ``budget`` limits how many values it may seal (see ``_gcm``); -1: no limit.
    """

    def __init__(self, tenant_id: str, deks: Mapping[int, bytes], budget: int = -1) -> None:
        check_cipher_setting()  # a wrong PERCOLATE_STORE_CIPHER: no keys, nothing sealed
        self.active = max(deks)
        self.tenant_id = tenant_id
        self.keys = _gcm.Keys(dict(deks), self.active, budget)  # .seal(context, key, value): the store's hot path
        self._dek_ids = frozenset(deks)
        self._contexts: dict[str, bytes] = {}

    def __contains__(self, dek_id: int) -> bool:
        return dek_id in self._dek_ids

    def seal(self, cf: str, key: bytes, value: bytes) -> bytes:
        """``value`` sealed with the active DEK and a fresh random nonce, bound to (tenant, cf, key)."""
        try:
            return self.keys.seal(self._context(cf), key, value)
        except (TypeError, OverflowError, RuntimeError, MemoryError) as error:
            raise seal_error(cf, key, error) from None

    def open(self, cf: str, key: bytes, sealed: bytes) -> bytes:
        try:
            return self.keys.open(self._contexts.get(cf) or self._context(cf), key, sealed)
        except ValueError as error:  # tag mismatch, malformed, truncated or oversized, unknown DEK
            raise TamperedValueError(cf, key, str(error)) from None
        except (TypeError, OverflowError, RuntimeError, MemoryError) as error:  # not bytes; destroyed; OpenSSL
            raise StoreError(f"cannot open {cf}/{_hex(key)}: {error}") from None

    def destroy(self) -> None:
        """Cleanse every key schedule now: this sealer (and whoever still holds it) seals and opens nothing more."""
        self.keys.destroy()

    def _context(self, cf: str) -> bytes:
        context = self._contexts.get(cf)
        if context is None:
            context = self._contexts[cf] = sealing_context(self.tenant_id, cf)
        return context


def seal_error(cf: str, key: object, error: BaseException) -> StoreError:
    """The store's error for a value the extension refused to seal."""
    return StoreError(f"cannot seal {cf}/{_hex(key)}: {error}")


def _hex(key: object) -> str:
    return key.hex() if isinstance(key, bytes) else repr(key)


def sealing_context(tenant_id: str, cf: str) -> bytes:
    """The associated data between a sealed value's header and its key: ``tenant 0 cf 0``."""
    return tenant_id.encode() + b"\0" + cf.encode() + b"\0"


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
