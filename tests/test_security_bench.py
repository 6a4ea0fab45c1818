"""Hostile or damaged benchmark data against `ifedit bench run`: every output stays inside the run folder, every
source inside the data folder, a bad case fails alone, one run holds a folder, damaged files are one-line errors."""

import gc
import json
import multiprocessing
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import PIL.Image
import pytest

from bench_fixtures import FAST, bytemorph, declared_png, imgedit, picture, risebench, tedbench
from ifedit.bench.cases import EditCase
from ifedit.bench.layout import RunFolder
from ifedit.cli import EXIT_CASES_FAILED, main
from ifedit.errors import InvalidInputError
from ifedit.io import MAX_JSON_BYTES
from lock_holder import lock_held_elsewhere


def _run(benchmark, data, out, model, *extra):
    return main(["bench", "run", "--benchmark", benchmark, "--data", str(data), "--out", str(out), "--model", model,
                 *FAST, *extra])  # fmt: skip


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("ifedit: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _edit_rise(data: Path, position: int, **fields) -> None:
    listing = data / "data" / "data_total.json"
    entries = json.loads(listing.read_text())
    entries[position].update(fields)
    listing.write_text(json.dumps(entries))


def _rename_imgedit_key(data: Path, key: str) -> None:
    listing = data / "basic_edit.json"
    entries = json.loads(listing.read_text())
    entries[key] = entries.pop("1082")
    listing.write_text(json.dumps(entries))


def _edit_imgedit(data: Path, **fields) -> None:
    listing = data / "basic_edit.json"
    entries = json.loads(listing.read_text())
    entries["1082"].update(fields)
    listing.write_text(json.dumps(entries))


# Spellings of a name that would write outside the run folder, over another case's file, or somewhere a scorer or a
# filesystem reads differently; `outside` is a folder beside the run holding a file that must stay untouched.
SPELLINGS = {
    "absolute": lambda outside: str(outside / "victim"),
    "parents": lambda outside: "../../../outside/victim",
    "parents_inside": lambda outside: "x/../7",
    "backslashes": lambda outside: "..\\..\\..\\outside\\victim",
    "nul": lambda outside: "victim\x00.txt",
    "escape_codes": lambda outside: "\x1b[2Jvictim",
    "bidi_override": lambda outside: "victim\u202egnp",
    "dot": lambda outside: ".",
    "dot_dot": lambda outside: "..",
    "hidden_temporary": lambda outside: ".victim.tmp",
    "blank": lambda outside: " ",
    "too_long": lambda outside: "v" * 300,
    "drive_colon": lambda outside: "c:victim",
    "trailing_dot": lambda outside: "victim.",
}
FIELDS = {
    "risebench_index": ("risebench", lambda data, name: _edit_rise(data, 0, index=name)),
    "imgedit_key": ("imgedit", _rename_imgedit_key),
    "imgedit_edit_type": ("imgedit", lambda data, name: _edit_imgedit(data, edit_type=name)),
}
MAKERS = {"risebench": risebench, "imgedit": imgedit, "bytemorph": bytemorph, "tedbench": tedbench}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("field", FIELDS)
def test_listing_names_that_escape_the_run_folder_are_refused(tmp_path, tiny_dirs, capsys, field, spelling):
    benchmark, plant = FIELDS[field]
    data, out, outside = MAKERS[benchmark](tmp_path / "data"), tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"someone else's file")
    plant(data, SPELLINGS[spelling](outside))
    assert _run(benchmark, data, out, tiny_dirs["a14b"]) == 2
    err = _one_line_error(capsys)
    assert "cannot name an output file" in err or "must be a non-empty string, got ' '" in err
    assert _tree(outside) == {"victim.png": b"someone else's file"} and not out.exists()


@pytest.mark.parametrize("name", ["zoom\\in", "zoom:in", "zoom\x1b[2J", "z" * 120])
@pytest.mark.parametrize("part", ["edit_type_folder", "picture"])
def test_bytemorph_file_names_that_cannot_be_output_names_are_refused(tmp_path, tiny_dirs, capsys, part, name):
    data = bytemorph(tmp_path / "data")
    if part == "edit_type_folder":
        (data / "0_camera_zoom").rename(data / name)
    else:
        for suffix in (".png", ".json"):
            (data / "0_camera_zoom" / f"0001{suffix}").rename(data / "0_camera_zoom" / f"{name}{suffix}")
    assert _run("bytemorph", data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    assert "cannot name an output file" in _one_line_error(capsys) and not (tmp_path / "run").exists()


def _twin_imgedit_keys(data: Path, first: str, second: str) -> None:
    listing = data / "basic_edit.json"
    one, two = json.loads(listing.read_text()).values()
    listing.write_text(json.dumps({first: one, second: two}))


def _twin_rise_indexes(data: Path, first, second) -> None:
    _edit_rise(data, 0, index=first)
    _edit_rise(data, 1, index=second, category="temporal_reasoning")


def _twin_bytemorph_folders(data: Path) -> None:
    (data / "3_human_motion").rename(data / "0_Camera_Zoom")
    for suffix in (".png", ".json"):
        (data / "0_Camera_Zoom" / f"0002{suffix}").rename(data / "0_Camera_Zoom" / f"0001{suffix}")


COLLISIONS = {
    "imgedit_keys_differing_in_case": ("imgedit", lambda data: _twin_imgedit_keys(data, "Seven", "seven")),
    "imgedit_keys_composed_and_decomposed": ("imgedit", lambda data: _twin_imgedit_keys(data, "\u00e9", "e\u0301")),
    "risebench_indexes_differing_in_case": ("risebench", lambda data: _twin_rise_indexes(data, "Seven", "seven")),
    "risebench_index_as_number_and_string": ("risebench", lambda data: _twin_rise_indexes(data, 7, "7")),
    "bytemorph_folders_differing_in_case": ("bytemorph", _twin_bytemorph_folders),
}  # fmt: skip


@pytest.mark.parametrize("collision", COLLISIONS)
def test_two_cases_writing_one_output_file_are_refused_before_any_edit(tmp_path, tiny_dirs, capsys, collision):
    benchmark, plant = COLLISIONS[collision]
    data = MAKERS[benchmark](tmp_path / "data")
    plant(data)
    assert _run(benchmark, data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    err = _one_line_error(capsys)
    assert "would write one file" in err or "has two cases named '7'" in err
    assert not (tmp_path / "run").exists()


def test_the_collision_message_names_both_cases_and_the_file(tmp_path, tiny_dirs, capsys):
    data = imgedit(tmp_path / "data")
    _twin_imgedit_keys(data, "Seven", "seven")
    assert _run("imgedit", data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    assert "imgedit cases 'Seven' and 'seven' would write one file, images/seven.png" in _one_line_error(capsys)


def _outside_image(tmp_path: Path) -> Path:
    return picture(tmp_path / "outside" / "secret.png", 9)


SOURCES_OUTSIDE = {
    "risebench_image_parents": ("risebench", "temporal_reasoning_1",
                                lambda data, tmp: _edit_rise(data, 0, image="../../outside/secret.png")),
    "risebench_image_absolute": ("risebench", "temporal_reasoning_1",
                                 lambda data, tmp: _edit_rise(data, 0, image=str(tmp / "outside" / "secret.png"))),
    "risebench_reference_parents": ("risebench", "logical_reasoning_1",
                                    lambda data, tmp: _edit_rise(data, 3, reference_img="../../outside/secret.png")),
    "risebench_image_linked_out": ("risebench", "temporal_reasoning_1", lambda data, tmp: _link_out(
        data / "data" / "temporal_reasoning_images" / "1.png", tmp)),
    "imgedit_id_parents": ("imgedit", "1082", lambda data, tmp: _edit_imgedit(data, id="../../outside/secret.png")),
    "tedbench_img_name_parents": ("tedbench", "000_secret", lambda data, tmp: (data / "input_list.json").write_text(
        json.dumps([{"img_name": "../../outside/secret.png", "target_text": "A photo."}]))),
    "bytemorph_edit_type_linked_out": ("bytemorph", "0_camera_zoom/0001", lambda data, tmp: _link_folder_out(data)),
}  # fmt: skip


def _link_out(path: Path, tmp: Path) -> None:
    path.unlink()
    path.symlink_to(tmp / "outside" / "secret.png")


def _link_folder_out(data: Path) -> None:
    folder, moved = data / "0_camera_zoom", data.parent / "outside" / "zoom"
    folder.rename(moved)
    folder.symlink_to(moved)


@pytest.mark.parametrize("where", SOURCES_OUTSIDE)
def test_listing_images_outside_the_data_folder_are_refused(tmp_path, tiny_dirs, capsys, where):
    benchmark, key, plant = SOURCES_OUTSIDE[where]
    data = MAKERS[benchmark](tmp_path / "data")
    _outside_image(tmp_path)
    plant(data, tmp_path)
    assert _run(benchmark, data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    err = _one_line_error(capsys)
    assert f"{benchmark} case '{key}': its image " in err and "lies outside the data folder" in err
    assert "pass --allow-outside-data" in err and not (tmp_path / "run").exists()


def test_allow_outside_data_lets_a_linked_source_be_used(tmp_path, tiny_dirs):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    _outside_image(tmp_path)
    _link_out(data / "data" / "temporal_reasoning_images" / "1.png", tmp_path)
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1", "--allow-outside-data") == 0
    assert (out / "images" / "temporal_reasoning" / "temporal_reasoning_1.png").is_file()


def test_a_decompression_bomb_source_fails_its_case_and_the_run_goes_on(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    bomb = declared_png(data / "data" / "causal_reasoning_images" / "1.png", 30000, 30000, rows=4)
    assert bomb.stat().st_size < 2000
    for _ in range(2):  # and again on a rerun, which retries it
        assert _run("risebench", data, out, tiny_dirs["a14b"]) == EXIT_CASES_FAILED
        assert "1 cases failed (first: causal_reasoning_1: InvalidInputError" in capsys.readouterr().err
        failure = json.loads((out / "failures" / "causal_reasoning_1.json").read_text())
        assert "image file is too large" in failure["error"]
        assert len(list((out / "images").rglob("*.png"))) == 3


def test_a_truncated_source_with_a_valid_header_fails_only_its_own_case(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    declared_png(data / "data" / "spatial_reasoning_images" / "1.png", 64, 64, rows=8)
    assert _run("risebench", data, out, tiny_dirs["a14b"]) == EXIT_CASES_FAILED
    assert "1 cases failed (first: spatial_reasoning_1: InvalidInputError" in capsys.readouterr().err
    assert "truncated" in json.loads((out / "failures" / "spatial_reasoning_1.json").read_text())["error"]
    assert sorted(path.stem for path in (out / "records").glob("*.json")) == [
        "causal_reasoning_1", "logical_reasoning_1", "temporal_reasoning_1"]  # fmt: skip


def test_many_large_sources_are_never_decoded_all_at_once(tmp_path, tiny_dirs, monkeypatch):
    """A listing naming big pictures many times once held every decoded source in memory before the first edit; now
    a full-size source lives only while its case is read or edited (the prompt stage keeps the VLM's smaller view)."""
    data = risebench(tmp_path / "data")
    for path in (data / "data").rglob("*.png"):
        PIL.Image.new("RGB", (1200, 1000), (200, 40, 90)).save(path)  # above the VLM's one-megapixel view
    decoded: list[weakref.ref] = []
    most = 0
    decode = EditCase.load_source

    def counted(case):
        nonlocal most
        gc.collect()
        image = decode(case)
        decoded.append(weakref.ref(image))
        most = max(most, sum(ref() is not None for ref in decoded))
        return image

    monkeypatch.setattr(EditCase, "load_source", counted)
    assert _run("risebench", data, tmp_path / "run", tiny_dirs["a14b"], "--limit", "2") == 0
    assert len(list((tmp_path / "run" / "records").glob("*.json"))) == 2
    assert len(decoded) == 4 and most == 1  # each source read for its prompt and for its edit, one at a time


def _claim(root: str, start, holding, most, wins) -> None:
    start.wait()
    try:
        with RunFolder(root).claimed():
            with holding.get_lock():
                holding.value += 1
                most.value = max(most.value, holding.value)
            time.sleep(0.02)
            with holding.get_lock():
                holding.value -= 1
                wins.value += 1
    except InvalidInputError:
        pass


RACERS = 8  # with fewer, the old takeover's race showed in too few trials to be caught reliably


def _dead_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_runs_racing_to_take_over_a_dead_runs_lock_never_hold_the_folder_together(tmp_path):
    context = multiprocessing.get_context("fork")  # the racers only touch files; fork starts them in milliseconds
    dead = _dead_pid()
    for trial in range(30):
        root = tmp_path / f"run{trial}"
        root.mkdir()
        (root / ".lock").write_text(f"{dead} {socket.gethostname()}\n")
        start = context.Barrier(RACERS)
        holding, most, wins = context.Value("i", 0), context.Value("i", 0), context.Value("i", 0)
        racers = [context.Process(target=_claim, args=(str(root), start, holding, most, wins)) for _ in range(RACERS)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
            assert racer.exitcode == 0
        assert most.value == 1 and wins.value >= 1, f"trial {trial}: {most.value} runs held the folder at once"
        assert not (root / ".lock").exists()


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    with lock_held_elsewhere(out) as holder:
        assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 2
        assert f"is in use by another run (process {holder.pid} on " in _one_line_error(capsys)
    assert (out / ".lock").read_text().split()[0] == str(holder.pid)  # left behind by the killed run
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 0
    assert not (out / ".lock").exists()


def test_a_lock_planted_as_a_link_is_not_followed(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 2
    assert f"cannot open the lock {out / '.lock'}" in _one_line_error(capsys)
    assert victim.read_text() == "keep me"


DEEP = 200_000
LISTINGS = {
    "tedbench": ("input_list.json", "[" * DEEP + "]" * DEEP),
    "risebench": ("data/data_total.json", "[" * DEEP + "]" * DEEP),
    "imgedit": ("basic_edit.json", '{"a":' * DEEP + "1" + "}" * DEEP),
    "bytemorph": ("0_camera_zoom/0001.json", '{"edit":' * DEEP + "1" + "}" * DEEP),
}


@pytest.mark.parametrize("benchmark", LISTINGS)
def test_a_listing_nested_too_deeply_is_one_line(tmp_path, tiny_dirs, capsys, benchmark):
    data = MAKERS[benchmark](tmp_path / "data")
    name, text = LISTINGS[benchmark]
    (data / name).write_text(text)
    assert _run(benchmark, data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    assert f"{data / name} is nested too deeply" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"7": {"id": "a.jpg", "prompt": "p", "edit_type": "add"}, "7": {}}', "the key '7' appears twice"),
        ('["not", "an", "object"]', "expected an object for ImgEdit-Bench list (basic_edit.json), got a list"),
        ("null", "expected an object for ImgEdit-Bench list (basic_edit.json), got null"),
    ],
)
def test_a_listing_with_repeated_keys_or_the_wrong_shape_is_one_line(tmp_path, tiny_dirs, capsys, text, message):
    data = imgedit(tmp_path / "data")
    (data / "basic_edit.json").write_text(text)
    assert _run("imgedit", data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    assert message in _one_line_error(capsys)


def test_an_oversized_listing_is_refused_without_reading_it(tmp_path, tiny_dirs, capsys):
    data = tedbench(tmp_path / "data")
    with open(data / "input_list.json", "r+b") as listing:
        listing.truncate(MAX_JSON_BYTES + 1)  # sparse: no disk used, and nothing worth reading
    assert _run("tedbench", data, tmp_path / "run", tiny_dirs["a14b"]) == 2
    assert f"{data / 'input_list.json'} is over 128 MiB, too large for TEdBench list" in _one_line_error(capsys)


@pytest.mark.parametrize("text", ["[]", '"x"', "null", "5", '{"a":' * DEEP + "1" + "}" * DEEP, "{oops", "{}"])
def test_a_damaged_manifest_is_one_line(tmp_path, tiny_dirs, capsys, text):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 2
    err = _one_line_error(capsys)
    assert str(out / "manifest.json") in err and err.rstrip().endswith("remove it or use another --out")
    assert (out / "manifest.json").read_text() == text and not list((out / "images").rglob("*.png"))


def test_damaged_records_and_failures_are_redone_not_a_crash(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "data"), tmp_path / "run"
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "2") == 0
    for folder, text in (("records", "[]"), ("failures", '"x"')):
        (out / folder / "temporal_reasoning_1.json").write_text(text)
    causal = out / "records" / "causal_reasoning_1.json"
    kept = causal.read_text()
    case = json.loads(kept)["case"]
    # A damaged record is a case not finished, never a crash: of another shape, with fields of other types, of
    # another benchmark or case; and a temporary a killed run left beside the records is no record at all.
    (out / "records" / ".causal_reasoning_1.0123456789abcdef.tmp.json").write_text(kept)
    (out / "records" / "no:case.json").write_text(kept)  # a name no case id can have
    (out / "records" / "spatial_reasoning_1.json").write_text(kept)  # another case's record under this name
    for damaged in ("not an object", {**case, "id": 5}, {**case, "key": [1]}, {**case, "side_by_side": "no"},
                    {**case, "benchmark": "tedbench"}, {**case, "benchmark": "nope"},
                    {**case, "id": "temporal_reasoning_1"}):  # fmt: skip
        causal.write_text(json.dumps({**json.loads(kept), "case": damaged}))
        capsys.readouterr()
        assert main(["bench", "score", str(out)]) == 2, damaged
        assert _one_line_error(capsys).endswith("has no finished cases to score\n")
    causal.write_text(kept)
    assert main(["bench", "score", str(out)]) == 0
    assert json.loads((out / "scores.json").read_text())["cases_scored"] == 1  # causal once, not twice
    for stray in (".causal_reasoning_1.0123456789abcdef.tmp.json", "no:case.json", "spatial_reasoning_1.json"):
        (out / "records" / stray).unlink()
    before = {path.name: path.stat().st_mtime_ns for path in (out / "images").rglob("*.png")}
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "2") == 0
    after = {path.name: path.stat().st_mtime_ns for path in (out / "images").rglob("*.png")}
    assert [name for name in before if before[name] != after[name]] == ["temporal_reasoning_1.png"]
    assert json.loads((out / "records" / "temporal_reasoning_1.json").read_text())["case"]["id"] == (
        "temporal_reasoning_1")  # fmt: skip
    assert not (out / "failures" / "temporal_reasoning_1.json").exists()


def test_records_failures_and_outputs_planted_as_links_are_replaced_not_followed(tmp_path, tiny_dirs):
    data, out, outside = risebench(tmp_path / "data"), tmp_path / "run", tmp_path / "outside"
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "3") == 0
    outside.mkdir()
    planted = {
        out / "records" / "temporal_reasoning_1.json": outside / "record.json",
        out / "images" / "causal_reasoning" / "causal_reasoning_1.png": outside / "image.png",
        out / "failures" / "spatial_reasoning_1.json": outside / "failure.json",
    }
    for link, target in planted.items():
        target.write_text('{"output": "images/temporal_reasoning/temporal_reasoning_1.png"}')
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    (out / "records" / "causal_reasoning_1.json").unlink()  # its output link is now the only trace of it
    (data / "data" / "spatial_reasoning_images" / "1.png").write_bytes(b"not a png")  # it fails: a failure is written
    (out / "records" / "spatial_reasoning_1.json").unlink()
    before = _tree(outside)
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "3") == EXIT_CASES_FAILED
    assert _tree(outside) == before
    assert not [link for link in planted if link.is_symlink()] and all(link.is_file() for link in planted)
    assert "not an image file" in json.loads((out / "failures" / "spatial_reasoning_1.json").read_text())["error"]


@pytest.mark.parametrize("folder", ["records", "failures", "images", "images/temporal_reasoning"])
def test_run_subfolders_planted_as_links_out_of_the_run_are_refused(tmp_path, tiny_dirs, capsys, folder):
    data, out, outside = risebench(tmp_path / "data"), tmp_path / "run", tmp_path / "outside"
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 0
    outside.mkdir()
    (outside / ".victim.tmp").write_text("a file a cleanup of leftovers must not remove")
    link = out / folder
    if link.exists():
        link.rename(tmp_path / "moved")
    link.symlink_to(outside, target_is_directory=True)
    (out / "records" / "temporal_reasoning_1.json").unlink(missing_ok=True)
    capsys.readouterr()
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 2
    assert f"{out / folder}" in _one_line_error(capsys)
    assert _tree(outside) == {".victim.tmp": b"a file a cleanup of leftovers must not remove"}
