"""Every benchmark loader on a copy in its official format, and the one-line errors for broken copies."""

import json

import PIL.Image
import pytest

from bench_fixtures import SHARED_TEDBENCH, bytemorph, imgedit, risebench, tedbench
from ifedit.bench.benchmarks import BENCHMARKS, Benchmark, load_cases
from ifedit.bench.cases import EditCase
from ifedit.bench.layout import output_relpath
from ifedit.bench.published import Published
from ifedit.cli import build_parser
from ifedit.errors import InvalidInputError


def test_risebench_cases_keep_index_category_and_reference(tmp_path):
    cases = load_cases("risebench", risebench(tmp_path))
    assert [case.key for case in cases][:2] == ["temporal_reasoning_1", "causal_reasoning_1"]
    temporal, logical = cases[0], cases[3]
    assert (temporal.kind, temporal.category, temporal.reference_text) == (
        "instruction", "temporal_reasoning", "A rotten banana.")  # fmt: skip
    assert logical.reference.name == "1_ref.png" and logical.reference_text is None
    assert temporal.load_source().size == (64, 64)
    assert str(output_relpath(temporal)) == "images/temporal_reasoning/temporal_reasoning_1.png"


def test_imgedit_cases_find_images_one_folder_down(tmp_path):
    cases = load_cases("imgedit", imgedit(tmp_path))
    assert [(case.key, case.category) for case in cases] == [("1082", "adjust"), ("673", "style")]
    assert cases[0].source == tmp_path / "singleturn" / "animal" / "000342021.jpg"
    assert str(output_relpath(cases[1])) == "images/673.png"


def test_bytemorph_cases_split_the_side_by_side_ground_truth(tmp_path):
    cases = load_cases("bytemorph", bytemorph(tmp_path))
    assert [case.key for case in cases] == ["0_camera_zoom/0001", "3_human_motion/0002"]
    case = cases[0]
    assert case.text == "The person raises both arms." and case.reference_text == "A person, arms raised."
    assert case.load_source().size == (64, 64) and case.load_reference().size == (64, 64)
    assert str(output_relpath(case)) == "images/0_camera_zoom/0001.png"


def test_tedbench_texts_are_target_captions(tmp_path):
    cases = load_cases("tedbench", tedbench(tmp_path))
    assert [case.id for case in cases] == ["000_dog", "001_dog"]
    assert cases[0].kind == "target" and cases[0].text == "A photo of a sitting dog." and cases[0].reference is None


@pytest.mark.skipif(not SHARED_TEDBENCH.is_dir(), reason="no shared TEdBench copy beside the repository")
def test_shared_tedbench_copy_loads_all_pairs():
    cases = load_cases("tedbench", SHARED_TEDBENCH)
    assert len(cases) == 100 and len({case.source for case in cases}) == 40
    assert all(case.source.is_file() and case.kind == "target" for case in cases)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "data" / "data_total.json").unlink(), "RISEBench list (data/data_total.json) not found"),
        (lambda root: (root / "data" / "data_total.json").write_text("{oops"), "is not valid JSON"),
        (
            lambda root: _edit_first(root, "instruction", None),
            "entry 0: field 'instruction' must be a non-empty string",
        ),
        (lambda root: _edit_first(root, "category", "funny"), "entry 0: category must be one of"),
        (lambda root: (root / "data" / "temporal_reasoning_images" / "1.png").unlink(), "entry 0: image not found"),
    ],
)
def test_broken_risebench_copies_name_file_and_field(tmp_path, breakage, message):
    root = risebench(tmp_path)
    breakage(root)
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_cases("risebench", root)


def _edit_first(root, field, value):
    path = root / "data" / "data_total.json"
    entries = json.loads(path.read_text())
    entries[0][field] = value
    path.write_text(json.dumps(entries))


def test_other_broken_copies(tmp_path):
    with pytest.raises(InvalidInputError, match="tedbench data not found"):
        load_cases("tedbench", tmp_path / "missing")
    root = bytemorph(tmp_path / "bm")
    (root / "0_camera_zoom" / "0001.json").unlink()
    with pytest.raises(InvalidInputError, match="ByteMorph-Bench record for 0001.png not found"):
        load_cases("bytemorph", root)
    root = imgedit(tmp_path / "ie")
    (root / "basic_edit.json").write_text(json.dumps({"1": {"id": "x.jpg", "prompt": "p"}}))
    with pytest.raises(InvalidInputError, match="entry '1': image not found"):
        load_cases("imgedit", root)
    with pytest.raises(InvalidInputError, match="unknown benchmark 'nope'"):
        load_cases("nope", root)


class _Colours(Benchmark):
    """A benchmark defined in one place only: one picture, written under its category."""

    name = "colours"
    title = "Colours"
    published = (Published("IF-Edit", "overall", 1.0),)

    def __init__(self, parts: tuple[str, ...] | None = None):
        self.parts = parts

    def load(self, root):
        return [EditCase(self.name, "red", "red", "make it red", "instruction", "colour", root / "red.png")]

    def output_parts(self, case):
        return self.parts or (case.category, case.key)


def test_a_benchmark_registered_once_is_loaded_laid_out_and_offered_with_nothing_else_changed(tmp_path, monkeypatch):
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "red.png")
    monkeypatch.setitem(BENCHMARKS, "colours", _Colours())
    (case,) = load_cases("colours", tmp_path)
    assert str(output_relpath(case)) == "images/colour/red.png"
    args = build_parser().parse_args(["bench", "run", "--benchmark", "colours", "--data", "d", "--out", "o"])
    assert args.benchmark == "colours"


def test_a_benchmarks_layout_cannot_leave_the_run_folder(tmp_path, monkeypatch):
    """The layout checks every part a benchmark names, whichever benchmark names it."""
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "red.png")
    monkeypatch.setitem(BENCHMARKS, "colours", _Colours(("..", "red")))
    (case,) = load_cases("colours", tmp_path)
    with pytest.raises(InvalidInputError, match="cannot name an output file: it starts with a dot"):
        output_relpath(case)
