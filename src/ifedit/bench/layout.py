"""A run's folder: outputs where each benchmark's own scorer looks for them, and one record per finished case.

```
DIR/manifest.json       what was run (benchmark, data, model, settings, seed) and how far it got
DIR/images/...          the benchmark's layout (`Benchmark.output_parts`): RISEBench {category}/{index}.png,
                        ImgEdit {key}.png, ByteMorph {edit_type}/{name}.png as [input | output], TEdBench {id}.png
DIR/records/{id}.json   how the case was made, as `ifedit edit` records it; present only once the image is written
DIR/failures/{id}.json  the error of a case that failed (removed when a later run finishes it)
DIR/.lock               the process id and host of the run writing into DIR, locked (flock) while it runs
```
Every name in it is checked (`cases.safe_name`) and every write lands inside DIR even where a link was planted.
"""

from __future__ import annotations

import contextlib
import traceback
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..folder_lock import LOCK, folder_locked
from ..io import read_json, save_image, save_json
from ..redact import strip_control
from .benchmarks import get_benchmark
from .cases import EditCase, safe_name

MANIFEST = "manifest.json"
SUBFOLDERS = ("images", "records", "failures")


def output_relpath(case: EditCase) -> Path:
    """Where the benchmark's scorer expects this case's output, relative to the run folder; every part is checked,
    since a case rebuilt from a record in the folder is as untrusted as a listing."""
    parts = get_benchmark(case.benchmark).output_parts(case)
    *folders, stem = (safe_name(part, f"case {case.id!r}:") for part in parts)
    return Path("images", *folders, f"{stem}.png")


def record_relpath(case_id: str) -> Path:
    return Path("records", f"{safe_name(case_id, 'case id')}.json")


def failure_relpath(case_id: str) -> Path:
    return Path("failures", f"{safe_name(case_id, 'case id')}.json")


def check_distinct(cases: Iterable[EditCase]) -> None:
    """Refuse two cases that would write one file, before any edit: a rerun would then take both for finished.
    Names are compared as case-insensitive, Unicode-normalising filesystems (macOS, Windows) compare them."""
    seen: dict[str, EditCase] = {}
    for case in cases:
        for relative in (output_relpath(case), record_relpath(case.id)):
            other = seen.setdefault(unicodedata.normalize("NFC", relative.as_posix()).casefold(), case)
            if other is not case:
                raise InvalidInputError(
                    f"{case.benchmark} cases {other.key!r} and {case.key!r} would write one file, {relative} (names "
                    "are compared ignoring case); rename one of them in the listing"
                )


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
        return self._inside(output_relpath(case))

    def record_path(self, case_id: str) -> Path:
        return self._inside(record_relpath(case_id))

    def failure_path(self, case_id: str) -> Path:
        return self._inside(failure_relpath(case_id))

    def _inside(self, relative: Path) -> Path:
        """`relative` under the run folder, refused when a link on the way leads out of it. The file itself may be a
        link: writes replace it (temporary file and rename), and reads take it for no file (`_regular`)."""
        path = self.root / relative
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            raise InvalidInputError(
                f"{path.parent} leads outside the run folder {self.root} (a link); remove it or choose another --out"
            )
        return path

    def check_paths(self, cases: Iterable[EditCase]) -> None:
        """Check, before any edit, that every file of every case lands inside the folder."""
        for case in cases:
            self.output(case)
            self.record_path(case.id)
            self.failure_path(case.id)

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the folder for one run: created if missing (parents too), refused while another run holds it or when
        it holds anything but a run, and cleared of the temporary files an interrupted run left (a scorer would read
        them)."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"--out {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        with folder_locked(self.root):
            if not self.manifest_path.exists() and any(map(self._foreign, self.root.iterdir())):
                raise InvalidInputError(
                    f"--out {self.root} is not empty and holds no run ({MANIFEST}); choose an empty or new folder"
                )
            for name in SUBFOLDERS:
                folder = self.root / name
                if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                    raise InvalidInputError(
                        f"{folder} is a link or a file, not a folder of this run; remove it or choose another --out"
                    )
                folder.mkdir(exist_ok=True)
            temporary = ".*.tmp*"
            leftovers = [*self.root.glob(temporary), *(self.root / "images").rglob(temporary)]
            leftovers += [*(self.root / "records").glob(temporary), *(self.root / "failures").glob(temporary)]
            for leftover in leftovers:
                if leftover.is_file():
                    leftover.unlink()
            yield

    def _foreign(self, path: Path) -> bool:
        """Whether `path`, inside a folder without a manifest, is something other than this layout's empty start."""
        if path.name == LOCK:
            return False
        return not (path.name in SUBFOLDERS and path.is_dir() and not any(path.iterdir()))

    def finished(self, case: EditCase) -> bool:
        """A case is finished when its record exists and names an output that exists; anything less is redone."""
        record = self.read_record(case.id)
        return record is not None and record.get("output") == str(output_relpath(case)) and _regular(self.output(case))

    def read_record(self, case_id: str) -> dict[str, Any] | None:
        """A case's record, or None when it is missing, damaged or a link (the case is then redone)."""
        path = self.record_path(case_id)
        if not _regular(path):
            return None
        try:
            return read_json(path, "case record", dict)
        except InvalidInputError:
            return None

    def read_manifest(self) -> dict[str, Any] | None:
        """The run's manifest, None when there is none; a damaged one (any JSON but an object) is a one-line error."""
        if not self.manifest_path.exists() and not self.manifest_path.is_symlink():
            return None
        try:
            manifest = read_json(self.manifest_path, "a run manifest", dict)
        except InvalidInputError as error:
            raise InvalidInputError(f"{error}; remove it or use another --out") from None
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise InvalidInputError(
                f"{self.manifest_path} is not a run manifest ({problem}); remove it or use another --out"
            )
        return manifest

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
                error = read_json(path, "failure record", dict).get("error")
            except InvalidInputError:
                error = None
            found[path.stem] = error if isinstance(error, str) else "unreadable failure record"
        return found


def _regular(path: Path) -> bool:
    """A plain file, not a link: a link planted in the run folder could point anywhere."""
    return path.is_file() and not path.is_symlink()


# What `bench score` and `bench report` read from a manifest, with the types `bench run` writes.
_MANIFEST_FIELDS = {"benchmark": str, "data": str, "seed": int, "model": dict, "settings": dict}
_SETTINGS_FIELDS = {"num_inference_steps": int, "num_frames": int, "tld_stride": int, "refine": bool}


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    for fields, where in ((_MANIFEST_FIELDS, manifest), (_SETTINGS_FIELDS, manifest.get("settings"))):
        for name, kind in fields.items():
            if not isinstance(where, dict) or not isinstance(where.get(name), kind):
                return f"{name} is missing or not {kind.__name__}"
    if not isinstance(manifest["model"].get("preset"), str):
        return "model.preset is missing or not str"
    return None


def case_from_record(record: Any, benchmark: str, case_id: str) -> EditCase | None:
    """The case `case_record` stored in the record of `case_id`, or None when the record is damaged, of another
    shape, of another benchmark or of another case (`bench run` then redoes the case)."""
    info = record.get("case") if isinstance(record, dict) else None
    texts = ("benchmark", "id", "key", "category", "text", "input_kind", "source")
    if not (isinstance(info, dict) and all(isinstance(info.get(name), str) for name in texts)):
        return None
    if not (all(info.get(name) is None or isinstance(info[name], str) for name in ("reference", "reference_text"))
            and isinstance(info.get("side_by_side", False), bool)):  # fmt: skip
        return None
    if info["benchmark"] != benchmark or info["id"] != case_id:  # another benchmark's layout; a case counted twice
        return None
    reference = info.get("reference")
    return EditCase(info["benchmark"], info["id"], info["key"], info["text"], info["input_kind"], info["category"],
                    Path(info["source"]), Path(reference) if reference else None, info.get("reference_text"),
                    info.get("side_by_side", False))  # fmt: skip


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
    """A failure as one line (file names from a listing may hold control codes) and its traceback, for the record."""
    return strip_control(f"{type(error).__name__}: {error}"), "".join(traceback.format_exception(error))
