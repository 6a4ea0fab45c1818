"""The web page's handlers on a real tiny model: what an edit shows, and every mistake as a one-line message."""

import importlib.util
import json
import re
import subprocess
import sys

import gradio as gr
import numpy as np
import PIL.Image
import pytest

from ifedit import ui
from ifedit.cli import EXIT_SETUP, main
from ifedit.editor import Editor
from ifedit.errors import InvalidInputError, SetupError
from ifedit.loading import LoadOptions
from ifedit.presets import resolve_model
from ifedit.prompting import enhance

FAST = {"num_inference_steps": 2, "num_frames": 5, "refine": True, "refine_steps": 2}


@pytest.fixture(scope="module")
def app(tiny_dirs):
    editor = Editor(resolve_model(tiny_dirs["a14b"]).with_loras(()), LoadOptions(device="cpu"))  # as --no-lora
    editor.pipe.set_progress_bar_config(disable=True)
    return ui.EditorApp(editor, lambda image, text: enhance(image, text, enhancer="template"), prompt_on_device=False)


@pytest.fixture
def received(app, tmp_path):
    """Files as Gradio's upload route leaves them for a handler: in its folder, and known to have arrived."""
    files: set[str] = set()
    app.uploads = ui.Uploads(tmp_path, files)

    def receive(path, orig_name: str | None = None) -> dict:
        files.add(str(path))
        return {"path": str(path), "orig_name": orig_name}

    return receive


@pytest.fixture
def upload(received, tmp_path, source_image):
    """What Gradio hands a handler for an uploaded file: its temporary path and the name the user gave it."""
    path = tmp_path / "upload_1f3a.png"
    source_image.save(path)
    return received(path, "square.png")


def edit(app, upload, instruction, settings, seed=None, progress=None, prompt=""):
    """What Run does: settle the prompt (written when empty), then edit with it."""
    prompt, record = app.prepare(upload, instruction, prompt, None, settings, seed)
    return app.run(upload, instruction, prompt, record, settings, seed, progress)


def test_an_edit_shows_result_comparison_frames_clip_and_record(app, upload):
    steps = []
    view = edit(app, upload, " the square slides right ", FAST, 7, lambda *step: steps.append(step))
    # The empty prompt box was filled by the prompt stage, and the record says which backend wrote it.
    assert "the square slides right" in view.prompt and view.prompt_record["backend"] == "template"
    assert view.image.size == (96, 64) and [image.size for image in view.before_after] == [(96, 64)] * 2
    assert view.before_after[1] is view.image
    # Progress follows the denoising steps of both passes.
    assert steps == [(1, 4, "edit step 1"), (2, 4, "edit step 2"), (3, 4, "refine step 1"), (4, 4, "refine step 2")]
    record = json.loads(view.record.read_text())
    assert record["instruction"] == "the square slides right" and record["prompt"] == view.prompt
    assert record["seed"] == 7 and record["source"]["path"] == "square.png"
    assert record["settings"]["num_inference_steps"] == 2 and record["settings"]["num_frames"] == 5
    # Candidates: each pass's late frames with their sharpness; the one that became the result is marked.
    captions = [caption for _, caption in view.candidates]
    result = record["result"]
    assert len(captions) == len(result["sharpness"]) + len(result["refine_sharpness"])
    assert sum("(chosen)" in caption for caption in captions) == 2
    chosen_frame, chosen_caption = view.candidates[view.chosen]
    assert chosen_caption.startswith(f"refine frame {result['refine_selected_index']}: sharpness ")
    assert chosen_caption.endswith("(chosen)") and chosen_frame.tobytes() == view.image.tobytes()
    assert view.clip.stat().st_size > 0 and view.clip.suffix == ".mp4"
    assert view.status.startswith("Done in ") and "seed 7, 96x64 px, 5 frames" in view.status


def test_the_users_prompt_is_used_and_recorded_as_given(app, upload):
    settings = {**FAST, "refine": False}
    first = app.run(upload, "the square slides right", "a ready video prompt", None, settings, 3.0)
    again = app.run(upload, "the square slides right", "a ready video prompt", None, settings, 3)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))  # seed 3.0 from the page is seed 3
    record = json.loads(first.record.read_text())
    assert record["prompt"] == "a ready video prompt" and record["prompt_enhancement"] == {"backend": "given"}
    assert record["result"]["refine_sharpness"] is None and "(chosen)" in first.candidates[first.chosen][1]
    # The page's boxes say "automatic" with 0 and "random" with a negative seed.
    automatic = {**settings, "height": 0, "width": 0, "tld_threshold": 0, "refine_steps": 0, "refine_frames": 0}
    record = json.loads(app.run(upload, "x", "a ready video prompt", None, automatic, -1).record.read_text())
    assert (record["settings"]["height"], record["settings"]["width"], record["settings"]["tld_threshold"]) == (
        64,
        96,
        None,
    )
    assert record["settings"]["refine_steps"] is None and record["seed"] >= 0
    # A written prompt run unchanged keeps its provenance.
    prompt, provenance = app.write_prompt(upload, "the square slides right")
    view = app.run(upload, "the square slides right", prompt, provenance, settings)
    assert json.loads(view.record.read_text())["prompt_enhancement"]["backend"] == "template"


def test_uploads_are_checked_and_sized(app, upload, received, tmp_path, monkeypatch):
    assert app.inspect(upload) == (64, 96)  # never more pixels than the photo has
    assert app.inspect(None) == (0, 0)
    # The tiny transformer has positions for 32 patches a side: 512 px.
    assert app.editor.pipe.largest_side == 512 and app.proposed_size((640, 480)) == (384, 512)
    assert app.proposed_size((4000, 3000)) == (384, 512)
    text = tmp_path / "upload_9c2e.png"
    text.write_text("these are not pixels")
    with pytest.raises(InvalidInputError, match=r"^not an image file: notes\.png \(expected a PNG"):
        app.inspect(received(text, "notes.png"))
    assert _page_message(app.inspect, {"path": str(text)}).startswith("not an image file: upload_9c2e.png")
    monkeypatch.setattr(ui, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(InvalidInputError, match=r"^image file is too large: square\.png is 0\.0 MiB"):
        app.inspect(upload)


@pytest.mark.parametrize(
    ("instruction", "settings", "message"),
    [
        ("  ", FAST, "instruction must not be empty: say what should happen"),
        ("x", {**FAST, "num_frames": 3}, "num_frames must be an integer >= 5, got 3"),
        ("x", {**FAST, "tld_threshold": 1.5}, r"tld_threshold must be a timestep fraction in \(0, 1\], got 1.5"),
        ("x", {**FAST, "num_inference_steps": 2.5}, "num_inference_steps must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_input_is_one_line_in_the_page(app, upload, instruction, settings, message):
    # Run refuses the form before writing a prompt, and the edit refuses it again should a client skip that step.
    assert re.match(message, _page_message(app.prepare, upload, instruction, "", None, settings))
    assert re.match(message, _page_message(app.run, upload, instruction, "a ready prompt", None, settings))


def _page_message(handler, *args) -> str:
    """The message the page shows when `handler` fails."""
    with pytest.raises(gr.Error) as error:
        ui._shown_in_page(handler)(*args)
    return error.value.message


def test_a_failed_edit_leaves_the_app_usable(app, upload):
    message = _page_message(app.prepare, None, "the square slides right", "", None, FAST)
    assert message == "no image: upload a photo or pick an example first"
    # The edit never writes a prompt while it holds the model: a client that skipped Run's first step is told so.
    message = _page_message(app.run, upload, "the square slides right", "  ", None, FAST)
    assert message == "video prompt must not be empty: write it first (Run does when the box is empty)"
    # Past the transformer's position table the pipeline refuses the size before running.
    too_large = {**FAST, "height": 1024, "width": 1024}
    message = _page_message(app.run, upload, "the square slides right", "a ready prompt", None, too_large)
    assert message == (
        "1024x1024 px is too large for this model: at most 512 px a side (set a smaller height and width)"
    )
    assert edit(app, upload, "the square slides right", FAST).image.size == (96, 64)


def test_an_unexpected_failure_inside_the_model_is_one_line_and_the_app_stays_usable(app, upload):
    def fails_mid_edit(done: int, total: int, label: str) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")

    # The progress reporter runs in the pipeline's step callback, so this fails inside a real denoising loop.
    message = _page_message(app.run, upload, "the square slides right", "a prompt", None, FAST, 7, fails_mid_edit)
    assert message == (
        "the edit failed (RuntimeError: CUDA error: an illegal memory access was encountered); "
        "details are in the server log"
    )
    assert app.editor.pipe.stage is None
    assert edit(app, upload, "the square slides right", FAST).image.size == (96, 64)


def test_page_messages_name_files_not_server_folders():
    def cannot_write():
        raise SetupError("cannot write the outputs in /tmp/ifedit-ui-x1/abc: No space left on device")

    def fails_inside():
        raise OSError(28, "No space left on device", "/srv/private/ifedit-ui-x1/abc/clip.mp4")

    def server_unreachable():
        raise SetupError("VLM server http://127.0.0.1:8000/v1/chat does not answer\n\x1b[31mtraceback")

    assert _page_message(cannot_write) == "cannot write the outputs in abc: No space left on device"
    assert _page_message(fails_inside) == (
        "the edit failed (OSError: [Errno 28] No space left on device: 'clip.mp4'); details are in the server log"
    )
    assert _page_message(server_unreachable) == "VLM server http://127.0.0.1:8000/v1/chat does not answer"


def test_progress_counts_only_the_steps_a_partial_refinement_runs(app, upload):
    steps = []
    settings = {**FAST, "refine_strength": 0.5}
    app.run(upload, "the square slides right", "a ready video prompt", None, settings, 7, lambda *s: steps.append(s))
    assert steps == [(1, 3, "edit step 1"), (2, 3, "edit step 2"), (3, 3, "refine step 1")]


def test_the_page_has_the_ids_scripts_drive_and_examples(app):
    page = ui.build_page(app)
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"source-image", "instruction", "prompt", "run", "result-image", "comparison", "frames", "clip"} <= ids
    assert {"frame-pick", "picked-frame", "refine-frame"} <= ids
    assert {"edit", "refine_frame"} <= {dependency.api_name for dependency in page.fns.values()}
    examples = app.examples()
    assert len(examples) == len(ui.EXAMPLE_SEEDS)
    for path, instruction in examples:
        assert PIL.Image.open(path).size == (64, 64) and instruction


def test_a_prompt_writer_on_the_models_device_takes_turns_with_edits_and_no_other_does(app):
    turns = {}
    for on_device in (True, False):
        app.prompt_on_device = on_device
        page = ui.build_page(app)
        turns[on_device] = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in page.fns.values()}
    app.prompt_on_device = False
    for endpoint in ("write_prompt", "prepare", "edit"):
        assert turns[True][endpoint][0] == "model", endpoint
    assert turns[False]["edit"][0] == "model"
    for endpoint in ("write_prompt", "prepare"):
        assert turns[False][endpoint][0] != "model" and turns[False][endpoint][1] is None, endpoint


def test_ui_loads_the_model_as_edit_does(tiny_dirs, monkeypatch):
    served = []
    monkeypatch.setattr(ui, "serve", lambda app, host, port, share, allowed_hosts: served.append((app, allowed_hosts)))
    argv = ["ui", "--model", tiny_dirs["a14b"], "--no-lora", "--device", "cpu", "--dtype", "float32", "--vae-tiling",
            "--first-block-cache", "0.05", "--prompt-enhancer", "template",
            "--allow-host", "lab.example.org"]  # fmt: skip
    assert main(argv) == 0
    [(app, allowed)] = served
    assert allowed == ("lab.example.org",)
    expected = LoadOptions(device="cpu", dtype="float32", vae_tiling=True, first_block_cache=0.05)
    assert app.editor.options == expected and app.editor.pipe.transformer.is_cache_enabled


def test_ui_without_gradio_is_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "gradio" else real(name))
    assert main(["ui", "--model", "debug-tiny"]) == EXIT_SETUP
    packages = "'gradio>=6.0' 'imageio>=2.30' 'imageio-ffmpeg>=0.5'"  # the video extra's too
    assert capsys.readouterr().err == f"ifedit: error: ifedit ui needs the ui extra: pip install {packages}\n"
    code = "import sys, ifedit.cli; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_refine_this_frame_refines_the_picked_frame_alone(app, upload):
    settings = {**FAST, "num_frames": 9, "tld_stride": 1, "refine_steps": 2}
    view = edit(app, upload, "the square slides right", settings, 3)
    assert view.clip_frames == 9 and 1 <= view.selected_frame < 9
    picked = app.clip_frame(view.clip_id, 4)
    steps = []
    refined = app.refine_frame(view.clip_id, 4, settings, 5, lambda *step: steps.append(step))
    # The still-video pass alone, from the picked frame: its own steps, the still prompt, the picked frame as "before".
    assert steps == [(1, 2, "edit step 1"), (2, 2, "edit step 2")]
    assert refined.before_after[0] is picked and refined.before_after[1] is refined.image
    record = json.loads(refined.record.read_text())
    assert record["prompt_enhancement"] == {"backend": "refinement"} and "still" in record["prompt"].lower()
    assert record["settings"]["refine"] is False and record["settings"]["num_inference_steps"] == 2
    assert refined.candidates[refined.chosen][1].endswith("(chosen)") and refined.status.startswith("Refined")
    # The same seed and frame refine to the same pixels; another frame to other pixels.
    again = app.refine_frame(view.clip_id, 4, settings, 5)
    assert again.image.tobytes() == refined.image.tobytes()
    black = PIL.Image.new("RGB", picked.size)
    other = app._keep_clip([picked, black, picked])  # a clip whose frames differ clearly
    assert app.refine_frame(other, 2, settings, 5).image.tobytes() == refined.image.tobytes()
    assert app.refine_frame(other, 1, settings, 5).image.tobytes() != refined.image.tobytes()
    bad = [(view.clip_id, 0, "frame must be a whole number from 1 to 8"), (view.clip_id, 9, "from 1 to 8"),
           ("gone", 4, "no clip to pick a frame from")]  # fmt: skip
    for bad_id, index, message in bad:
        with pytest.raises(InvalidInputError, match=message):
            app.refine_frame(bad_id, index, settings, 5)
    with pytest.raises(InvalidInputError, match="set refine strength to 1"):
        app.refine_frame(view.clip_id, 4, {**settings, "refine_strength": 0.5}, 5)
