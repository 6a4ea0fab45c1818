"""A prompt cache on disk: one JSON file per (image, text, kind, backend, model, instructions version)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from ..io import save_json
from ..redact import redact_data, strip_control
from .base import MAX_ANSWER_CHARS

logger = logging.getLogger("ifedit")
# Far above any entry this module writes (two answers of MAX_ANSWER_CHARS and the key); a bigger file is damaged.
MAX_ENTRY_BYTES = 512 * 1024


def default_cache_dir() -> Path:
    """The prompt cache folder: $IFEDIT_CACHE_DIR, else $XDG_CACHE_HOME/ifedit, else ~/.cache/ifedit; + prompts."""
    root = os.environ.get("IFEDIT_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ifedit"
    return Path(root) / "prompts"


def image_digest(image: PIL.Image.Image) -> str:
    """A hash of the pixels and size, so the same picture hits whatever file it was read from."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything an answer depends on; any difference is a different entry."""

    image: str
    text: str
    kind: str
    backend: str
    model: str
    endpoint: str | None
    instructions_version: str

    def filename(self) -> str:
        fields = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(fields.encode("utf-8")).hexdigest() + ".json"


class PromptCache:
    """Reads and writes entries; a write is a temp file renamed into place, so concurrent writers never tear one."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        """The stored entry for `key`, or None when absent, unreadable or not an entry this cache could have written.

        The folder is only a cache: a damaged or planted file (huge, deeply nested, wrong types, control codes) is
        a miss with a warning, never a crash and never a prompt."""
        path = self.directory / key.filename()
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
                raise ValueError(f"not a file of at most {MAX_ENTRY_BYTES} bytes")
            with path.open("rb") as file:
                entry = json.loads(file.read(MAX_ENTRY_BYTES + 1))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as error:
            logger.warning("ignoring unreadable prompt cache entry %s: %s", path, error)
            return None
        if not isinstance(entry, dict) or entry.get("key") != asdict(key):
            logger.warning("ignoring prompt cache entry %s: it does not match its key", path)
            return None
        if not _is_answer(entry.get("prompt"), newlines=False) or not (
            entry.get("raw_response") is None or _is_answer(entry["raw_response"], newlines=True)
        ):
            logger.warning("ignoring prompt cache entry %s: its prompt or answer is not clean text", path)
            return None
        return entry

    def put(self, key: CacheKey, prompt: str, raw_response: str | None, elapsed_s: float) -> None:
        """Store an accepted answer; a cache that cannot be written only costs a warning."""
        path = self.directory / key.filename()
        entry = {"key": asdict(key), "prompt": prompt, "raw_response": raw_response, "elapsed_s": elapsed_s}
        entry = redact_data(entry)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_json(entry, path)
        except OSError as error:
            logger.warning("could not write the prompt cache entry %s: %s", path, error)


def _is_answer(value: Any, newlines: bool) -> bool:
    """Whether a stored prompt or answer is text this cache writes: a non-empty bounded string, no control codes."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ANSWER_CHARS
        and strip_control(value, keep_newlines=newlines) == value
    )
