"""`ifedit bench run` end to end on a tiny model: layouts, records, resume after an interrupt, failures, Ray."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bench_fixtures import FAST, SHARED_TEDBENCH, bytemorph, imgedit, risebench
from ifedit.bench.benchmarks import load_cases
from ifedit.bench.distributed import MAX_ATTEMPTS, ray_outcomes
from ifedit.bench.runner import CaseEditor, RunPlan, Task, case_seed, select_cases
from ifedit.cli import EXIT_CASES_FAILED, EXIT_INPUT, EXIT_SETUP, main
from ifedit.errors import SetupError
from ifedit.loading import LoadOptions
from ifedit.presets import custom_preset, edit_settings


def _run(benchmark, data, out, model, *extra):
    return main(["bench", "run", "--benchmark", benchmark, "--data", str(data), "--out", str(out), "--model", model,
                 *FAST, *extra])  # fmt: skip


def _images(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(PIL.Image.open(p)) for p in sorted((out / "images").rglob("*.png"))}


def test_risebench_run_writes_the_official_layout_and_records(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "rise"), tmp_path / "run"
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--seed", "5", "--vlm-api-key", "sk-do-not-store") == 0
    assert sorted(_images(out)) == [
        f"images/{category}/{category}_1.png"
        for category in ("causal_reasoning", "logical_reasoning", "spatial_reasoning", "temporal_reasoning")
    ]
    record = json.loads((out / "records" / "temporal_reasoning_1.json").read_text())
    assert record["output"] == "images/temporal_reasoning/temporal_reasoning_1.png"
    assert record["seed"] == case_seed(5, "temporal_reasoning_1") and record["case"]["input_kind"] == "instruction"
    assert record["prompt_enhancement"]["backend"] == "template" and record["settings"]["num_frames"] == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["status"], manifest["cases"], manifest["finished"], manifest["failed"]) == ("complete", 4, 4, 0)
    assert manifest["argv"][-2:] == record["argv"][-2:] == ["--vlm-api-key", "***"]
    assert not [path for path in out.rglob("*.json") if "sk-do-not-store" in path.read_text()]
    # A rerun finds everything done and touches nothing.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--seed", "5") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    # ...and refuses to mix in a run with other settings, or with load options that change the numbers.
    capsys.readouterr()
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--seed", "6") == 2
    assert f"{out} holds a run with different seed; continue it" in capsys.readouterr().err
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--seed", "5", "--first-block-cache", "0.05") == 2
    assert f"{out} holds a run with different load options; continue it" in capsys.readouterr().err
    assert manifest["load_options"] == {"dtype": "auto", "storage_dtype": None, "first_block_cache": None,
                                        "attention_backend": None, "compile": False}  # fmt: skip
    assert record["placement"]["first_block_cache"] is None and record["placement"]["compile"] is False


def test_a_run_claims_its_folder(tmp_path, tiny_dirs, capsys):
    data = risebench(tmp_path / "rise")
    # A folder holding something else is not written into.
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    assert _run("risebench", data, foreign, tiny_dirs["a14b"], "--limit", "1") == 2
    assert capsys.readouterr().err == (
        f"ifedit: error: --out {foreign} is not empty and holds no run (manifest.json); choose an empty or new "
        "folder\n"
    )
    assert sorted(path.name for path in foreign.iterdir()) == ["holiday.jpg"]
    # A folder another live run holds is refused; the lock names that run.
    out = tmp_path / "runs" / "rise"
    out.mkdir(parents=True)
    holder = f"{os.getpid()} {socket.gethostname()}"
    (out / ".lock").write_text(holder)
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ifedit: error: --out {out} is in use by another run (process {os.getpid()} on ")
    assert len(err.splitlines()) == 1 and (out / ".lock").read_text() == holder and not (out / "images").exists()
    # The lock of a run that ended without removing it is taken over, missing parents of --out are created, and the
    # lock is gone once the run is.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (out / ".lock").write_text(f"{ended.pid} {socket.gethostname()}")
    nested = tmp_path / "more" / "runs" / "rise"
    assert _run("risebench", data, nested, tiny_dirs["a14b"], "--limit", "1") == 0
    assert not (nested / ".lock").exists()
    assert _run("risebench", data, out, tiny_dirs["a14b"], "--limit", "1") == 0
    assert not (out / ".lock").exists() and len(_images(out)) == 1


def test_layouts_of_imgedit_bytemorph_and_filters(tmp_path, tiny_dirs):
    out = tmp_path / "ie"
    assert _run("imgedit", imgedit(tmp_path / "imgedit"), out, tiny_dirs["a14b"], "--categories", "style") == 0
    assert sorted(_images(out)) == ["images/673.png"]
    out = tmp_path / "bm"
    assert _run("bytemorph", bytemorph(tmp_path / "bytemorph"), out, tiny_dirs["a14b"], "--limit", "1") == 0
    pair = PIL.Image.open(out / "images" / "0_camera_zoom" / "0001.png")
    source = PIL.Image.open(tmp_path / "bytemorph" / "0_camera_zoom" / "0001.png").crop((0, 0, 64, 64))
    assert pair.size == (128, 64)  # [input | output] at the ground truth's size
    assert np.array_equal(np.asarray(pair.crop((0, 0, 64, 64))), np.asarray(source))
    assert _run("bytemorph", tmp_path / "bytemorph", tmp_path / "x", tiny_dirs["a14b"], "--categories", "9_x") == 2


@pytest.mark.skipif(not SHARED_TEDBENCH.is_dir(), reason="no shared TEdBench copy beside the repository")
def test_shared_tedbench_writes_one_image_per_pair(tmp_path, tiny_dirs):
    out = tmp_path / "ted"
    assert _run("tedbench", SHARED_TEDBENCH, out, tiny_dirs["a14b"], "--limit", "2") == 0
    assert sorted(_images(out)) == ["images/000_dog2_standing.png", "images/001_dog2_standing.png"]
    record = json.loads((out / "records" / "000_dog2_standing.json").read_text())
    assert record["case"]["input_kind"] == "target" and record["instruction"] == "A photo of a sitting dog."


def test_failed_cases_exit_with_their_own_status_named_in_the_help(capsys):
    """A run whose cases failed is not a setup problem: scripts tell the two apart by the exit status."""
    assert EXIT_CASES_FAILED not in (0, EXIT_INPUT, EXIT_SETUP)
    with pytest.raises(SystemExit):
        main(["bench", "run", "--help"])
    assert f"{EXIT_CASES_FAILED} when some failed" in " ".join(capsys.readouterr().out.split())


def test_a_corrupted_case_is_recorded_and_the_run_goes_on(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "rise"), tmp_path / "run"
    broken = data / "data" / "causal_reasoning_images" / "1.png"
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    assert _run("risebench", data, out, tiny_dirs["a14b"]) == EXIT_CASES_FAILED
    assert "1 cases failed (first: causal_reasoning_1: InvalidInputError" in capsys.readouterr().err
    assert len(_images(out)) == 3 and not (out / "records" / "causal_reasoning_1.json").exists()
    assert "not an image file" in json.loads((out / "failures" / "causal_reasoning_1.json").read_text())["error"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete with failures"
    broken.write_bytes(good)
    assert _run("risebench", data, out, tiny_dirs["a14b"]) == 0  # the rerun redoes only the failed case
    assert len(_images(out)) == 4 and not list((out / "failures").iterdir())


def _finished_records(out) -> list:
    return [path for path in (out / "records").glob("*.json") if not path.name.startswith(".")]


def test_an_interrupted_run_resumes_without_duplicates_or_gaps(tmp_path, tiny_dirs):
    data, out = risebench(tmp_path / "rise", per_category=3), tmp_path / "run"
    command = [sys.executable, "-m", "ifedit", "bench", "run", "--benchmark", "risebench", "--data", str(data),
               "--out", str(out), "--model", tiny_dirs["a14b"], *FAST]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + 240
    # Finished records only: a record being written is a hidden temporary file that pathlib's glob also matches.
    while time.monotonic() < deadline and len(_finished_records(out)) < 2:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    done = {p.name: p.read_text() for p in _finished_records(out)}
    assert 2 <= len(done) < 12
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left for a scorer to trip on

    assert _run("risebench", data, out, tiny_dirs["a14b"]) == 0
    records = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    assert len(records) == 12 and len(_images(out)) == 12
    assert all(records[name] == text for name, text in done.items())  # finished cases were not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["status"], manifest["finished"]) == ("complete", 12)


def test_ray_with_two_cpu_workers_matches_one_process(tmp_path, tiny_dirs):
    pytest.importorskip("ray")
    data = risebench(tmp_path / "rise")
    single, distributed = tmp_path / "single", tmp_path / "ray"
    # CPU workers run one thread each; a CPU matmul's rounding depends on its thread count, so match it here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run("risebench", data, single, tiny_dirs["a14b"], "--seed", "3") == 0
    finally:
        torch.set_num_threads(threads)
    assert _run("risebench", data, distributed, tiny_dirs["a14b"], "--seed", "3", "--ray", "--workers", "2") == 0
    first, second = _images(single), _images(distributed)
    assert sorted(first) == sorted(second) and len(first) == 4
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_ray_missing_is_one_line(tmp_path, tiny_dirs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert _run("risebench", risebench(tmp_path / "rise"), tmp_path / "run", tiny_dirs["a14b"], "--ray") == 1
    assert capsys.readouterr().err.strip() == "ifedit: error: --ray needs Ray: pip install 'ray>=2.9'"


class DiesOnCase(CaseEditor):
    """A worker whose process exits on `victim`, as an out-of-memory kill would: on the first meeting only, or on
    every one."""

    def __init__(self, marker: str, victim: str, always: bool, *args):
        super().__init__(*args)
        self.marker, self.victim, self.always = Path(marker), victim, always

    def run(self, task):
        if task.case.id == self.victim and (self.always or not self.marker.exists()):
            self.marker.touch()
            os._exit(1)
        return super().run(task)


@pytest.mark.parametrize("always", [False, True])
def test_a_crashed_ray_workers_case_goes_to_another_worker_a_bounded_number_of_times(tmp_path, tiny_dirs, always):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    data = risebench(tmp_path / "rise")
    preset = custom_preset(tiny_dirs["a14b"])
    settings = edit_settings(preset, num_inference_steps=2, num_frames=5, height=64, width=64, refine=False)
    plan = RunPlan("risebench", data, tmp_path / "run", preset, LoadOptions(device="cpu"), settings)
    cases = select_cases(load_cases("risebench", data), (), 2)
    tasks = [Task(case, case.load_source(), case.text, {"backend": "given"}, 0) for case in cases]
    marker = tmp_path / "died"
    arguments = (str(marker), cases[0].id, always, preset, plan.load_options, settings, 1)
    outcomes = {o.case.id: o for o in ray_outcomes(tasks, plan, None, 2, DiesOnCase, arguments)}
    assert marker.exists() and sorted(outcomes) == sorted(case.id for case in cases)
    assert outcomes[cases[1].id].error is None
    if always:
        assert outcomes[cases[0].id].error.startswith(f"worker died {MAX_ATTEMPTS} times on this case")
    else:
        assert outcomes[cases[0].id].error is None and outcomes[cases[0].id].picture is not None


class CannotLoad(CaseEditor):
    """A worker whose model does not load, as a missing or unreadable model folder would."""

    def __init__(self, *args):
        raise SetupError("model 'missing' not found: give a preset, a pipeline folder or a Hub id")


def test_a_ray_worker_that_cannot_start_stops_the_run_with_its_reason(tmp_path, tiny_dirs, caplog, monkeypatch):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(logging.getLogger("ifedit"), "propagate", True)
    data = risebench(tmp_path / "rise")
    preset = custom_preset(tiny_dirs["a14b"])
    plan = RunPlan("risebench", data, tmp_path / "run", preset, LoadOptions(device="cpu"), {})
    cases = select_cases(load_cases("risebench", data), (), 2)
    tasks = [Task(case, case.load_source(), case.text, {"backend": "given"}, 0) for case in cases]
    # Workers the cluster has no room for would never be placed: the count is cut to what it has.
    with caplog.at_level(logging.INFO, logger="ifedit"), pytest.raises(SetupError) as error:
        list(ray_outcomes(tasks, plan, None, 1000, CannotLoad, ()))
    assert str(error.value) == (
        "a Ray worker could not start: SetupError: model 'missing' not found: give a preset, a pipeline folder or a "
        "Hub id"
    )
    assert re.search(r"(?m)--workers 1000: the Ray cluster has (\d+) [CG]PUs; using \1$", caplog.text)


def test_report_before_scoring_says_to_score_and_names_the_preset(tmp_path, tiny_dirs, capsys):
    data, out = risebench(tmp_path / "rise"), tmp_path / "run"
    assert _run("risebench", data, out, tiny_dirs["a14b"]) == 0
    capsys.readouterr()
    assert main(["bench", "report", str(out)]) == 0
    assert f"run `ifedit bench score {out}` first" in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert report.startswith("# ifedit on risebench: paper (local folder)") and tiny_dirs["a14b"] not in report
    assert f"No scores yet: run `ifedit bench score {out}`." in report
    (out / "scores.json").write_text("[" * 100_000)
    assert main(["bench", "report", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
