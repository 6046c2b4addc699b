"""``symmetric_encryption_keys``: payloads are Fernet tokens in Redis, as in channels_redis.

Each key is any string; it is hashed to a Fernet key the way channels_redis does it, so both
can share keys. The first key encrypts; every key decrypts, so keys rotate by prepending.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from layer.exceptions import InvalidOption


class UndecryptableMessage(ValueError):
    """A message was encrypted with a key that is not in ``symmetric_encryption_keys``."""


def _fernet(key: str | bytes) -> Fernet:
    raw = key.encode() if isinstance(key, str) else key
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


class Crypter:
    """Encrypts with the first key, decrypts with any."""

    def __init__(self, keys: object) -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
            raise InvalidOption(
                f"symmetric_encryption_keys must be a non-empty list of key strings, got {keys!r}"
            )
        for key in keys:
            if not isinstance(key, str | bytes) or not key:
                raise InvalidOption(
                    f"symmetric_encryption_keys entries must be non-empty strings, got {key!r}"
                )
        self._multi = MultiFernet([_fernet(key) for key in keys])

    def encrypt(self, payload: bytes) -> bytes:
        return self._multi.encrypt(payload)

    def decrypt(self, token: bytes, channel: str) -> bytes:
        try:
            return self._multi.decrypt(token)
        except InvalidToken:
            raise UndecryptableMessage(
                f"a message on channel {channel!r} cannot be decrypted with any of "
                "symmetric_encryption_keys (sent with a different key?)"
            ) from None
