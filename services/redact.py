"""What ``check-config`` (and anything else that prints a layer config) may show of a secret.

A config holds passwords in three shapes: a URL's userinfo (``redis://user:pw@host``), an option
named like a password (``password``, ``sentinel_kwargs.password``, redis-py's ``ssl_password``)
and the Fernet keys of ``symmetric_encryption_keys``. Each is replaced by ``***`` at any depth,
so printing a config, or a log line naming a shard, never shows one; what is masked is said
(``***``, or how many keys), so an operator still sees that one is set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Option names whose values are secrets, wherever they appear (compared lower-case).
SECRET_OPTIONS = frozenset(
    {"password", "sentinel_password", "ssl_password", "symmetric_encryption_keys", "secret"}
)
# scheme://user:password@  ->  scheme://user:***@   (also a password without a user)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@", re.I)


def is_secret(key: object) -> bool:
    """Whether an option of this name holds a secret."""
    name = str(key).lower()
    return name in SECRET_OPTIONS or name.endswith("_password")


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)


def redacted(value: Any, key: object = None) -> Any:
    """``value`` (a config or any part of it) with every secret masked, structure kept."""
    if key is not None and is_secret(key):
        return _mask(value)
    if isinstance(value, Mapping):
        return {k: redacted(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redacted(item) for item in value)
    if isinstance(value, str):
        return mask_url(value)
    return value


def _mask(value: Any) -> Any:
    if value in (None, "", [], ()):
        return value  # nothing set: say so
    if isinstance(value, list | tuple):
        return f"{MASK} ({len(value)} key{'s' if len(value) != 1 else ''})"
    return MASK
