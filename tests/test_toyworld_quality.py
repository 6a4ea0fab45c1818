"""The shipped toy-world model edits held-out scenes better than the wrong pipelines a change could make of it.

Each test compares the shipped pipeline with a wrong one on the same 22 held-out scenes (`evaluate.quality_cases`,
seeds training never sees), edited as `ifedit edit --model toyworld` edits them (the preset's settings, the offline
template prompt), and names the deliberate bugs it catches (`tools/mutants.py` plants them and checks). The margins
come from `python tools/quality_margins.py`: each sits at the safe end of the shipped pipeline's bootstrap 95%
interval over the scenes (a floor at or below its low end, a ceiling at or above its high end), on the side away
from what the wrong pipeline reaches. The mutations each test names are the ones
`tools/mutants.py` measured it to catch on its own. Two bugs are judged by what the pipeline runs instead
(`test_the_preset_edits_with_both_experts_dropout_and_the_sharpest_frame`), since the edits cannot show them: dropout
never happening (the toy world, like the paper, edits about as well at K = 3 as at K = 1) and the last latent frame
dropped (the one before it already shows 78-99% of a move).
"""

import dataclasses
import json

import numpy as np
import PIL.Image
import pytest

from ifedit.cli import main
from ifedit.editor import Editor
from ifedit.loading import LoadOptions
from ifedit.presets import TOYWORLD_TRAINING_RECORD, TOYWORLD_WEIGHTS, edit_settings, get_preset
from ifedit.toyworld.config import TrainConfig
from ifedit.toyworld.demo import DEMO_EVENTS
from ifedit.toyworld.evaluate import (
    QUALITY_SEED_START,
    quality_runs,
    quality_statistics,
    swapped_experts,
    vae_round_trips,
)
from ifedit.toyworld.scenes import render_clip, sample_case
from observe import laplacian_variance_of, recorded_calls

# Measured with tools/quality_margins.py on the shipped weights, as value [bootstrap 95% interval over the scenes]:
MIN_IMPROVED_SHARE = 0.5  # 0.70 [0.50, 0.90] of changing scenes improved by more than 20%; copying the source: 0
MIN_GAIN_OVER_SWAPPED = 0.58  # mean region gain over the swapped experts': 1.78 [0.58, 3.49]; no difference: 0
MIN_SHARPNESS_OVER_BLURRIEST = 1.28  # output over blurriest candidate: 1.35 [1.29, 1.42]; the blurriest itself: 1
MAX_BACKGROUND_OVER_ROUND_TRIP = 2.42  # background error over the VAE round trip's: 1.96 [1.55, 2.42]


@pytest.fixture(scope="module")
def editor() -> Editor:
    editor = Editor(get_preset("toyworld"), LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    return editor


@pytest.fixture(scope="module")
def statistics(editor) -> dict[str, np.ndarray]:
    runs = quality_runs(editor, edit_settings(editor.preset))
    return {name: values for name, (values, _) in quality_statistics(runs).items()}


def test_the_weights_ship_with_the_package_and_record_their_training():
    record = json.loads((TOYWORLD_WEIGHTS / TOYWORLD_TRAINING_RECORD).read_text())
    assert (TOYWORLD_WEIGHTS / "model_index.json").is_file()
    config = record["config"]
    assert config["seed"] == 0 and len(record["expert_losses"]) == config["dit_steps"]
    assert len(record["edge_losses"]) == config["edge_steps"], "the decoder's edge stage is part of the recipe"
    assert len(record["polish_losses"]) == config["polish_steps"], "so is its second, slower run"
    assert record["expert_losses"][-1] < record["expert_losses"][0] / 4, "the experts' loss fell while they trained"
    # `ifedit toyworld train` with its defaults is the run that made the shipped weights; settings newer than
    # them belong to a stage that is off by default.
    defaults = dataclasses.asdict(TrainConfig())
    assert {name: config[name] for name in config} == {name: defaults[name] for name in config}
    newer = set(defaults) - set(config)
    assert newer <= {"expert_polish_steps", "expert_polish_lr", "expert_polish_clips"}, newer
    assert not newer or defaults["expert_polish_steps"] == 0, "a stage the shipped weights never ran is off"


def test_the_preset_edits_with_both_experts_dropout_and_the_sharpest_frame(editor):
    """Mutations: experts swapped, temporal latent dropout never happening, the blurriest late frame chosen.

    17 frames are 5 latent frames, K = 3 keeps 0, 3 and 4; the uniform 12-step grid at shift 5 has five steps at or
    above the boundary t = 900, where the high-noise expert runs on the whole clip, guided (a conditional and an
    unconditional call); the low-noise expert runs unguided. The preset has no refinement pass (the README's table
    shows it costs the toy world region gain), so the edit pass's sharpest candidate is the output.
    """
    case = sample_case(QUALITY_SEED_START, "right")
    source = PIL.Image.fromarray(render_clip(case)[0])
    with recorded_calls(editor.pipe) as calls:
        result = editor.edit(source, case.instruction, edit_settings(editor.preset), seed=0).result
    recipe = editor.preset.recipe
    assert (recipe.guidance_scale, recipe.guidance_scale_2, recipe.refine) == (2.0, 1.0, False)
    one_pass = [("transformer", 5)] * 2 * 5 + [("transformer_2", 3)] * 7
    assert [(call.stage, call.expert, call.frames) for call in calls] == [
        ("edit", expert, frames) for expert, frames in one_pass
    ]
    assert result.kept_latent_frames == [0, 3, 4] and result.refine_kept_latent_frames is None
    assert laplacian_variance_of(np.asarray(result.image)) == pytest.approx(max(result.sharpness.values()), rel=1e-4)
    assert result.selected_index == max(result.sharpness, key=result.sharpness.get)


def test_swapping_the_experts_for_a_comparison_puts_them_back_even_after_an_error(editor):
    pipe = editor.pipe
    high, low = pipe.transformer, pipe.transformer_2
    with pytest.raises(RuntimeError), swapped_experts(editor):
        assert pipe.transformer is low and pipe.transformer_2 is high
        raise RuntimeError("an edit failed")
    assert pipe.transformer is high and pipe.transformer_2 is low


def test_round_trips_in_a_batch_match_each_clip_alone_and_return_its_last_frame(editor):
    """The background comparison's floor is measured in batches; a batch must not change it (beyond a rounding step),
    and each clip must get its own last frame back."""
    clips = np.stack(
        [render_clip(sample_case(QUALITY_SEED_START + i, event)) for i, event in enumerate(("right", "up", "fall"))]
    )
    together = vae_round_trips(editor.pipe.vae, clips, batch_size=2)  # a full batch and a part one
    for clip, batched, alone in zip(
        clips, together, vae_round_trips(editor.pipe.vae, clips, batch_size=1), strict=True
    ):
        difference = np.abs(batched.astype(int) - alone.astype(int))
        assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3
        error = {
            name: np.abs(batched.astype(int) - clip[index].astype(int)).mean()
            for name, index in (("first", 0), ("last", -1))
        }
        assert error["last"] < error["first"], error


def test_edits_remove_more_of_the_changed_regions_error_than_copying_the_source(statistics):
    """Mutations: the source frame returned instead of the edit; the experts swapped; the low-noise expert never
    running."""
    share = np.mean(statistics["improved over copying"])
    assert share >= MIN_IMPROVED_SHARE, f"{share:.2f} of the edits improve on copying the source by more than 20%"


def test_edits_beat_the_same_pipeline_with_its_experts_swapped(statistics):
    """Mutations: the experts swapped (compared with itself, the pipeline gains 0); the low-noise expert never
    running."""
    margin = np.mean(statistics["gain over swapped experts"])
    assert margin >= MIN_GAIN_OVER_SWAPPED, f"region gain only {margin:.2f} above the swapped experts'"


def test_the_output_is_sharper_than_the_blurriest_candidate_frame(statistics):
    """Mutations: the blurriest frame chosen, by the sharpness scorer or by the pipeline."""
    ratio = np.mean(statistics["sharpness over blurriest"])
    assert ratio >= MIN_SHARPNESS_OVER_BLURRIEST, f"output sharpness {ratio:.2f} x the blurriest candidate's"


def test_edits_keep_the_background_nearly_as_well_as_the_vae_round_trip(statistics):
    """The background error of an edit against the VAE's own error on the unchanged source: the VAE sets the floor,
    so the comparison holds across retrained VAEs. Mutations: the experts swapped; the low-noise expert never
    running; the I2V condition thinned with the wrong latent frames."""
    ratio = np.mean(statistics["background over VAE round trip"])
    assert ratio <= MAX_BACKGROUND_OVER_ROUND_TRIP, f"background error {ratio:.2f} x the VAE round trip's"


def test_demo_writes_a_row_per_event_and_says_how_many_met_their_target(tmp_path, capsys):
    output = tmp_path / "demo.png"
    assert main(["demo", "-o", str(output)]) == 0
    picture = PIL.Image.open(output)
    assert picture.height % 6 == 0 and picture.height > picture.width > 3 * 160, "six source | edit | target rows"
    said = capsys.readouterr().err
    assert "edits met their target" in said
    record = json.loads(output.with_suffix(".json").read_text())
    assert [scene["event"] for scene in record["scenes"]] == list(DEMO_EVENTS)
    assert f"{record['met_target']}/{record['edits']} edits met their target" in said
    assert record["met_target"] == sum(scene["met_target"] for scene in record["scenes"])
    assert all(scene["edit"]["prompt"] and "seed" in scene["edit"] for scene in record["scenes"])
    # The picture and its record are one output: a second run refuses to replace either without --overwrite.
    output.unlink()
    assert main(["demo", "-o", str(output)]) == 2
    assert "output exists" in capsys.readouterr().err and not output.exists()
