"""A run's folder: outputs where each benchmark's own scorer looks for them, and one record per finished case.

```
DIR/manifest.json       what was run (benchmark, data, model, settings, seed) and how far it got
DIR/images/...          the benchmark's layout: RISEBench {category}/{index}.png, ImgEdit {key}.png,
                        ByteMorph {edit_type}/{name}.png as [input | output], TEdBench {id}.png
DIR/records/{id}.json   how the case was made, as `ifedit edit` records it; present only once the image is written
DIR/failures/{id}.json  the error of a case that failed (removed when a later run finishes it)
DIR/.lock               the process id and host of the run writing into DIR, while it runs
```
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..io import save_image, save_json
from .cases import EditCase

MANIFEST = "manifest.json"
LOCK = ".lock"
SUBFOLDERS = ("images", "records", "failures")


def output_relpath(case: EditCase) -> Path:
    """Where the benchmark's scorer expects this case's output, relative to the run folder."""
    if case.benchmark == "risebench":
        return Path("images", case.category, f"{case.key}.png")
    if case.benchmark == "bytemorph":
        return Path("images", case.category, f"{Path(case.key).name}.png")
    if case.benchmark == "imgedit":
        return Path("images", f"{case.key}.png")
    return Path("images", f"{case.id}.png")


def compose_output(case: EditCase, source: PIL.Image.Image, edited: PIL.Image.Image) -> PIL.Image.Image:
    """The picture the scorer reads: the edit itself, or for ByteMorph [input | output] at the ground truth's size."""
    if not case.side_by_side:
        return edited
    edited = edited.resize(source.size, PIL.Image.Resampling.LANCZOS)
    pair = PIL.Image.new("RGB", (2 * source.width, source.height))
    pair.paste(source, (0, 0))
    pair.paste(edited, (source.width, 0))
    return pair


def output_half(case: EditCase, picture: PIL.Image.Image) -> PIL.Image.Image:
    """The edit inside a saved output (ByteMorph's right half)."""
    if not case.side_by_side:
        return picture
    half = picture.width // 2
    return picture.crop((half, 0, 2 * half, picture.height))


class RunFolder:
    """The files of one benchmark run; every write is atomic, and a record is written only after its image."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def output(self, case: EditCase) -> Path:
        return self.root / output_relpath(case)

    def record_path(self, case_id: str) -> Path:
        return self.root / "records" / f"{case_id}.json"

    def failure_path(self, case_id: str) -> Path:
        return self.root / "failures" / f"{case_id}.json"

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the folder for one run: created if missing (parents too), refused while another run holds it or when
        it holds anything but a run, and cleared of the temporary files an interrupted run left (a scorer would read
        them)."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"--out {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if not self.manifest_path.exists() and any(map(self._foreign, self.root.iterdir())):
                raise InvalidInputError(
                    f"--out {self.root} is not empty and holds no run ({MANIFEST}); choose an empty or new folder"
                )
            for name in SUBFOLDERS:
                (self.root / name).mkdir(exist_ok=True)
            temporary = ".*.tmp*"
            leftovers = [*self.root.glob(temporary), *(self.root / "images").rglob(temporary)]
            leftovers += [*(self.root / "records").glob(temporary), *(self.root / "failures").glob(temporary)]
            for leftover in leftovers:
                if leftover.is_file():
                    leftover.unlink()
            yield
        finally:
            self._unlock()

    def _foreign(self, path: Path) -> bool:
        """Whether `path`, inside a folder without a manifest, is something other than this layout's empty start."""
        if path.name == LOCK:
            return False
        return not (path.name in SUBFOLDERS and path.is_dir() and not any(path.iterdir()))

    def _lock(self) -> None:
        """Create DIR/.lock or fail: two runs writing one folder would interleave their files. A lock whose process
        has ended on this host is taken over."""
        path = self.root / LOCK
        holder: list[str] = []
        for _ in range(2):
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = path.read_text(encoding="utf-8", errors="replace").split()
                except FileNotFoundError:  # released in the meantime
                    continue
                if _alive(holder):
                    break
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(f"{os.getpid()} {socket.gethostname()}\n")
            return
        raise InvalidInputError(
            f"--out {self.root} is in use by another run (process {' on '.join(holder) or 'unknown'}); wait for it "
            f"or choose another --out (if no run is active, remove {path})"
        )

    def _unlock(self) -> None:
        path = self.root / LOCK
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8").split() == [str(os.getpid()), socket.gethostname()]:
                path.unlink()

    def finished(self, case: EditCase) -> bool:
        """A case is finished when its record exists and names an output that exists; anything less is redone."""
        record = self.read_record(case.id)
        return record is not None and record.get("output") == str(output_relpath(case)) and self.output(case).is_file()

    def read_record(self, case_id: str) -> dict[str, Any] | None:
        path = self.record_path(case_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidInputError(
                f"{self.manifest_path} is damaged ({error}); remove it or use another --out"
            ) from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        save_json(manifest, self.manifest_path)

    def write_case(self, case: EditCase, picture: PIL.Image.Image, record: dict[str, Any]) -> None:
        output = self.output(case)
        output.parent.mkdir(parents=True, exist_ok=True)
        save_image(picture, output)
        save_json({**record, "output": str(output_relpath(case))}, self.record_path(case.id))
        self.failure_path(case.id).unlink(missing_ok=True)

    def write_failure(self, case: EditCase, error: str, details: str = "") -> None:
        save_json({"case": case_record(case), "error": error, "traceback": details}, self.failure_path(case.id))

    def failures(self) -> dict[str, str]:
        found = {}
        for path in sorted((self.root / "failures").glob("*.json")):
            try:
                found[path.stem] = json.loads(path.read_text(encoding="utf-8"))["error"]
            except (OSError, json.JSONDecodeError, KeyError):
                found[path.stem] = "unreadable failure record"
        return found


def _alive(holder: list[str]) -> bool:
    """Whether the process named in a lock (pid, host) may still run: only one on this POSIX host can be checked."""
    if len(holder) != 2 or not holder[0].isdigit() or holder[1] != socket.gethostname() or os.name != "posix":
        return True  # a lock being written, another machine's, or one this system cannot check
    try:
        os.kill(int(holder[0]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def case_record(case: EditCase) -> dict[str, Any]:
    """The case as stored in its record: enough to find its source and reference again."""
    return {
        "benchmark": case.benchmark,
        "id": case.id,
        "key": case.key,
        "category": case.category,
        "text": case.text,
        "input_kind": case.kind,
        "source": str(case.source),
        "reference": str(case.reference) if case.reference else None,
        "reference_text": case.reference_text,
        "side_by_side": case.side_by_side,
    }


def describe_error(error: BaseException) -> tuple[str, str]:
    """A failure as one line and its traceback, for the failure record."""
    return f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
