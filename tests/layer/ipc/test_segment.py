"""Nobody else's segment is ever adopted: objects in /dev/shm that another local user made (or
could read), a corrupted header and a corrupted journal are refused with a clear error, and a
refusal never leaves the segment lock held. The other user is a real uid made with useradd."""

from __future__ import annotations

import fcntl
import os
import pwd
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layer.exceptions import InvalidOption
from layer.ipc import IPCChannelLayer
from layer.ipc.journal import CorruptJournal
from layer.ipc.layout import GEOMETRY_OFF, JOURNAL_OFF, JSTATE_OFF
from tests.layer.ipc.fixture import ROOT, SHM, shm_objects

OTHER_USER = "kit-other"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a second user")


@pytest.fixture(scope="module")
def other_uid() -> Iterator[int]:
    """A second local user (created for the test when missing)."""
    try:
        yield pwd.getpwnam(OTHER_USER).pw_uid
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    try:
        yield pwd.getpwnam(OTHER_USER).pw_uid
    finally:
        subprocess.run(["userdel", OTHER_USER], check=False)


def plant(path: str, uid: int, gid: int, mode: int, fifo: bool = False) -> None:
    """What another user can do: create the object first, with the mode it likes."""
    if fifo:
        os.mkfifo(path)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        os.truncate(path, 1 << 20)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def test_a_segment_another_user_made_first_is_refused(ipc_prefix: str, other_uid: int) -> None:
    plant(f"{SHM}/{ipc_prefix}.ipc", other_uid, other_uid, 0o666)
    try:
        with pytest.raises(InvalidOption) as refused:
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
        message = str(refused.value)
        assert f"uid {other_uid}" in message and "mode 0666" in message and "clean" in message
        # nothing was written to it: still the other user's empty file
        info = os.stat(f"{SHM}/{ipc_prefix}.ipc")
        assert (info.st_uid, stat.S_IMODE(info.st_mode), info.st_size) == (
            other_uid,
            0o666,
            1 << 20,
        )
        assert not any(Path(f"{SHM}/{ipc_prefix}.ipc").read_bytes()[:4096])
    finally:
        os.unlink(f"{SHM}/{ipc_prefix}.ipc")


def test_a_private_segment_of_another_user_is_refused_even_to_root(
    ipc_prefix: str, other_uid: int
) -> None:
    plant(f"{SHM}/{ipc_prefix}.ipc", other_uid, other_uid, 0o600)
    try:
        with pytest.raises(InvalidOption, match=f"uid {other_uid}"):
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    finally:
        os.unlink(f"{SHM}/{ipc_prefix}.ipc")


async def test_our_own_segment_with_a_wider_mode_is_refused(ipc_prefix: str) -> None:
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    os.chmod(f"{SHM}/{ipc_prefix}.ipc", 0o644)
    try:
        with pytest.raises(InvalidOption, match="mode 0644"):
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    finally:
        await layer.close(unlink=True)


async def test_a_doorbell_another_user_planted_is_refused(ipc_prefix: str, other_uid: int) -> None:
    """The FIFO of the first waker record is waiting for us, readable by its maker."""
    plant(f"{SHM}/{ipc_prefix}.w0", other_uid, other_uid, 0o666, fifo=True)
    try:
        with pytest.raises(InvalidOption, match=f"{ipc_prefix}.w0 belongs to uid {other_uid}"):
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
        # the refused instance gave its waker record back: another user's doorbell aside,
        # the segment works for an instance on the next record
        os.unlink(f"{SHM}/{ipc_prefix}.w0")
        layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
        await layer.send("s.q", {"type": "ok"})
        assert (await layer.receive("s.q"))["type"] == "ok"
        await layer.close(unlink=True)
    finally:
        for name in shm_objects(ipc_prefix):
            os.unlink(f"{SHM}/{name}")


async def test_group_access_takes_a_segment_a_group_member_made(
    ipc_prefix: str, other_uid: int
) -> None:
    """With group_access, a segment and doorbells that another user of our group made (0660)
    are used; the same objects are refused without group_access."""
    maker = IPCChannelLayer(prefix=ipc_prefix, size="4MB", group_access=True)
    await maker.send("s.q", {"type": "from the group"})
    await maker.close()
    for name in shm_objects(ipc_prefix):
        os.chown(f"{SHM}/{name}", other_uid, os.getegid())
    with pytest.raises(InvalidOption, match="mode 0660"):
        IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB", group_access=True)
    assert (await layer.receive("s.q"))["type"] == "from the group"
    await layer.close(unlink=True)


async def test_a_corrupted_header_is_refused(ipc_prefix: str) -> None:
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    fd = os.open(f"{SHM}/{ipc_prefix}.ipc", os.O_RDWR)
    os.pwrite(fd, struct.pack("<I", 7), GEOMETRY_OFF + 8)  # n_slots
    os.close(fd)
    try:
        with pytest.raises(InvalidOption, match="corrupted header"):
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    finally:
        await layer.close(unlink=True)


@pytest.mark.parametrize(
    "journal",
    [
        pytest.param(struct.pack("<I", 1 << 20), id="length-past-the-journal"),
        pytest.param(struct.pack("<II", 0, 7), id="unknown-flush-flag"),
    ],
)
async def test_a_corrupted_journal_is_refused_and_the_lock_is_not_kept(
    ipc_prefix: str, journal: bytes
) -> None:
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    fd = os.open(f"{SHM}/{ipc_prefix}.ipc", os.O_RDWR)
    try:
        os.pwrite(fd, journal, JSTATE_OFF)
        with pytest.raises(CorruptJournal, match="clean"):
            await layer.send("s.q", {"type": "x"})
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody freezes waiting for it
        fcntl.flock(fd, fcntl.LOCK_UN)
        with pytest.raises(CorruptJournal):  # and refused again, not half applied
            await layer.send("s.q", {"type": "x"})
    finally:
        os.close(fd)
        os.pwrite(layer.parts.segment.fd, bytes(8), JSTATE_OFF)
        await layer.close(unlink=True)


async def test_a_journal_record_pointing_outside_the_tables_is_refused(ipc_prefix: str) -> None:
    """A record aimed at the magic word (or past the segment) is never written back."""
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    fd = os.open(f"{SHM}/{ipc_prefix}.ipc", os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack("<QI4x", 0, 8) + b"\xee" * 8, JOURNAL_OFF)
        os.pwrite(fd, struct.pack("<I", 24), JSTATE_OFF)
        with pytest.raises(CorruptJournal, match="at offset 0"):
            await layer.send("s.q", {"type": "x"})
        assert os.pread(fd, 8, 0) != b"\xee" * 8
    finally:
        os.close(fd)
        os.pwrite(layer.parts.segment.fd, bytes(8), JSTATE_OFF)
        await layer.close(unlink=True)


def clean(prefix: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layer.ipc", "clean", "--prefix", prefix, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip


def test_clean_refuses_a_prefix_live_processes_use(ipc_prefix: str) -> None:
    """Removing it under a live worker made the next process create a second segment, and
    every request between the two failed: refused unless --force."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.layer.ipc.worker", "wait", ipc_prefix, "c.q"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        refused = clean(ipc_prefix)
        assert refused.returncode == 1
        assert "1 live layer instance(s)" in refused.stderr and "--force" in refused.stderr
        assert f"{ipc_prefix}.ipc" in shm_objects(ipc_prefix)
        forced = clean(ipc_prefix, "--force")
        assert forced.returncode == 0 and shm_objects(ipc_prefix) == []
    finally:
        worker.kill()
        worker.wait()


def check_config(prefix: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPC_PREFIX": prefix, "IPC_SIZE": "4MB"}
    return subprocess.run(
        [sys.executable, "-m", "services", "check-config", "--config", "config/ipc.yaml"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30,
    )  # fmt: skip


async def test_check_config_leaves_no_segment_behind(ipc_prefix: str) -> None:
    result = check_config(ipc_prefix)
    assert result.returncode == 0, result.stderr
    assert "backend: layer.ipc.IPCChannelLayer" in result.stdout
    assert shm_objects(ipc_prefix) == []
    # a segment a deployment uses is left as it is, messages and all
    running = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    await running.send("c.kept", {"type": "kept"})
    assert check_config(ipc_prefix).returncode == 0
    assert (await running.receive("c.kept"))["type"] == "kept"
    await running.close(unlink=True)
