"""Entries a receiver popped that go back to the front of their lists: a shared channel's
that no receive here took, or a list this loop does not receive on. Pushed with the receive
loop's next command, so every list's order holds for the next receiver: per list, older
entries first (the first pushed to the front ends up last)."""

from __future__ import annotations

from typing import Any

Lists = list[tuple[str, list[bytes]]]  # (list key, entries oldest first)


def lpushes(returns: Lists) -> list[tuple[Any, ...]]:
    """The commands that put ``returns`` back at the front of their lists, in order."""
    return [("LPUSH", key, *reversed(entries)) for key, entries in returns if entries]


class Returns:
    """The entries due to go back, per list in the order they were popped."""

    def __init__(self) -> None:
        self._due: Lists = []

    def __bool__(self) -> bool:
        return bool(self._due)

    def add(self, returns: Lists) -> None:
        self._due += returns

    def behind(self, key: str, entries: list[bytes]) -> None:
        """``entries`` popped after those of ``key`` already due: they go back behind them."""
        for i, (other, older) in enumerate(self._due):
            if other == key:
                self._due[i] = (key, older + entries)
                return
        self._due.append((key, entries))

    def ahead_of(self, key: str, entries: list[bytes]) -> list[bytes]:
        """``entries`` just popped from ``key``, after those of it due to go back (older, so
        first), which are no longer due."""
        if not any(other == key for other, _ in self._due):
            return entries
        older = [e for other, es in self._due if other == key for e in es]
        self._due = [(other, es) for other, es in self._due if other != key]
        return older + entries

    def take(self) -> Lists:
        due, self._due = self._due, []
        return due
