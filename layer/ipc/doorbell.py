"""Doorbells: one named FIFO per waker record, the wake path between processes.

A sender that fires a waiter node writes one byte to the owner's FIFO; the owner's event loop
watches the FIFO directly (``loop.add_reader``), so a wake is one ``write`` and one ``epoll``
return: no thread, no hand-off, no busy-spinning (an idle owner sleeps in ``epoll_wait``). A
FIFO lives in ``/dev/shm`` next to the segment, so it works wherever the segment is shared
(containers of one pod sharing ``/dev/shm``, whatever their pid namespaces).

The owner opens its FIFO ``O_RDWR``, so it is always its own writer: reads never see EOF and a
sender's non-blocking open never fails while the owner lives. Senders keep one write descriptor
per record. ``ENXIO`` (no reader: the owner is gone) and ``EPIPE`` (it died since) drop the wake,
as the reaper passes on wakes of dead instances; ``EAGAIN`` (the pipe is full) means bytes are
already waiting, so the owner will wake anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING

from layer.exceptions import InvalidOption
from layer.ipc.layout import NIL
from layer.ipc.segment import SHM_DIR, check_owner, is_held

if TYPE_CHECKING:
    from layer.ipc.registry import Registry

_CHIME = b"\0"


def path(prefix: str, waker: int) -> str:
    return f"{SHM_DIR}/{prefix}.w{waker}"


def _check_fifo(fd: int, where: str) -> None:
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise RuntimeError(f"{where} is not a FIFO; remove it (python -m layer.ipc clean)")


class Doorbell:
    """The owner's end: create (or reuse) the record's FIFO and open it for reading."""

    def __init__(self, prefix: str, waker: int, mode: int) -> None:
        self.path = path(prefix, waker)
        try:
            os.mkfifo(self.path, mode)
            os.chmod(self.path, mode)  # the umask must not strip group access
        except FileExistsError:
            pass  # an earlier owner of the record made it: checked below like any other
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError as exc:
            raise InvalidOption(
                f"cannot open {self.path}: {exc.strerror}; it belongs to another user "
                "(set group_access and a shared group, or use another prefix)"
            ) from exc
        _check_fifo(self.fd, self.path)
        try:
            check_owner(self.fd, self.path, mode, prefix)
        except InvalidOption:
            os.close(self.fd)
            raise
        self.drain()  # chimes meant for the record's previous owner

    def drain(self) -> None:
        """Consume every pending chime (one read: chimes are coalesced by the ring)."""
        with contextlib.suppress(BlockingIOError):
            while len(os.read(self.fd, 4096)) == 4096:
                pass

    def close(self) -> None:
        os.close(self.fd)


class Ringer:
    """The senders' end: one cached write descriptor per waker record."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.fds: dict[int, int] = {}

    def ring(self, waker: int) -> None:
        """Wake the instance owning ``waker`` (a no-op if it is gone)."""
        fd = self.fds.get(waker)
        if fd is None:
            try:
                fd = os.open(
                    path(self.prefix, waker),
                    os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                )
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):  # owner gone: the reaper's job
                    return
                raise
            _check_fifo(fd, path(self.prefix, waker))
            self.fds[waker] = fd
        try:
            os.write(fd, _CHIME)
        except BlockingIOError:
            pass  # a full pipe: the owner has chimes waiting already
        except BrokenPipeError:  # the owner died; a later owner of the record reopens it
            del self.fds[waker]
            os.close(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Wakes:
    """Ringing the instances a mutation fired: an instance polling its ring (spinning, see
    ``Receivers._spin``) reads it there, so its doorbell is skipped."""

    def __init__(self, ringer: Ringer, registry: Registry) -> None:
        self._ringer = ringer
        self._registry = registry

    def ring(self, waker: int) -> None:
        if not self._registry.spinning(waker):
            self._ringer.ring(waker)

    def post(self, wakers: list[int], only_live: bool = False) -> None:
        """Ring each of ``wakers`` once (NIL: nobody); ``only_live`` skips dead instances."""
        for waker in set(wakers):
            if waker != NIL and (not only_live or is_held(self._registry.fd, waker)):
                self.ring(waker)
