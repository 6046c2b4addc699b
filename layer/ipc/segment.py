"""Creating, attaching to and removing a prefix's shared memory and doorbell FIFOs.

Initialisation happens under ``flock`` on the segment, and the magic word is written last: eight
processes starting at once see either nothing (and the first one initialises while the others
wait on the lock) or a complete header, never half of one. Space is reserved with
``posix_fallocate`` so a full ``/dev/shm`` is a clear error at start-up, not a ``SIGBUS`` later.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import posix_ipc

from layer.exceptions import InvalidOption
from layer.ipc.layout import (
    GEOMETRY,
    GEOMETRY_OFF,
    HEADER_SIZE,
    MAGIC,
    MAGIC_OFF,
    MAX_WAKERS,
    U64,
    VERSION,
    Geometry,
)

Format = Callable[[mmap.mmap, Geometry], None]  # writes a new segment's empty structure

SHM_DIR = "/dev/shm"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FLOCK = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len, pid
_LIVENESS_BASE = 1 << 32  # byte-range locks past the data mark live waker records


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidOption(
            f"prefix must be 1-64 ASCII letters, digits, '-' or '_', got {prefix!r}"
        )
    return prefix


def shm_name(prefix: str) -> str:
    return f"/{prefix}.ipc"


def identity(fd: int) -> str:
    """A short name of the segment open on ``fd``: the same in every process attached to it
    (containers of one pod included), different for any other segment on any host. Built from
    the kernel's random boot id, the file system (each pod's ``/dev/shm`` is its own tmpfs)
    and the inode, so nothing has to be configured or stored for it."""
    try:
        boot = Path(_BOOT_ID).read_text().strip()
    except OSError:  # no /proc: the host name is the next best
        boot = socket.gethostname()
    info = os.fstat(fd)
    key = f"{boot}:{info.st_dev}:{info.st_ino}".encode()
    return hashlib.blake2b(key, digest_size=5).hexdigest()


@dataclass
class Segment:
    """An attached segment: its descriptor (also the lock), mapping and geometry."""

    prefix: str
    fd: int
    mm: mmap.mmap
    geometry: Geometry
    initialised: bool  # this attach wrote the empty structure (exactly one of racing starts)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


def attach(prefix: str, size: int, slot_size: int, mode: int, initialise: Format) -> Segment:
    """Open the segment of ``prefix``, creating it if needed; ``initialise`` (the storage's)
    writes a new one's empty structure, then the magic word goes last, so a crash in between
    leaves "not initialised"."""
    name = shm_name(prefix)
    created = initialised = False
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode)
        os.fchmod(shm.fd, mode)  # the umask must not strip group access
        created = True
    except posix_ipc.ExistentialError:
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.PermissionsError as exc:
            raise InvalidOption(
                f"cannot open {SHM_DIR}{name}: {exc}; it belongs to another user "
                "(set group_access and a shared group, or use another prefix)"
            ) from exc
    fd = shm.fd
    try:
        check_owner(fd, f"{SHM_DIR}{name}", mode, prefix)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            geometry = _read_geometry(fd, prefix)
            if geometry is None:
                geometry = Geometry.plan(size, slot_size)
                _reserve(fd, prefix, size)
                mm = mmap.mmap(fd, size)
                initialise(mm, geometry)
                U64.pack_into(mm, MAGIC_OFF, MAGIC)
                initialised = True
            else:
                mm = mmap.mmap(fd, geometry.size)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        if created:
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(name)
        raise
    return Segment(prefix, fd, mm, geometry, initialised)


def check_owner(fd: int, where: str, mode: int, prefix: str) -> None:
    """Refuse an object that another local user could have planted, or can read.

    ``/dev/shm`` is writable by every user: whoever creates ``<prefix>.ipc`` first owns it, and
    a segment made by someone else (mode 0666, say) would hand them every header, cookie and
    body, and the journal to corrupt. As PostgreSQL and Redis do with their files, attach only
    to what this user owns (or, with ``group_access``, what a member of a shared group made) with
    exactly the layer's mode.
    """
    info = os.fstat(fd)
    perms = stat.S_IMODE(info.st_mode)
    mine = info.st_uid == os.geteuid()
    shared = bool(mode & 0o070) and info.st_gid in (os.getegid(), *os.getgroups())
    if perms != mode or not (mine or shared):
        owner = "group" if mode & 0o070 else "user"
        raise InvalidOption(
            f"{where} belongs to uid {info.st_uid} (gid {info.st_gid}) with mode {perms:04o}; "
            f"this process (uid {os.geteuid()}) attaches only to objects its {owner} owns with "
            f"mode {mode:04o} (group_access: 0660 in a shared group). If another user made it, "
            f"do not use it: remove it as root (python -m layer.ipc clean --prefix {prefix} "
            "--force) or choose another prefix"
        )


def _read_geometry(fd: int, prefix: str) -> Geometry | None:
    """The geometry of an initialised segment, or None if it is new or half-initialised."""
    if os.fstat(fd).st_size < HEADER_SIZE:
        return None
    head = os.pread(fd, GEOMETRY_OFF + GEOMETRY.size, 0)
    if U64.unpack_from(head, MAGIC_OFF)[0] != MAGIC:
        return None
    values = GEOMETRY.unpack_from(head, GEOMETRY_OFF)
    if values[0] != VERSION:
        raise InvalidOption(
            f"{SHM_DIR}{shm_name(prefix)} has layout version {values[0]}, this code needs "
            f"{VERSION}; stop its users and run `python -m layer.ipc clean --prefix {prefix}`"
        )
    geometry = Geometry.unpack(values)
    try:
        planned = Geometry.plan(geometry.size, geometry.slot_size)
    except ValueError:
        planned = None
    if planned != geometry or os.fstat(fd).st_size < geometry.size:
        raise InvalidOption(
            f"{SHM_DIR}{shm_name(prefix)} has a corrupted header (its geometry is not one this "
            f"layout makes); stop its users and run `python -m layer.ipc clean --prefix {prefix}`"
        )
    return geometry


def _reserve(fd: int, prefix: str, size: int) -> None:
    """Make the segment ``size`` bytes backed by real pages, or explain how to get room."""
    stat = os.statvfs(SHM_DIR)
    if size > stat.f_bavail * stat.f_frsize:
        raise InvalidOption(shm_too_small(prefix, size))
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.ftruncate(fd, 0)
        raise InvalidOption(shm_too_small(prefix, size, exc)) from exc


def shm_too_small(prefix: str, size: int, exc: OSError | None = None) -> str:
    stat = os.statvfs(SHM_DIR)
    total, free = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
    want = max(size * 2, 512 << 20) >> 20
    return (
        f"IPC layer {prefix!r} needs size={_mib(size)} of shared memory but {SHM_DIR} is "
        f"{_mib(total)} with {_mib(free)} free ({exc.strerror if exc else 'too small'}). "
        f"Raise it: `docker run --shm-size={want}m`, compose `shm_size: {want}m`, Kubernetes "
        f"an `emptyDir: {{medium: Memory, sizeLimit: {want}Mi}}` volume mounted at {SHM_DIR}; "
        "or lower the layer's `size`."
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f}MiB"


# -- liveness of waker records: an OFD byte lock, dropped by the kernel when its holder dies ----


def try_hold(fd: int, waker: int) -> bool:
    """Take waker record ``waker``'s liveness lock; False if a live instance holds it."""
    try:
        fcntl.fcntl(
            fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, _LIVENESS_BASE + waker, 1, 0)
        )
    except OSError:
        return False
    return True


def release(fd: int, waker: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, 0, _LIVENESS_BASE + waker, 1, 0))


def is_held(fd: int, waker: int) -> bool:
    """True while some live instance (in any process or pid namespace) holds ``waker``."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, 0, _LIVENESS_BASE + waker, 1, 0)
    result = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    return bool(_FLOCK.unpack(result)[0] != fcntl.F_UNLCK)


def holders(fd: int, count: int = MAX_WAKERS) -> int:
    """How many live layer instances (in any process) are attached to the segment of ``fd``,
    not counting those attached through ``fd`` itself (a lock never conflicts with its own
    open file description)."""
    return sum(is_held(fd, waker) for waker in range(count))


def live_instances(prefix: str) -> int:
    """Live instances attached to ``prefix``'s segment (0 when there is none)."""
    try:
        shm = posix_ipc.SharedMemory(shm_name(prefix))
    except posix_ipc.ExistentialError:
        return 0
    try:
        return holders(shm.fd)
    finally:
        os.close(shm.fd)


# -- removal -----------------------------------------------------------------------------------


def unlink(prefix: str) -> list[str]:
    """Remove ``prefix``'s segment and doorbells; return what was removed.

    Semaphores ``sem.<prefix>.w<N>`` of layout version 1 (before doorbells) go too, so the
    upgrade's ``clean`` leaves nothing behind.
    """
    removed: list[str] = []
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(shm_name(prefix))
        removed.append(shm_name(prefix))
    owned = re.compile(rf"(sem\.)?{re.escape(prefix)}\.w\d+")
    for name in sorted(os.listdir(SHM_DIR)):
        if owned.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{SHM_DIR}/{name}")
                removed.append(f"/{name}")
    return removed
