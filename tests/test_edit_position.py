"""Edit intensity: `edit_position` reads the edit part-way along the clip, from a latent frame kept through dropout."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from ifedit.cli import main
from ifedit.dropout import clip_frame_index, kept_frame_indices, position_latent_frame
from ifedit.editor import Editor
from ifedit.errors import InvalidInputError
from ifedit.loading import LoadOptions
from ifedit.options import EditSettings
from ifedit.presets import edit_settings, get_preset
from ifedit.sharpness import latent_frame_candidates
from ifedit.toyworld.detect import detect
from ifedit.toyworld.scenes import EVAL_SEED_START, render_clip, sample_case

TINY = dict(num_inference_steps=2, height=64, width=96, refine=False)


def test_position_names_the_nearest_latent_frame():
    assert [position_latent_frame(9, p) for p in (1.0, 0.75, 0.5, 0.25, 0.1, 0.05)] == [8, 6, 4, 2, 1, 0]
    assert position_latent_frame(5, 0.5) == 2 and position_latent_frame(2, 0.5) == 1  # halves round up


def test_the_requested_latent_frame_survives_dropout():
    assert kept_frame_indices(9, 3) == [0, 3, 6, 8]
    assert kept_frame_indices(9, 3, also=(4,)) == [0, 3, 4, 6, 8]
    assert kept_frame_indices(9, 3, also=(6,)) == [0, 3, 6, 8]  # already kept: nothing added
    with pytest.raises(ValueError, match="must lie in"):
        kept_frame_indices(9, 3, also=(9,))


def test_candidates_of_a_latent_frame_are_its_decoded_frames():
    assert latent_frame_candidates(8, 4) == [29, 30, 31, 32]  # the last of 9: the paper's candidates
    assert latent_frame_candidates(1, 4) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="source frame"):
        latent_frame_candidates(0, 4)


def test_thinned_clip_frames_are_numbered_as_in_the_whole_clip():
    kept = [0, 3, 4, 6, 8]
    assert clip_frame_index(0, kept, 4) == 0
    assert [clip_frame_index(frame, kept, 4) for frame in (1, 4, 5, 8, 9, 16)] == [9, 12, 13, 16, 21, 32]
    assert clip_frame_index(7, None, 4) == 7  # no dropout: the same numbering


@pytest.mark.parametrize("position", [0, -0.5, 1.5, float("nan"), float("inf"), "half", True])
def test_bad_positions_are_refused(position):
    with pytest.raises(InvalidInputError, match="edit_position must be a fraction of the clip in"):
        EditSettings(edit_position=position)


def test_a_position_on_the_source_frame_is_refused():
    with pytest.raises(InvalidInputError, match="edit_position must be at least 0.0625 for 33 frames"):
        EditSettings(num_frames=33, edit_position=0.05)
    EditSettings(num_frames=33, edit_position=0.07)


def test_pipeline_reads_the_candidates_at_the_position(load_tiny, source_image, generator):
    pipe = load_tiny("a14b")
    # 17 frames = 5 latent frames; K = 3 keeps {0, 3, 4}; position 0.5 asks for latent frame 2, kept as well.
    out = pipe(source_image, "a prompt", num_frames=17, tld_stride=3, edit_position=0.5, return_frames=True,
               generator=generator, **TINY)  # fmt: skip
    assert out.kept_latent_frames == [0, 2, 3, 4]
    assert out.edit_latent_frame == 2 and out.edit_position_used == 0.5 and out.edit_position == 0.5
    assert sorted(out.sharpness) == [1, 2, 3, 4]  # the thinned clip's frames of its second latent frame
    assert out.selected_clip_frame == out.selected_index + 4  # latent frame 2 of the whole clip: frames 5-8
    assert np.array_equal(np.asarray(out.image), np.asarray(out.frames[out.selected_index]))


def test_without_dropout_a_position_picks_from_the_same_clip(load_tiny, source_image):
    """Position changes only which frames are read: with K = 1 the clip itself is the same, frame for frame."""
    import torch

    pipe = load_tiny("ti2v")
    settings = dict(num_frames=17, tld_stride=1, return_frames=True, **TINY)
    whole = pipe(source_image, "a prompt", generator=torch.Generator().manual_seed(1), **settings)
    half = pipe(source_image, "a prompt", edit_position=0.5, generator=torch.Generator().manual_seed(1), **settings)
    assert sorted(whole.sharpness) == [13, 14, 15, 16] and sorted(half.sharpness) == [5, 6, 7, 8]
    assert np.array_equal(np.asarray(half.image), np.asarray(whole.frames[half.selected_index]))
    assert half.selected_clip_frame == half.selected_index


def test_decoding_only_what_is_needed_decodes_around_the_position(load_tiny, source_image, generator):
    pipe = load_tiny("a14b")
    out = pipe(source_image, "a prompt", num_frames=17, tld_stride=1, edit_position=0.5, decode_frames="needed",
               generator=generator, **TINY)  # fmt: skip
    assert sorted(out.sharpness) == [5, 6, 7, 8] and out.selected_clip_frame == out.selected_index


def test_cli_records_the_position_and_frame(tmp_path, tiny_dirs, source_image, capsys):
    source = tmp_path / "source.png"
    source_image.save(source)
    output = tmp_path / "o.png"
    model = ["--model", tiny_dirs["a14b"], "--no-lora", "--steps", "2", "--frames", "17", "--height", "64", "--width",
             "96"]  # fmt: skip
    code = main(["edit", str(source), "the square slides right", "-o", str(output), *model, "--edit-position", "0.3",
                 "-q"])  # fmt: skip
    assert code == 0
    result = json.loads(output.with_suffix(".json").read_text())["result"]
    assert result["edit_position"] == {"requested": 0.3, "used": 0.25, "latent_frame": 1}
    assert 1 <= result["selected_clip_frame"] <= 4
    for bad in ("0", "1.01", "nan", "-1"):
        try:
            code = main(["edit", str(source), "x", "-o", str(output), f"--edit-position={bad}", "--overwrite"])
        except SystemExit as exit:  # argparse refuses a number that is not finite
            code = exit.code
        assert code == 2 and "edit-position" in capsys.readouterr().err.replace("_", "-")


def test_half_way_moves_the_shape_part_of_the_way(capsys):
    """On held-out toy scenes a move read at 0.5 has moved clearly less than one read at the end, the same way."""
    preset = get_preset("toyworld")
    editor = Editor(preset, LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    displacements = {0.5: [], 1.0: []}
    for index, event in enumerate(("left", "right", "up", "down", "left", "right")):
        case = sample_case(EVAL_SEED_START + 60_000 + index, event)
        source = PIL.Image.fromarray(render_clip(case)[0])
        start = np.array([case.moved.x, case.moved.y])
        wanted = np.array([case.end.x, case.end.y]) - start
        for position in displacements:
            settings = edit_settings(preset, edit_position=position)
            image = np.asarray(editor.edit(source, case.instruction, settings, seed=index).result.image)
            found = detect(image, case.end.colour)
            moved = np.array([found.x, found.y]) - start if found.found else np.zeros(2)
            displacements[position].append(float(moved @ wanted / (wanted @ wanted)))  # fraction of the move
    half, whole = np.mean(displacements[0.5]), np.mean(displacements[1.0])
    assert whole > 0.3 and 0 < half < 0.8 * whole, (half, whole)
