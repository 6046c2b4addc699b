"""``services.memory``: the malloc settings a server process runs with (real glibc, a real
child process: mallopt changes the process it runs in)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.services.procs import ROOT

PROBE = """
import ctypes, sys
from services import memory
applied = memory.keep_freed_memory()
class Info(ctypes.Structure):  # struct mallinfo2: the heap's free bytes at its top
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblkhd
blocks = [bytearray(200_000) for _ in range(40)]  # 8 MB on the heap (below the mmap threshold)
mapped = libc.mallinfo2().hblkhd - before
del blocks
print(applied, mapped, libc.mallinfo2().keepcost)
"""


def probe(**env: str) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def test_a_server_keeps_freed_memory_for_the_next_request() -> None:
    applied, mapped, kept = probe()
    assert applied
    assert mapped == 0  # 200 KB objects come from the heap, not one mmap each
    assert kept > 4_000_000  # the freed top of the heap stays for the next allocations


def test_the_operators_malloc_settings_win() -> None:
    applied, _, kept = probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied
    assert kept < 1_000_000  # glibc trimmed the heap as told
