"""Checks for constructor options, so a bad config value fails early with the option's name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import translate
from typing import Any

from layer.exceptions import InvalidOption

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def positive_number(name: str, value: object) -> float:
    """A number of seconds (or similar) that must be > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidOption(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def non_negative_number(name: str, value: object) -> float:
    """A number of seconds that may be 0 (the feature off)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidOption(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """A count that must be an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOption(f"{name} must be an integer >= 1, got {value!r}")
    return value


def byte_size(name: str, value: object) -> int:
    """A size in bytes: an int, or a string like ``"256MB"``/``"64MiB"`` (binary multiples)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return positive_int(name, value)
    if isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        number, unit = match.groups()
        size = int(float(number) * _UNITS[unit[:1].upper()])
        if size >= 1:
            return size
    raise InvalidOption(f"{name} must be a byte count or a size like '256MB', got {value!r}")


def capacity_patterns(
    name: str, value: Mapping[Any, Any] | Iterable[Any] | None
) -> list[tuple[re.Pattern[str], int]]:
    """``{pattern: capacity}`` (or pairs) to compiled regexes; glob strings are translated."""
    if value is None:
        return []
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        items = [(pattern, count) for pattern, count in pairs]
    except (TypeError, ValueError):
        raise InvalidOption(
            f"{name} must be a mapping of pattern -> capacity, got {value!r}"
        ) from None
    compiled: list[tuple[re.Pattern[str], int]] = []
    for pattern, count in items:
        if isinstance(pattern, str):
            regex = re.compile(translate(pattern))
        elif isinstance(pattern, re.Pattern):
            regex = pattern
        else:
            raise InvalidOption(f"{name} keys must be globs or compiled regexes: {pattern!r}")
        compiled.append((regex, positive_int(f"{name}[{pattern!r}]", count)))
    return compiled
