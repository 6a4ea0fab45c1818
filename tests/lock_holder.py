"""Another process holding an output folder's lock, as a second run into that folder would meet it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HOLD = """import pathlib, sys, time
from ifedit.folder_lock import folder_locked
with folder_locked(pathlib.Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """Yield a process that holds `folder`'s lock until the block ends, then kill it with SIGKILL (as a crash would
    end it: the lock file stays behind, naming the dead process). The folder is created if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
