"""One run at a time per output folder: FOLDER/.lock, held with flock while a run writes into FOLDER.

Two runs writing one folder would interleave their files (a benchmark's records, a training's VAE and snapshots).
The kernel releases a flock when its holder ends, even by SIGKILL, so the lock of an ended run is simply taken;
the pid and host written into the file name the holder in the message of a run refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidInputError
from .redact import strip_control

LOCK = ".lock"
LOCK_ATTEMPTS = 20  # each retry means a run released the lock meanwhile; this many in a row means something is wrong


@contextlib.contextmanager
def folder_locked(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold `folder`/.lock for the block, or fail with a one-line error naming `option` and the run holding it."""
    handle = lock(folder, option)
    try:
        yield
    finally:
        unlock(folder, handle)


def lock(folder: Path, option: str = "--out") -> int:
    """Take `folder`/.lock and return its open handle, or raise `InvalidInputError` while another run holds it."""
    path = folder / LOCK
    for _ in range(LOCK_ATTEMPTS):
        try:
            # No link is followed: a planted .lock must not make us truncate a file elsewhere.
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as error:
            planted = error.errno in (errno.ELOOP, errno.EISDIR)  # a link (O_NOFOLLOW refuses it) or a folder
            hint = "if it is a link or a folder, remove it" if planted else f"choose a {option} you can write to"
            raise InvalidInputError(f"cannot open the lock {path} ({error.strerror}); {hint}") from None
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            os.close(handle)
            raise InvalidInputError(f"the lock {path} is not a plain file; remove it")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        holder = _holder(handle)
        if held and not _same_file(handle, path):
            os.close(handle)  # the run we waited on removed this lock file; lock the one now there
            continue
        if not held or _alive(holder):
            os.close(handle)
            raise InvalidInputError(
                f"{option} {folder} is in use by another run (process {' on '.join(holder) or 'unknown'}); wait "
                f"for it or choose another {option} (if no run is active, remove {path})"
            )
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return handle
    raise InvalidInputError(f"{option} {folder}: the lock {path} kept changing hands; try again")


def unlock(folder: Path, handle: int) -> None:
    """Remove the lock file while still holding it, then release it; a run that opened it meanwhile sees the file
    gone (`_same_file`) and locks the new one instead."""
    path = folder / LOCK
    with contextlib.suppress(OSError):
        if _same_file(handle, path):
            path.unlink()
    os.close(handle)


def _holder(handle: int) -> list[str]:
    """The pid and host written in a lock (a bounded read: the file may have been planted)."""
    return strip_control(os.pread(handle, 200, 0).decode("utf-8", "replace")).split()


def _same_file(handle: int, path: Path) -> bool:
    """Whether `path` is still the file open as `handle`, and not removed or replaced since it was opened."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(handle)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def _alive(holder: list[str]) -> bool:
    """Whether the process named in a lock file nobody holds may still run. One of another machine (on a shared
    filesystem whose locks may not reach us), or a live one here that holds no flock (an older ifedit), counts as
    running; an empty or garbled file cannot be a lock being written, as writers hold the lock first."""
    if len(holder) != 2 or not (holder[0].isascii() and holder[0].isdigit()):
        return False
    if holder[1] != socket.gethostname():
        return True
    try:
        os.kill(int(holder[0]), 0)
    except (ProcessLookupError, OverflowError):  # ended, or a number no process has
        return False
    except PermissionError:  # another user's process
        return True
    return True
