"""What one segment holds, told to an operator (``layerkit check-config``): its geometry, and
how many messages of each encoded size fit at once (``docs/ipc.md``, Message storage)."""

from __future__ import annotations

from layer.ipc.extents import Extents
from layer.ipc.layout import Geometry


def sizing(g: Geometry, extents: Extents, max_message_size: int) -> list[str]:
    arena = g.n_slots * g.slot_size
    lines = [
        f"segment: {_size(g.size)}, {g.n_slots:,} slots of {g.slot_size} B ({_size(arena)}),"
        f" extents up to {_size(g.slot_size << g.max_order)}, {g.n_entries:,} entries",
        "holds at once, by encoded message size:",
    ]
    for n in (extents.one_slot, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 1 << 20):
        if n <= max_message_size:
            lines.append(f"  {_size(n):>8}: {g.n_slots // extents.slots_for(n):>10,}")
    return lines


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} B"
