"""The `ifedit` command end to end on a tiny model folder, and every user mistake it must refuse cleanly."""

import importlib.util
import json
import signal
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from chat_server import GOOD_ANSWER, Reply
from ifedit.cli import EXIT_INPUT, EXIT_SETUP, main, recorded_argv

FAST = ["--steps", "4", "--frames", "9", "--height", "64", "--width", "96"]


@pytest.fixture
def source(tmp_path, source_image):
    path = tmp_path / "source.png"
    source_image.save(path)
    return path


def _edit(source, output, model, *extra):
    # --no-lora: the a14b folder gets the paper's recipe, whose LoRAs these tests have no use for
    command = ["edit", str(source), "the square slides right", "-o", str(output), "--model", model, "--no-lora"]
    return main([*command, *FAST, *extra])


def test_edit_writes_the_image_and_its_record(tmp_path, source, tiny_dirs, capsys):
    output = tmp_path / "out" / "edited.png"
    output.parent.mkdir()
    frames = tmp_path / "frames"
    code = _edit(source, output, tiny_dirs["a14b"], "--seed", "3", "--save-video", "--save-frames", str(frames))
    assert code == 0
    assert sorted(path.name for path in output.parent.iterdir()) == ["edited.json", "edited.mp4", "edited.png"]
    assert PIL.Image.open(output).size == (96, 64)
    record = json.loads(output.with_suffix(".json").read_text())
    # With no VLM configured the offline template writes the prompt, and says so.
    assert record["instruction"] == "the square slides right"
    assert "the square slides right" in record["prompt"] and "camera" in record["prompt"].lower()
    enhancement = record["prompt_enhancement"]
    assert enhancement["backend"] == "template" and enhancement["prompt"] == record["prompt"]
    assert "no VLM configured" in enhancement["fallbacks"][0]["reason"]
    assert record["model"]["model_id"] == tiny_dirs["a14b"] and record["seed"] == 3
    settings = record["settings"]
    assert (settings["num_inference_steps"], settings["num_frames"], settings["tld_stride"]) == (4, 9, 3)
    assert (settings["height"], settings["width"], settings["refine"]) == (64, 96, True)
    result = record["result"]
    assert str(result["selected_index"]) in result["sharpness"] and result["kept_latent_frames"] == [0, 2]
    assert str(result["refine_selected_index"]) in result["refine_sharpness"]
    assert record["timings"]["load"] > 0 and record["timings"]["total"] > 0
    assert record["placement"] == {"device": "cpu", "dtype": "float32", "offload": "none", "vae_tiling": False,
                                   "storage_dtype": None, "first_block_cache": None, "attention_backend": None,
                                   "fp8_compute": False, "vae_dtype": "float32", "vae_channels_last": False,
                                   "compile": False}  # fmt: skip
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["diffusers"]
    assert record["outputs"]["video"].endswith("edited.mp4")
    names = sorted(path.name for path in frames.iterdir())
    assert "edit_candidates.png" in names and "refine_candidates.png" in names
    assert names.count("edit_000.png") == 1 and len([n for n in names if n.startswith("refine_0")]) == 5
    sheet = PIL.Image.open(frames / "edit_candidates.png")
    assert sheet.width == 4 * (256 + 8)  # the last latent frame's 4 candidates side by side
    err = capsys.readouterr().err
    assert "wrote" in err and "no VLM configured" in err


def test_same_seed_same_pixels(tmp_path, source, tiny_dirs):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert _edit(source, first, tiny_dirs["ti2v"], "--seed", "11", "-q") == 0
    assert _edit(source, second, tiny_dirs["ti2v"], "--seed", "11", "-q") == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(second)))
    assert json.loads(first.with_suffix(".json").read_text())["seed"] == 11


def test_options_reach_the_pipeline(tmp_path, source, tiny_dirs):
    output = tmp_path / "o.png"
    code = _edit(source, output, tiny_dirs["wan21"], "--prompt", "a ready video prompt", "--no-refine",
                 "--tld-stride", "1", "--guidance", "2.5", "-q")  # fmt: skip
    assert code == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["prompt"] == "a ready video prompt" and record["prompt_enhancement"] == {"backend": "given"}
    assert record["settings"]["guidance_scale"] == 2.5 and record["settings"]["refine"] is False
    assert record["result"]["refine_sharpness"] is None and record["result"]["kept_latent_frames"] is None


def test_overwrite_replaces_an_existing_output(tmp_path, source, tiny_dirs):
    output = tmp_path / "o.png"
    output.write_bytes(b"old")
    assert _edit(source, output, tiny_dirs["a14b"], "--overwrite", "-q") == 0
    assert PIL.Image.open(output).size == (96, 64)


def _bad_inputs(tmp_path, source):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    small = tmp_path / "small.png"
    PIL.Image.new("RGB", (40, 90)).save(small)
    huge = tmp_path / "huge.png"
    PIL.Image.new("L", (8000, 5001)).save(huge)
    existing = tmp_path / "out" / "exists.png"
    existing.write_bytes(b"keep me")
    out = str(tmp_path / "out" / "new.png")
    instruction = "the square slides right"
    return [
        ([str(tmp_path / "missing.png"), instruction, "-o", out], "image file not found"),
        ([str(text), instruction, "-o", out], "not an image file"),
        ([str(small), instruction, "-o", out], "image is too small|small.png is too small: 40x90 px"),
        ([str(huge), instruction, "-o", out], "too large: 8000x5001 px"),
        ([str(source), "   ", "-o", out], "instruction must not be empty"),
        ([str(source), instruction, "-o", out, "--tld-stride", "0"], "--tld-stride must be an integer >= 1"),
        ([str(source), instruction, "-o", out, "--tld-threshold", "0"], r"--tld-threshold must be .*\(0, 1\]"),
        ([str(source), instruction, "-o", out, "--tld-threshold", "1.5"], r"--tld-threshold must be .*\(0, 1\]"),
        ([str(source), instruction, "-o", out, "--frames", "4"], "--frames must be an integer >= 5, got 4"),
        ([str(source), instruction, "-o", str(tmp_path / "nowhere" / "x.png")], "output folder does not exist"),
        ([str(source), instruction, "-o", str(existing)], "output exists: .*exists.png .*--overwrite"),
        ([str(source), instruction, "-o", str(tmp_path / "out" / "x.gif")], r"must end in one of \.png"),
        ([str(source), instruction, "-o", out, "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        ([str(source), instruction, "-o", out, "--model", "wan"], "unknown model 'wan'"),
        ([str(source), instruction, "-o", out, "--refine-strength", "0"], r"--refine-strength must be a number in"),
        ([str(source), instruction, "-o", out, "--device", "tpu:0"], "unknown device 'tpu:0'"),
        # In the options' own names, and without Python's None (leaving an option out is how to say it).
        (
            [str(source), instruction, "-o", out, "--guidance", "1e23"],
            r"^ifedit: error: --guidance must be a number "
            r"from 0 to 100, got 1e\+23$",
        ),
        (
            [str(source), instruction, "-o", out, "--height", "9"],
            r"--height must be a whole number of pixels from 16 "
            "to 4096, got 9$",
        ),
        (
            [str(source), instruction, "-o", out, "--seed", "-1"],
            r"--seed must be a whole number from 0 to \d+, got -1$",
        ),
    ]


def test_each_bad_input_gets_one_line_and_writes_nothing(tmp_path, source, tiny_dirs, capsys):
    (tmp_path / "out").mkdir()
    for arguments, message in _bad_inputs(tmp_path, source):
        uses_model = "--model" in arguments
        command = ["edit", *arguments, *FAST[:2], *([] if uses_model else ["--model", tiny_dirs["a14b"]])]
        try:
            code = main(command)
        except SystemExit as exit:  # argparse's own refusals
            code = exit.code
        err = capsys.readouterr().err
        assert code == 2, (arguments, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0], (arguments, err)
        assert __import__("re").search(message, lines[0]), (message, lines[0])
        assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["exists.png"]
        assert (tmp_path / "out" / "exists.png").read_bytes() == b"keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_large_model_without_gpu_says_what_to_do(tmp_path, source, capsys):
    code = main(["edit", str(source), "melt", "-o", str(tmp_path / "o.png")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA GPU" in err and "debug-tiny" in err and len(err.splitlines()) == 1
    assert "try --model toyworld for real edits on a CPU" in err
    assert not (tmp_path / "o.png").exists()


def test_save_frames_refuses_a_full_folder(tmp_path, source, tiny_dirs, capsys):
    full = tmp_path / "frames"
    full.mkdir()
    (full / "old.png").write_bytes(b"x")
    code = _edit(source, tmp_path / "o.png", tiny_dirs["a14b"], "--save-frames", str(full))
    assert code == 2 and "is not empty" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_info_lists_presets_and_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in ("paper", "debug-tiny", "wan2.2-ti2v-5b", "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "torch", "diffusers"):
        assert text in out


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["edit", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--tld-stride", "--tld-threshold", "--no-refine", "--prompt", "--save-video",
                 "--save-frames", "--offload", "--seed", "--lora-scale"):  # fmt: skip
        assert flag in out
    with pytest.raises(SystemExit):
        main(["--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert f"{EXIT_INPUT} bad input" in said and f"{EXIT_SETUP} a setup problem" in said  # the codes scripts test


def test_installed_command_runs_the_smoke_test_preset(tmp_path, source):
    output = tmp_path / "smoke.png"
    completed = subprocess.run(
        [sys.executable, "-m", "ifedit", "edit", str(source), "the square slides right", "-o", str(output),
         "--model", "debug-tiny", "--seed", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    assert PIL.Image.open(output).size == (96, 64)
    assert json.loads(output.with_suffix(".json").read_text())["model"]["preset"] == "debug-tiny"


def test_recorded_command_lines_hide_api_keys():
    argv = ["bench", "run", "--vlm-api-key", "sk-1", "--vlm-api-model", "m", "--judge-api-key=sk-2", "--seed", "3"]
    assert recorded_argv(argv) == ["bench", "run", "--vlm-api-key", "***", "--vlm-api-model", "m",
                                   "--judge-api-key=***", "--seed", "3"]  # fmt: skip
    assert recorded_argv(["edit", "api-key", "--vlm-api-model", "m"]) == ["edit", "api-key", "--vlm-api-model", "m"]
    # Misspelt key options too (the parser refuses them, but the key must not reach its message either) - yet not
    # the options that only look alike.
    assert recorded_argv(["edit", "--vlm-api-kye", "sk-3", "--api-kee=sk-4"]) == ["edit", "--vlm-api-kye", "***",
                                                                                  "--api-kee=***"]  # fmt: skip
    assert recorded_argv(["bench", "--judge-api-model", "m"]) == ["bench", "--judge-api-model", "m"]


def test_prompt_command_without_a_vlm_says_so_once(source, capsys, monkeypatch):
    monkeypatch.delenv("IFEDIT_VLM_BASE_URL", raising=False)
    assert main(["prompt", str(source), "make the square a triangle"]) == 0
    err = capsys.readouterr().err
    assert err.count("no VLM configured") == 1 and "written by template" in err, err


def test_prompt_command_asks_the_configured_server(tmp_path, source, chat_server, capsys):
    code = main(["prompt", str(source), "make the square a triangle", "--vlm-base-url", chat_server.url,
                 "--vlm-api-model", "tiny-vlm", "--vlm-api-key", "k"])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert out.strip() == GOOD_ANSWER
    assert "written by api (tiny-vlm)" in err
    payload = chat_server.payload()
    assert payload["model"] == "tiny-vlm"
    content = payload["messages"][-1]["content"]
    assert any(part.get("type") == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
               for part in content)  # fmt: skip
    assert main(["prompt", str(source), "A red triangle.", "--input-kind", "target", "--prompt-enhancer",
                 "template", "--json"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["backend"] == "template" and record["input_kind"] == "target"


def test_edit_uses_the_server_from_the_environment(tmp_path, source, tiny_dirs, chat_server, monkeypatch):
    monkeypatch.setenv("IFEDIT_VLM_BASE_URL", chat_server.url)
    monkeypatch.setenv("IFEDIT_VLM_MODEL", "tiny-vlm")
    output = tmp_path / "o.png"
    assert _edit(source, output, tiny_dirs["a14b"], "-q") == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["prompt"] == GOOD_ANSWER
    assert record["prompt_enhancement"]["backend"] == "api" and record["prompt_enhancement"]["model"] == "tiny-vlm"
    assert record["prompt_enhancement"]["fallbacks"] == []
    assert len(chat_server.requests) == 1


def test_a_failing_server_falls_back_visibly_or_stops_when_strict(tmp_path, source, tiny_dirs, chat_server, capsys):
    chat_server.replies = [Reply(status=401, body={"error": {"message": "bad key"}})]
    output = tmp_path / "o.png"
    args = ["--vlm-base-url", chat_server.url, "--vlm-api-model", "m", "--vlm-api-key=sk-do-not-store"]
    assert _edit(source, output, tiny_dirs["a14b"], *args) == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["argv"][-3:] == ["--vlm-api-model", "m", "--vlm-api-key=***"]
    assert "sk-do-not-store" not in output.with_suffix(".json").read_text()
    assert record["prompt_enhancement"]["backend"] == "template"
    [fallback] = record["prompt_enhancement"]["fallbacks"]
    assert fallback["backend"] == "api" and "401" in fallback["reason"]
    assert "falling back to template" in capsys.readouterr().err
    chat_server.replies = [Reply(status=401, body={"error": {"message": "bad key"}})]
    strict = tmp_path / "strict.png"
    assert _edit(source, strict, tiny_dirs["a14b"], *args, "--strict-prompt") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "401" in err
    assert not strict.exists() and not strict.with_suffix(".json").exists()


def test_enhancement_can_be_turned_off(tmp_path, source, tiny_dirs):
    output = tmp_path / "o.png"
    assert _edit(source, output, tiny_dirs["a14b"], "--prompt-enhancer", "none", "-q") == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["prompt"] == "the square slides right" and record["prompt_enhancement"]["backend"] == "none"


def test_save_video_without_the_video_extra_says_what_to_install(tmp_path, source, tiny_dirs, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real_find_spec(name, *a)
    )
    output = tmp_path / "o.png"
    assert _edit(source, output, tiny_dirs["a14b"], "--save-video") == 1
    assert "pip install 'imageio>=2.30' 'imageio-ffmpeg>=0.5'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [source]


def test_toyworld_gets_its_template_without_a_vlm_notice(tmp_path, capsys):
    from ifedit.toyworld.files import write_sample

    write_sample(1_000_001, tmp_path / "scene", None, False)
    output = tmp_path / "o.png"
    assert main(["edit", str(tmp_path / "scene" / "source.png"), "the red circle moves left", "-o", str(output),
                 "--model", "toyworld"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "VLM" not in err and "wrote" in err
    enhancement = json.loads(output.with_suffix(".json").read_text())["prompt_enhancement"]
    assert enhancement["backend"] == "template" and enhancement["fallbacks"] == []


def test_the_readme_no_gpu_example_runs(tmp_path):
    """The commands of the README's "No GPU? Start here" block, with the photo it ships."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if line.startswith("ifedit edit docs/example.png"))
    arguments = __import__("shlex").split(command.split("#")[0])[1:]
    arguments[1] = str(Path(__file__).parents[1] / arguments[1])
    arguments[arguments.index("-o") + 1] = str(tmp_path / "edited.png")
    assert main(arguments) == 0
    assert PIL.Image.open(tmp_path / "edited.png").size == (64, 64)


def test_options_that_will_not_act_are_named_and_contradictions_refused(tmp_path, source, tiny_dirs, capsys):
    nowhere = str(tmp_path / "nowhere" / "o.png")  # stops the run after the options are read
    base = ["edit", str(source), "the square slides right", "-o", nowhere, "--model", tiny_dirs["a14b"]]
    main([*base, "--no-refine", "--refine-frames", "9", "--tld-stride", "1", "--tld-threshold", "0.5",
          "--prompt", "a square slides", "--vlm", "some/vlm"])  # fmt: skip
    err = capsys.readouterr().err
    assert "--refine-frames has no effect: the refinement pass is off" in err
    assert "--tld-threshold has no effect: --tld-stride 1 drops no frames" in err
    assert "--vlm has no effect: --prompt is used as given" in err
    main([*base, "--refine-frames", "9", "--tld-threshold", "0.5"])  # each acts here: nothing to say
    assert "no effect" not in capsys.readouterr().err
    assert main([*base, "--no-lora", "--lora-scale", "0.5"]) == 2
    assert "--no-lora and --lora-scale contradict each other" in capsys.readouterr().err


def test_output_cut_short_by_its_reader_ends_quietly():
    """`ifedit plan --json | head -c 10`: the reader leaves; Python's BrokenPipeError traceback is not for users."""
    plan = subprocess.Popen([sys.executable, "-m", "ifedit", "plan", "--model", "paper", "--gpu-memory", "24",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    plan.stdout.close()  # gone before the plan is printed (importing takes seconds)
    assert plan.wait(timeout=120) == 128 + signal.SIGPIPE
    assert plan.stderr.read() == b""


def test_the_memory_plan_is_sized_for_the_photos_clip(tmp_path):
    """The plan is made before the model loads, but after the photo is read: its clip is the photo's shape at the
    model's area (it was 48 x 88, the default 480 x 832 shape, for a 64 x 64 toy-world edit)."""
    photo = tmp_path / "square.png"
    PIL.Image.new("RGB", (64, 64), (200, 40, 40)).save(photo)
    output = tmp_path / "o.png"
    assert main(["edit", str(photo), "the square slides right", "-o", str(output), "--model", "toyworld",
                 "--steps", "2", "--frames", "5", "-q"]) == 0  # fmt: skip
    record = json.loads(output.with_suffix(".json").read_text())
    planned = record["memory_plan"]["planned_clip"]
    assert (planned["height"], planned["width"]) == (record["settings"]["height"], record["settings"]["width"])
    assert (planned["height"], planned["width"]) == (64, 64)


def test_a_photo_too_narrow_for_the_model_is_refused_before_any_model_loads(tmp_path, capsys):
    narrow = tmp_path / "strip.png"
    PIL.Image.new("RGB", (64, 4000), (30, 90, 200)).save(narrow)
    code = main(["edit", str(narrow), "the square slides right", "-o", str(tmp_path / "o.png"), "--model", "toyworld",
                 "--prompt-enhancer", "local", "--vlm", "ifedit-test/absent-vlm", "--strict-prompt"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "(64x4000 px) is too narrow for this model" in err
    assert "VLM" not in err  # refused before the prompt stage would have loaded (and failed on) a VLM
