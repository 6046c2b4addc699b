"""Entries a receiver popped that go back to the front of their lists: a shared channel's
that no receive here took, or a list this loop does not receive on. Pushed with the receive
loop's next command, so every list's order holds for the next receiver: one batch per list,
oldest first (a second batch for a list already due goes behind the first; as two LPUSHes the
later one would land in front of the older entries)."""

from __future__ import annotations

from typing import Any

Lists = list[tuple[str, list[bytes]]]  # (list key, entries oldest first)


def lpushes(returns: Lists) -> list[tuple[Any, ...]]:
    """The commands that put ``returns`` back at the front of their lists, in order."""
    return [("LPUSH", key, *reversed(entries)) for key, entries in returns if entries]


class Returns:
    """The entries due to go back, per list in the order they were popped."""

    def __init__(self) -> None:
        self._due: dict[str, list[bytes]] = {}

    def __bool__(self) -> bool:
        return bool(self._due)

    def add(self, returns: Lists) -> None:
        """Entries popped after those of the same lists already due: they go behind them."""
        for key, entries in returns:
            if entries:
                self._due.setdefault(key, []).extend(entries)

    def ahead_of(self, key: str, entries: list[bytes]) -> list[bytes]:
        """``entries`` just popped from ``key``, after those of it due to go back (older, so
        first), which are no longer due."""
        older = self._due.pop(key, None)
        return older + entries if older else entries

    def take(self) -> Lists:
        due, self._due = self._due, {}
        return list(due.items())
