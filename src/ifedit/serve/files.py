"""Edited images handed out by URL: unguessable names in a private temporary folder, gone after their lifetime."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

NAME_BYTES = 32  # 256 random bits: a name cannot be guessed, so the URL itself is the permission to read


class ResultFiles:
    """PNG files the server wrote, looked up by name only among those it wrote and has not yet expired."""

    def __init__(self, folder: Path, ttl: float):
        self.ttl = ttl
        self.folder = folder
        folder.mkdir(mode=0o700)
        self._expires: dict[str, float] = {}

    def add(self, png: bytes) -> str:
        """Store one image and return its name."""
        self.sweep()
        name = f"{secrets.token_urlsafe(NAME_BYTES)}.png"
        descriptor = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(png)
        self._expires[name] = time.monotonic() + self.ttl
        return name

    def path(self, name: str) -> Path | None:
        """The file called `name` if this server wrote it and it has not expired; a name is never a path."""
        self.sweep()
        return self.folder / name if name in self._expires else None

    def sweep(self) -> None:
        """Delete the files whose lifetime is over."""
        now = time.monotonic()
        for name in [name for name, expires in self._expires.items() if expires <= now]:
            del self._expires[name]
            (self.folder / name).unlink(missing_ok=True)
