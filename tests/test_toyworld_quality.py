"""The shipped toy-world model makes the edits it is asked for, on held-out scenes, far better than doing nothing.

Scenes come from seeds training never sees, and are edited the way `ifedit edit --model toyworld` edits them (the
preset's settings, the offline template prompt); the detectors are the toy world's own. Thresholds are set from
`benchmarks/toyworld_eval.py` with a margin (see the README's toy-world table), so a change that breaks the
pipeline or the weights fails here, while these fixed seeds stay reproducible on any CPU.
"""

import json

import numpy as np
import PIL.Image
import pytest

from ifedit.cli import main
from ifedit.editor import Editor
from ifedit.loading import LoadOptions
from ifedit.presets import TOYWORLD_TRAINING_RECORD, TOYWORLD_WEIGHTS, edit_settings, get_preset
from ifedit.prompting import enhance
from ifedit.toyworld.detect import MOVING_EVENTS, move_error, score_edit
from ifedit.toyworld.scenes import EVAL_SEED_START, EVENTS, render_clip, sample_case
from observe import laplacian_variance_of, recorded_calls

SCENES_PER_EVENT = 2
QUALITY_SEED_START = EVAL_SEED_START + 50_000  # apart from the evaluation's 110 scenes and the demo's
MIN_SUCCESS = 0.15  # of the changing events, measured 0.25 (copying the source meets none of them)
MAX_MOVE_ERROR_RATIO = 0.6  # mean distance of moved shapes from their targets over copying's, measured 0.32
MAX_BACKGROUND_ERROR = 12.0  # mean 0-255 error on the rest of the picture in edits that met their target: 8.8


@pytest.fixture(scope="module")
def editor() -> Editor:
    editor = Editor(get_preset("toyworld"), LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    return editor


@pytest.fixture(scope="module")
def edits(editor):
    settings = edit_settings(editor.preset)
    results = []
    for index in range(SCENES_PER_EVENT * len(EVENTS)):
        case = sample_case(QUALITY_SEED_START + index, EVENTS[index % len(EVENTS)])
        clip = render_clip(case)
        source = PIL.Image.fromarray(clip[0])
        prompt = enhance(source, case.instruction, enhancer="template", use_cache=False).prompt
        output = np.asarray(editor.edit(source, case.instruction, settings, prompt=prompt, seed=index).result.image)
        results.append((case, score_edit(case, output, clip[-1]), score_edit(case, clip[0], clip[-1])))
    return results


def test_the_weights_ship_with_the_package_and_record_their_training():
    record = json.loads((TOYWORLD_WEIGHTS / TOYWORLD_TRAINING_RECORD).read_text())
    assert (TOYWORLD_WEIGHTS / "model_index.json").is_file()
    assert record["config"]["seed"] == 0 and len(record["expert_losses"]) == record["config"]["dit_steps"]
    assert record["expert_losses"][-1] < record["expert_losses"][0] / 4, "the experts' loss fell while they trained"


def test_the_preset_edits_with_both_experts_dropout_and_the_sharpest_frame(editor):
    """Mutations: experts swapped, temporal latent dropout never happening, the blurriest late frame chosen.

    17 frames are 5 latent frames, K = 3 keeps 0, 3 and 4; the uniform 12-step grid at shift 5 has five steps at or
    above the boundary t = 900, where the high-noise expert runs on the whole clip.
    """
    case = sample_case(QUALITY_SEED_START, "right")
    source = PIL.Image.fromarray(render_clip(case)[0])
    with recorded_calls(editor.pipe) as calls:
        result = editor.edit(source, case.instruction, edit_settings(editor.preset), seed=0).result
    assert [(call.expert, call.frames) for call in calls] == [("transformer", 5)] * 5 + [("transformer_2", 3)] * 7
    assert result.kept_latent_frames == [0, 3, 4] and result.refine_sharpness is None
    assert laplacian_variance_of(np.asarray(result.image)) == pytest.approx(max(result.sharpness.values()), rel=1e-4)
    assert result.selected_index == max(result.sharpness, key=result.sharpness.get)


def test_edits_meet_their_targets_where_copying_meets_none(edits):
    changed = [(edit, copy) for case, edit, copy in edits if case.event != "still"]
    success = np.mean([edit.success for edit, _ in changed])
    assert not any(copy.success for _, copy in changed)
    assert success >= MIN_SUCCESS, f"{success:.2f} of the edits met their target"


def test_moved_shapes_land_near_their_targets(edits):
    moved = [(edit, copy) for case, edit, copy in edits if case.event in MOVING_EVENTS]
    edit_error = np.mean([move_error(edit.position_error) for edit, _ in moved])
    copy_error = np.mean([copy.position_error for _, copy in moved])
    assert edit_error <= MAX_MOVE_ERROR_RATIO * copy_error, f"{edit_error:.1f} px vs copying's {copy_error:.1f} px"


def test_edits_that_make_their_change_keep_the_rest_of_the_picture(edits):
    """Copying the source keeps the background perfectly and changes nothing: only edits that met their target
    count, so a do-nothing edit fails here."""
    made = [edit for case, edit, _ in edits if case.event != "still" and edit.success]
    assert made, "no edit made its change"
    error = np.mean([edit.background_error for edit in made])
    assert error < MAX_BACKGROUND_ERROR, f"mean background error {error:.1f} over {len(made)} edits"


def test_demo_writes_a_row_per_event_and_says_how_many_met_their_target(tmp_path, capsys):
    output = tmp_path / "demo.png"
    assert main(["demo", "-o", str(output)]) == 0
    picture = PIL.Image.open(output)
    assert picture.height % 6 == 0 and picture.height > picture.width > 3 * 160, "six source | edit | target rows"
    assert "edits met their target" in capsys.readouterr().err
