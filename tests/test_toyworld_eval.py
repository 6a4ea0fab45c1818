"""`benchmarks/toyworld_eval.py`, the script behind the toy world's ablation table: it edits held-out scenes under
each setting it names, pairs every setting with the recipe on the same scenes, saves what it measured, and refuses
bad input in one line before any edit runs."""

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "toyworld_eval.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| setting") and not line.startswith("| success by"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.setdefault(cells[0].strip("*"), cells[1:])
    return rows


def test_each_setting_is_measured_on_the_same_scenes_and_paired_with_the_recipe(tmp_path):
    save = tmp_path / "eval.json"
    save.symlink_to("/proc/self/eval.json")  # a link out, into a folder nobody can write: replaced, not followed
    result = run(
        "--scenes", "2", "--settings", "guidance 3.5", "no guidance", "copy", "recipe", "--save", str(save)
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    recipe = next(name for name in rows if name.startswith("the paper's recipe"))
    header = next(line for line in result.stdout.splitlines() if line.startswith("| setting"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    for paired in ("vs recipe", "gain vs recipe"):
        assert rows[recipe][columns.index(paired)] == "0.00 [0.00, 0.00]", f"the recipe paired with itself: {paired}"
    assert rows["copy the source"][0].startswith("0.00"), "copying meets no moved shape's target"
    # Copying gains 0 on every scene, so its paired gain is minus the recipe's (the median of the negated gains).
    copy_gain = float(rows["copy the source"][columns.index("gain vs recipe")].split()[0])
    recipe_gain = float(rows[recipe][columns.index("region gain (median)")].strip("*").split()[0])
    assert copy_gain == -recipe_gain != 0, (copy_gain, recipe_gain)
    saved = json.loads(save.read_text())
    assert list(saved) == ["copy", "recipe", "no guidance", "guidance 3.5"]  # the table's order
    assert [[row["seed"] for row in rows] for rows in saved.values()] == [[1_000_000, 1_000_001]] * 4
    sharpness = {name: [row["sharpness"] for row in saved[name]] for name in saved}
    assert sharpness["no guidance"] != sharpness["recipe"], "the preset's guidance reached the edits"
    assert sharpness["guidance 3.5"] not in (sharpness["recipe"], sharpness["no guidance"]), "its own"
    assert list(tmp_path.iterdir()) == [save], "written in place of a temporary of its own, nothing else left"
    assert not save.is_symlink()


def test_the_sampler_rows_are_paired_with_the_setting_named(tmp_path):
    save = tmp_path / "eval.json"
    result = run(
        "--scenes", "2", "--paired-with", "no refinement", "--settings", "shift 3", "shift 8", "20 steps",
        "--save", str(save),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    header = next(line for line in result.stdout.splitlines() if line.startswith("| setting"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    assert "vs no refinement" in columns and "vs recipe" not in columns, columns
    progress = re.search(
        r"^  shift 8: success \d\.\d\d \([-+]\d\.\d\d \[.+\] vs no refinement\)$", result.stdout, re.M
    )
    assert progress, f"each row's line says how it compares as it finishes: {result.stdout}"
    paired = columns.index("gain vs no refinement")
    assert rows["no refinement"][paired] == "0.00 [0.00, 0.00]", "run though --settings left it out; with itself"
    saved = json.loads(save.read_text())
    assert list(saved) == ["no refinement", "20 steps", "shift 3", "shift 8"]  # the table's order, no recipe run
    sharpness = {name: tuple(row["sharpness"] for row in saved[name]) for name in saved}
    assert len(set(sharpness.values())) == 4, f"each row's sampler reached its edits: {sharpness}"


def test_by_default_every_ablation_row_runs_and_no_sampler_row(tmp_path, monkeypatch):
    script = runpy.run_path(str(SCRIPT), run_name="toyworld_eval")
    copying = script["evaluate"]
    # Each setting is measured by copying the source (a second's work for the whole table): what is under test
    # is which settings run, read back from the saved results.
    replaced = lambda editor, cases, overrides, wording: copying(editor, cases, None, "")  # noqa: E731
    monkeypatch.setitem(script["main"].__globals__, "evaluate", replaced)  # runpy returns a copy of the globals
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--scenes", "1", "--save", str(tmp_path / "eval.json")])
    script["main"]()
    ran = list(json.loads((tmp_path / "eval.json").read_text()))
    assert "recipe" in ran and "no refinement" in ran and "K=4" in ran and "guidance 3.5" in ran, ran
    assert not {"20 steps", "shift 3", "shift 8", "default spacing"} & set(ran), "the sampler's rows run when named"
    assert len(ran) == 17, ran


def test_bad_input_is_one_line_and_nothing_runs(tmp_path, monkeypatch, capsys):
    # In this process: nine interpreters importing the model's libraries took a minute to say nine lines.
    script = runpy.run_path(str(SCRIPT), run_name="toyworld_eval")
    (tmp_path / "folder.json").mkdir()
    for args, expected in (
        (["--model", str(tmp_path / "missing")], "missing"),
        (["--scenes", "0"], "--scenes must be at least 1"),
        (["--save", str(tmp_path / "no" / "such" / "folder.json")], "output folder does not exist"),
        (["--save", str(tmp_path / "table.txt")], "must end in one of .json"),
        (["--save", str(tmp_path)], "must end in one of .json"),
        (["--save", str(tmp_path / "folder.json")], "is a folder"),
        (["--save", "/proc/self/eval.json"], "cannot write into"),  # refused even for root, as a read-only mount
        (["--settings", "K=9"], "invalid choice"),
        (["--paired-with", "K=9"], "invalid choice"),
        (["--seed-start", "999999"], "--seed-start must be at least 1000000 (lower seeds are training's)"),
    ):
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
        with pytest.raises(SystemExit) as exit_info:
            script["main"]()
        said = capsys.readouterr()
        assert exit_info.value.code == 2, args
        assert expected in said.err and "Traceback" not in said.err, said.err
        assert "held-out scenes from seed" not in said.out, "refused before loading the model"


def test_another_set_of_held_out_scenes_starts_at_the_seed_given(tmp_path):
    save = tmp_path / "eval.json"
    result = run("--scenes", "2", "--seed-start", "1200000", "--settings", "copy", "--save", str(save))
    assert result.returncode == 0, result.stderr
    assert "2 held-out scenes from seed 1200000" in result.stdout
    assert [row["seed"] for row in json.loads(save.read_text())["copy"]] == [1_200_000, 1_200_001]
