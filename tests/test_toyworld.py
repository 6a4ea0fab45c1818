"""The toy world without its trained weights: scenes, detectors, sample files, and a short training run."""

import dataclasses
import json
import resource
import signal
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from ifedit import IFEditPipeline
from ifedit.cli import main
from ifedit.errors import InvalidInputError
from ifedit.presets import PRESETS, get_preset, resolve_model
from ifedit.toyworld.config import TrainConfig
from ifedit.toyworld.detect import detect, region_error_reduction, score_edit
from ifedit.toyworld.evaluate import bootstrap
from ifedit.toyworld.model import build_tokenizer, build_vae, vocabulary
from ifedit.toyworld.run_folder import SAVED_WHOLE, claimed, finish
from ifedit.toyworld.scenes import (
    EVAL_SEED_START,
    EVENTS,
    GROW,
    HELD_FRAMES,
    MOVE_PIXELS,
    PLACES,
    SHRINK,
    SIZE,
    render_clip,
    render_frame,
    sample_case,
)
from ifedit.toyworld.train import (
    CHANGE_WEIGHT,
    DECODER_STAGES,
    DIT_SEED_START,
    EXPERT_STAGES,
    TEXT_SEQUENCE,
    change_weight,
    changed_regions,
    decoder_view,
    edge_loss,
    encode_dataset,
    encode_text,
    expert_stage_seeds,
    i2v_condition,
    pipeline_view,
    reconstruction_loss,
    train,
    train_decoder,
    train_experts,
    trained_vae,
    weighted_mse,
)
from lock_holder import lock_held_elsewhere


def test_cases_are_pure_functions_of_their_seed():
    first, again = sample_case(EVAL_SEED_START + 5), sample_case(EVAL_SEED_START + 5)
    assert first == again
    assert np.array_equal(render_clip(first), render_clip(again))
    assert sample_case(EVAL_SEED_START + 6) != first
    assert DIT_SEED_START + TrainConfig().clips + TrainConfig().expert_polish_clips <= EVAL_SEED_START  # never seen


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_changes_what_it_says_and_the_detector_sees_it(event):
    for offset in range(5):
        case = sample_case(EVAL_SEED_START + 100 * offset, event)
        clip = render_clip(case)
        assert clip.shape == (17, SIZE, SIZE, 3) and clip.dtype == np.uint8
        assert all(np.array_equal(frame, clip[-1]) for frame in clip[-HELD_FRAMES:]), (
            "the clip ends holding the result"
        )
        perfect, copy = score_edit(case, clip[-1], clip[-1]), score_edit(case, clip[0], clip[-1])
        assert perfect.success and perfect.background_error == 0
        assert copy.success == (event == "still")
        if event in ("left", "right", "up", "down", "fall"):
            assert copy.position_error >= 10  # every move is big enough to tell from doing nothing
        assert (
            case.end.colour in case.instruction
            or event in ("still", "fade", "appear")
            or case.moved.name in (case.instruction)
        )


@pytest.mark.parametrize("event", EVENTS)
def test_region_gain_is_one_for_the_target_zero_for_the_source_and_between_for_a_half_made_edit(event):
    case = sample_case(EVAL_SEED_START + 7, event)
    clip = render_clip(case)
    gain = region_error_reduction(case, clip[-1], clip[0], clip[-1])
    if event == "still":
        assert np.isnan(gain), "nothing to change: no gain to measure"
        return
    assert gain == 1 and region_error_reduction(case, clip[0], clip[0], clip[-1]) == 0
    halfway = region_error_reduction(case, clip[len(clip) // 2 - 2], clip[0], clip[-1])
    assert 0 < halfway < 1, f"an edit halfway there gains {halfway:.2f}"


def test_region_gain_of_a_shape_moved_the_wrong_way_is_that_of_doing_nothing():
    checked = 0
    for offset in range(30):
        left = sample_case(EVAL_SEED_START + offset, "left")
        mirrored = dataclasses.replace(left.end, x=2 * left.moved.x - left.end.x)
        if not left.end.radius < mirrored.x < SIZE - left.end.radius:
            continue  # the wrong-way move would leave the frame
        wrong = render_clip(dataclasses.replace(left, event="right", end=mirrored))[-1]
        clip = render_clip(left)
        assert region_error_reduction(left, wrong, clip[0], clip[-1]) < 0.1, "no better than doing nothing"
        checked += 1
    assert checked >= 3


def test_bootstrap_intervals_hold_their_estimate_and_shrink_with_more_scenes():
    rng = np.random.default_rng(0)
    few, many = rng.random(20) < 0.6, rng.random(400) < 0.6
    for values in (few, many):
        estimate, low, high = bootstrap(values)
        assert low <= estimate <= high and estimate == values.mean()
    assert np.ptp(bootstrap(many)[1:]) < np.ptp(bootstrap(few)[1:]) / 2
    assert bootstrap(np.ones(10)) == (1.0, 1.0, 1.0)
    assert np.isnan(bootstrap([np.nan, np.nan])[0]), "all-nan values (say, only still scenes) have no estimate"


def test_an_instruction_says_exactly_what_the_result_is():
    """Every change has one size and an appearing shape goes where its instruction says, so a target is a function
    of the source and the instruction alone."""
    for offset in range(20):
        seed = EVAL_SEED_START + 37 * offset
        left, grow, shrink = (sample_case(seed, event) for event in ("left", "grow", "shrink"))
        assert left.moved.x - left.end.x == MOVE_PIXELS and left.moved.y == left.end.y
        assert grow.end.radius == pytest.approx(grow.moved.radius * GROW)
        assert shrink.end.radius == pytest.approx(shrink.moved.radius * SHRINK)
        appear = sample_case(seed, "appear")
        vertical, horizontal = appear.instruction.rsplit(" at the ", 1)[1].split()
        assert (appear.end.x, appear.end.y) == (PLACES[horizontal], PLACES[vertical])
        found = detect(render_clip(appear)[-1], appear.end.colour)
        assert abs(found.x - PLACES[horizontal]) < 1.5 and abs(found.y - PLACES[vertical]) < 1.5


def test_detector_finds_position_area_and_absence():
    frame = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    frame[10:20, 30:40] = (220, 40, 40)
    found = detect(frame, "red")
    assert found.found and found.area == 100 and (found.x, found.y) == (35.0, 15.0)
    assert not detect(frame, "blue").found


def test_sample_command_writes_the_scene(tmp_path, capsys):
    out = tmp_path / "scene"
    assert main(["toyworld", "sample", "--seed", "1000003", "--out", str(out), "--event", "fall"]) == 0
    case = sample_case(1_000_003, "fall")
    clip = render_clip(case)
    assert np.array_equal(np.asarray(PIL.Image.open(out / "source.png")), clip[0])
    assert np.array_equal(np.asarray(PIL.Image.open(out / "target.png")), clip[-1])
    assert (out / "instruction.txt").read_text() == case.instruction + "\n"
    assert json.loads((out / "case.json").read_text())["event"] == "fall"
    capsys.readouterr()
    assert main(["toyworld", "sample", "--seed", "1000003", "--out", str(out)]) == 2
    assert "output exists" in capsys.readouterr().err


def test_sample_refuses_outs_it_cannot_use_in_one_line_and_keeps_what_was_there(tmp_path, capsys):
    file, dangling, scene = tmp_path / "file", tmp_path / "dangling", tmp_path / "scene"
    file.write_text("kept")
    dangling.symlink_to(tmp_path / "nowhere")
    cases = {
        str(file): "is a file",
        str(dangling): "is a link to nothing",
        str(file / "scene"): "folder for --out is a file",
        str(tmp_path / "missing" / "scene"): "folder for --out does not exist",
        "/proc/self/scene": "cannot write into the output folder /proc/self",
    }
    for out, error in cases.items():
        assert main(["toyworld", "sample", "--seed", "1000003", "--out", out]) == 2, out
        message = capsys.readouterr().err
        assert error in message and "Traceback" not in message and len(message.strip().splitlines()) == 1, message
    assert file.read_text() == "kept" and not (tmp_path / "missing").exists()

    # A case.json that cannot be replaced: refused before anything is written, the earlier scene kept whole.
    assert main(["toyworld", "sample", "--seed", "1000003", "--out", str(scene)]) == 0
    before = {path.name: path.read_bytes() for path in scene.iterdir()}
    (scene / "case.json").unlink()
    (scene / "case.json").mkdir()
    assert main(["toyworld", "sample", "--seed", "1000004", "--out", str(scene), "--overwrite"]) == 2
    assert "case.json is a folder" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in scene.iterdir() if path.is_file()} == {
        name: content for name, content in before.items() if name != "case.json"
    }
    # A dangling link where an output goes is an existing output.
    (scene / "case.json").rmdir()
    (scene / "case.json").symlink_to(tmp_path / "nowhere")
    assert main(["toyworld", "sample", "--seed", "1000004", "--out", str(scene)]) == 2
    assert "output exists" in capsys.readouterr().err

    # A disk that fills (here a file-size limit: EFBIG, as a full disk gives ENOSPC) leaves not even the new folder.
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    full = tmp_path / "full"
    command = [sys.executable, "-m", "ifedit", "toyworld", "sample", "--seed", "1000003", "--out", str(full)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert done.returncode == 1 and "no output was kept" in done.stderr and "Traceback" not in done.stderr
    assert not full.exists()


@pytest.mark.parametrize(
    "option, value, error",
    [("--seed", "-5", "seed must be"), ("--out", "file", "is a file"),
     ("--out", "under a file", "cannot create the output folder"),
     ("--out", "under a missing folder", "folder for --out does not exist")],
)  # fmt: skip
def test_train_refuses_a_seed_or_folder_it_cannot_use_before_training(tmp_path, capsys, option, value, error):
    out, file = tmp_path / "toy", tmp_path / "file"
    file.write_text("kept")
    named = {"file": str(file), "under a file": str(file / "toy"), "under a missing folder": str(out / "a" / "b")}
    arguments = {"--out": str(out), option: named.get(value, value)}
    assert main(["toyworld", "train", *[part for pair in arguments.items() for part in pair]]) == 2
    message = capsys.readouterr().err
    assert error in message and "Traceback" not in message and len(message.strip().splitlines()) == 1
    assert not out.exists() and file.read_text() == "kept"


@pytest.mark.parametrize(
    "option, value, allowed",
    [("--polish-steps", "-1", ">= 0"), ("--expert-steps", "0", ">= 1"), ("--clips", "many", ">= 1")],
)
def test_train_refuses_a_count_it_cannot_run_before_training(tmp_path, capsys, option, value, allowed):
    out = tmp_path / "toy"
    with pytest.raises(SystemExit) as exit_info:
        main(["toyworld", "train", "--out", str(out), option, value])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and not out.exists()
    assert f"{option}: must be a whole number {allowed}, got '{value}'" in error and "Traceback" not in error


def test_the_preset_pads_text_as_training_did():
    assert get_preset("toyworld").recipe.max_sequence_length == TEXT_SEQUENCE


def test_tokenizer_knows_every_training_word():
    tokenizer = build_tokenizer(vocabulary())
    unknown = tokenizer.unk_token_id
    for seed in range(EVAL_SEED_START, EVAL_SEED_START + 200):
        case = sample_case(seed)
        assert unknown not in tokenizer(case.instruction).input_ids, case.instruction
        assert unknown not in tokenizer(case.caption).input_ids, case.caption


FEW_STEPS = TrainConfig(vae_steps=2, decoder_steps=2, window_steps=2, edge_steps=2, polish_steps=2, vae_batch=2,
                        stats_clips=16, clips=16, dit_steps=3, dit_batch=4, log_every=1, snapshot_every=2,
                        text_steps=2, text_batch=4, expert_polish_steps=2, expert_polish_clips=8)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps of the real training command: enough to check the mechanics, not the quality."""
    out = tmp_path_factory.mktemp("toy")
    messages = []
    train(out, FEW_STEPS, log=messages.append)
    return out, messages


def test_training_saves_a_pipeline_that_edits(trained):
    out, messages = trained
    assert any(message.startswith("vae step 2/2 loss") for message in messages)
    assert any(message.startswith("experts step 3/3 loss") for message in messages)
    assert any(message.startswith("saved the averaged weights of step 2") for message in messages)
    assert not (out / "snapshot").exists(), "the snapshot is removed once the final weights are saved"
    saves = [message for message in messages if message.startswith("saved the averaged weights")]
    assert len(saves) == 2, "one snapshot per expert stage: the second replaces the first"
    hidden = sorted(path.name for path in out.iterdir() if path.name.startswith("."))
    assert hidden == [], f"left behind: {hidden} (the lock, a partial VAE or snapshot)"
    unknown = {path.name for path in out.iterdir()} - {*SAVED_WHOLE, "training.json"}
    assert not unknown, f"a killed run's partial copies of {unknown} would not be recognised as leftovers"
    record = json.loads((out / "training.json").read_text())
    stages = ("vae_losses", "decoder_losses", "window_losses", "edge_losses", "polish_losses")
    assert [len(record[stage]) for stage in stages] == [2] * len(stages)
    assert len(record["expert_losses"]) == 3 and record["config"]["clips"] == 16
    assert any(message.startswith("experts polish step 2/2 loss") for message in messages)
    assert len(record["expert_polish_losses"]) == 2, "the experts' polish is part of the command"
    pipe = IFEditPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == 0.9
    assert len(pipe.vae.config.latents_mean) == 16 and pipe.vae.config.latents_std != [1.0] * 16
    case = sample_case(EVAL_SEED_START)
    result = pipe(PIL.Image.fromarray(render_clip(case)[0]), case.instruction, num_frames=17, num_inference_steps=2,
                  max_area=SIZE * SIZE)  # fmt: skip
    assert result.image.size == (SIZE, SIZE) and result.kept_latent_frames == [0, 3, 4]


def test_a_trained_folder_runs_with_the_toy_worlds_recipe(trained):
    """`--model FOLDER` on a training run's output edits at 64 px and 17 frames as trained, not at a default size."""
    out, _ = trained
    preset = resolve_model(str(out))
    assert preset.model_id == str(out)
    assert dataclasses.replace(preset, model_id=None) == dataclasses.replace(get_preset("toyworld"), model_id=None)


@pytest.mark.parametrize("flag, refined", [((), False), (("--refine",), True)], ids=["preset", "--refine"])
def test_the_toy_world_runs_without_refinement_unless_told_to(trained, tmp_path, flag, refined):
    """A trained folder runs as the `toyworld` preset: the paper's recipe without its refinement pass, which the
    README's table measures as costing the toy world region gain."""
    out, _ = trained
    case = sample_case(EVAL_SEED_START)
    source, output = tmp_path / "source.png", tmp_path / "edited.png"
    PIL.Image.fromarray(render_clip(case)[0]).save(source)
    code = main(["edit", str(source), case.instruction, "-o", str(output), "--model", str(out), "--steps", "2",
                 "--seed", "0", "-q", *flag])  # fmt: skip
    assert code == 0
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["settings"]["refine"] is refined
    assert (record["result"]["refine_sharpness"] is not None) is refined


def test_training_inputs_match_what_the_pipeline_builds(trained):
    out, _ = trained
    pipe = IFEditPipeline.from_pretrained(out)
    clips = torch.from_numpy(np.stack([render_clip(sample_case(seed)) for seed in (1, 2)])).float() / 127.5 - 1
    first_frames = clips.permute(0, 4, 1, 2, 3)[:, :, 0]
    conditions = i2v_condition(pipe, first_frames, 17)
    texts = ["the red circle moves to the left", ""]
    with torch.no_grad():
        embeds = encode_text(pipe, texts)
        reference_embeds = pipe._get_t5_prompt_embeds(
            texts, max_sequence_length=TEXT_SEQUENCE, device=torch.device("cpu")
        )
    torch.testing.assert_close(embeds, reference_embeds)
    for row in range(2):
        _, reference = pipe.prepare_latents(first_frames[row : row + 1], 1, 16, SIZE, SIZE, 17, torch.float32,
                                            torch.device("cpu"), None, None)  # fmt: skip
        torch.testing.assert_close(conditions[row : row + 1], reference, atol=1e-5, rtol=1e-5)


def test_demo_without_weights_says_how_to_get_them(tmp_path, capsys, monkeypatch):
    """An install whose toy-world weights are missing (they ship in the package) says how to make them."""
    missing = dataclasses.replace(get_preset("toyworld"), model_id=str(tmp_path / "weights"))
    monkeypatch.setitem(PRESETS, "toyworld", missing)
    assert main(["demo", "-o", str(tmp_path / "demo.png")]) == 1
    err = capsys.readouterr().err
    assert "ifedit toyworld train --out DIR" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo.png").exists()


def test_demo_of_a_model_that_is_no_toy_world_is_refused_in_one_line(tmp_path, tiny_dirs, capsys):
    for model in ("paper", tiny_dirs["a14b"]):
        assert main(["demo", "-o", str(tmp_path / "demo.png"), "--model", model]) == 2
        err = capsys.readouterr().err
        assert "ifedit demo runs a toy world model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo.png").exists()


DECODER_PARTS = ("decoder.", "post_quant_conv.")


def test_the_edge_loss_no_longer_pays_a_decoder_for_drawing_shapes_too_large():
    """The decoder stages before "decoder edges" weigh a missing shape pixel 11 times a shape-coloured background
    pixel, so a shape 2 px too large costs a fraction of one 2 px too small: trained on that, the decoder drew
    shapes too large. The edge loss weighs both sides of a border alike."""

    def frame(case, grow: float) -> torch.Tensor:
        shapes = tuple(dataclasses.replace(shape, radius=shape.radius + grow) for shape in case.shapes)
        pixels = render_frame(dataclasses.replace(case, shapes=shapes, end=shapes[0]), 0.0)
        return torch.from_numpy(pixels[None].astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)[None]

    for offset in range(5):
        case = sample_case(EVAL_SEED_START + offset, "still")
        target, larger, smaller = frame(case, 0), frame(case, 2), frame(case, -2)
        assert reconstruction_loss(larger, target) < reconstruction_loss(smaller, target) / 2
        assert edge_loss(larger, target) >= edge_loss(smaller, target)


def test_the_decoder_learns_colour_on_whole_clips_then_edges_on_every_view_the_pipeline_decodes():
    """Stage order matters: the edge stages come last, on the views the pipeline decodes, each on clips of its own."""
    stages = list(DECODER_STAGES.values())
    assert [(stage.view, stage.loss) for stage in stages] == [
        (decoder_view, reconstruction_loss),
        (pipeline_view, reconstruction_loss),
        (pipeline_view, edge_loss),
        (pipeline_view, edge_loss),
    ]
    assert len({stage.seed_offset for stage in stages}) == len(stages), "a stage repeating another's clips"
    polish, edges = DECODER_STAGES["decoder polish"], DECODER_STAGES["decoder edges"]
    config = TrainConfig()
    assert getattr(config, polish.lr_field) < getattr(config, edges.lr_field), "the polish runs at a lower rate"


@pytest.mark.parametrize("stage", list(DECODER_STAGES))
def test_the_decoder_stages_leave_the_encoder_and_so_the_latents_alone(stage):
    vae = build_vae(0)
    encoder = {name: value.clone() for name, value in vae.state_dict().items() if not name.startswith(DECODER_PARTS)}
    decoder = {name: value.clone() for name, value in vae.state_dict().items() if name.startswith(DECODER_PARTS)}
    config = TrainConfig(decoder_steps=1, window_steps=1, edge_steps=1, polish_steps=1, vae_batch=1, log_every=1)
    train_decoder(vae, config, log=lambda message: None, stage=stage)
    after = vae.state_dict()
    assert all(torch.equal(after[name], value) for name, value in encoder.items())
    assert any(not torch.equal(after[name], value) for name, value in decoder.items())


@pytest.mark.parametrize("stage", list(DECODER_STAGES))
def test_each_decoder_stage_decodes_its_own_view_and_learns_its_own_loss(stage, monkeypatch):
    """A stage that trained on another stage's view (whole clips where the pipeline decodes windows) or loss would
    leave every other test here passing: the real view and loss run, and say when they are called."""
    spec, calls = DECODER_STAGES[stage], []

    def recorded(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)

        return call

    monkeypatch.setitem(
        DECODER_STAGES, stage, spec._replace(view=recorded("view", spec.view), loss=recorded("loss", spec.loss))
    )
    config = TrainConfig(decoder_steps=2, window_steps=2, edge_steps=2, polish_steps=2, vae_batch=1, log_every=1)
    losses = train_decoder(build_vae(0), config, log=lambda message: None, stage=stage)
    assert calls == ["view", "loss"] * 2 and len(losses) == 2


def _views(view, draws: int) -> set[tuple[int, ...]]:
    """The latent frames `view` keeps over `draws` draws, each checked to be paired with the frames it stands for:
    latent frame j > 0 for frames 4j-3 .. 4j, and a window's first latent frame, decoded alone into one frame, for
    the last of those (frame 0 for latent frame 0)."""
    latents = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, 16, 5, 4, 4)
    clips = torch.arange(17.0).view(1, 1, 17, 1, 1).expand(2, 3, 17, 16, 16)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(draws):
        kept_latents, frames = view(latents, clips, rng)
        kept = tuple(int(value) for value in kept_latents[0, 0, :, 0, 0])
        seen.add(kept)
        expected = [4 * kept[0]] + [frame for j in kept[1:] for frame in range(4 * j - 3, 4 * j + 1)]
        assert frames[0, 0, :, 0, 0].tolist() == expected
    return seen


def _decoded_frames(latent_frames: int) -> int:
    with torch.no_grad():
        return build_vae(0).eval().decode(torch.zeros(1, 16, latent_frames, 4, 4)).sample.shape[2]


def test_thinned_latents_are_paired_with_the_frames_they_stand_for():
    seen = _views(decoder_view, 40)
    assert seen == {(0, 1, 2, 3, 4), (0, 2, 4), (0, 3, 4), (0, 4)}, "whole clips and the strides 2, 3 and 4"
    assert _decoded_frames(3) == 9, "the decoder turns latent frames [0, j, k] into the 1 + 4 + 4 frames paired here"


def test_the_windows_stage_decodes_what_the_pipeline_decodes():
    seen = _views(pipeline_view, 200)
    assert {(3, 4), (2, 3, 4), (1, 2, 3, 4)} <= seen, "the last two latent frames (decode 'needed') and later windows"
    assert {(0, 1, 2, 3, 4), (0, 2, 4), (0, 4)} <= seen, "and the whole and thinned clips of the decoder stage"
    assert _decoded_frames(2) == 5, "latent frames [3, 4] decode into the 1 + 4 frames paired here"


def test_the_low_noise_expert_also_learns_thinned_clips(trained):
    out, _ = trained
    pipe = IFEditPipeline.from_pretrained(out)
    seen = {"transformer": [], "transformer_2": []}
    for name in seen:
        getattr(pipe, name).register_forward_pre_hook(
            lambda module, args, kwargs, name=name: seen[name].append(kwargs["hidden_states"].shape[2]),
            with_kwargs=True,
        )
    seeds = list(range(DIT_SEED_START, DIT_SEED_START + 8))
    data = encode_dataset(pipe, seeds, log=lambda message: None)
    config = TrainConfig(dit_steps=6, dit_batch=4, log_every=6, snapshot_every=0)
    train_experts(pipe, data, [sample_case(seed) for seed in seeds], config, log=lambda message: None)
    assert set(seen["transformer"]) == {5}, "the high-noise expert works before the dropout cut: whole clips"
    assert 5 in seen["transformer_2"] and set(seen["transformer_2"]) - {5} <= {2, 3}
    assert len(set(seen["transformer_2"]) - {5}) >= 1


def test_each_expert_stage_learns_from_its_own_training_clips():
    config = TrainConfig(clips=16, expert_polish_clips=8)
    first, polish = expert_stage_seeds(config, "experts"), expert_stage_seeds(config, "experts polish")
    assert first == list(range(DIT_SEED_START, DIT_SEED_START + 16))
    assert polish == list(range(DIT_SEED_START + 16, DIT_SEED_START + 24)), "other clips, right after the first's"
    shipped = TrainConfig()
    assert expert_stage_seeds(shipped, "experts polish")[-1] < EVAL_SEED_START, "never an evaluation scene"
    assert EXPERT_STAGES["experts polish"].seed_offset not in {
        spec.seed_offset for spec in (*DECODER_STAGES.values(), EXPERT_STAGES["experts"])
    }, "its own random draws"
    assert shipped.expert_polish_lr < shipped.dit_lr, "the polish runs at a lower rate"
    with pytest.raises(ValueError, match="unknown expert stage"):
        expert_stage_seeds(config, "experts again")


def test_the_experts_polish_continues_from_the_weights_it_is_given(trained):
    """The polish stage starts from the experts as they are (and its average from them), not from scratch: with a
    vanishing rate its output is its input."""
    out, _ = trained
    pipe = IFEditPipeline.from_pretrained(out)
    for parameter in pipe.text_encoder.parameters():
        parameter.requires_grad_(False)
    seeds = list(range(DIT_SEED_START, DIT_SEED_START + 4))
    data = encode_dataset(pipe, seeds, log=lambda message: None)
    before = {name: value.clone() for name, value in pipe.transformer_2.state_dict().items()}
    for lr, changed in ((1e-12, False), (1e-2, True)):
        config = TrainConfig(expert_polish_steps=2, expert_polish_lr=lr, dit_batch=4, log_every=2, snapshot_every=0)
        train_experts(
            pipe, data, [sample_case(seed) for seed in seeds], config, lambda m: None, None, "experts polish"
        )
        after = pipe.transformer_2.state_dict()
        moved = max((after[name] - value).abs().max().item() for name, value in before.items())
        assert (moved > 1e-6) if changed else (moved < 1e-9), f"rate {lr}: the weights moved by {moved}"


def test_the_expert_loss_weighs_where_the_clip_changes():
    clips = torch.zeros(1, 3, 17, 64, 64)
    clips[:, :, 6:, 20:24, 40:44] = 1.0  # a patch lights up in frame 6 and stays
    changed = changed_regions(clips)
    assert changed.shape == (1, 1, 5, 16, 16)
    assert changed[0, 0, 0].sum() == 0 and changed[0, 0, 1].sum() == 0, "frames 0 and 1-4 are unchanged"
    for j in (2, 3, 4):  # frames 5-8 (frame 6 changed), then held
        assert changed[0, 0, j, 5, 10] == 1, "the latent pixel over the patch"
        assert changed[0, 0, j, 4:7, 9:12].sum() == 9 and changed[0, 0, j].sum() == 9, "grown by one latent pixel"
    weight = change_weight(changed)
    assert weight.max() == 1 + CHANGE_WEIGHT and weight.min() == 1
    prediction, target = torch.zeros(1, 16, 5, 16, 16), torch.ones(1, 16, 5, 16, 16)
    assert weighted_mse(prediction, target, weight).item() == pytest.approx(1.0), "a constant error stays itself"
    prediction[:, :, 2, 5, 10] = 1.0  # right only where the clip changes: the error drops more than its share
    assert weighted_mse(prediction, target, weight) < 1 - (1 + CHANGE_WEIGHT) / weight.sum() * 0.99


def test_the_pretrained_text_encoder_stays_frozen_while_the_experts_learn(trained):
    out, messages = trained
    record = json.loads((out / "training.json").read_text())
    assert len(record["text_losses"]) == 2 and any(message.startswith("text encoder step 2/2") for message in messages)
    pipe = IFEditPipeline.from_pretrained(out)
    before = {name: value.clone() for name, value in pipe.text_encoder.state_dict().items()}
    for parameter in pipe.text_encoder.parameters():
        parameter.requires_grad_(False)
    seeds = list(range(DIT_SEED_START, DIT_SEED_START + 8))
    data = encode_dataset(pipe, seeds, log=lambda message: None)
    experts_before = pipe.transformer.state_dict()["proj_out.weight"].clone()
    config = TrainConfig(dit_steps=3, dit_batch=4, log_every=3, snapshot_every=0)
    train_experts(pipe, data, [sample_case(seed) for seed in seeds], config, log=lambda message: None)
    assert all(torch.equal(pipe.text_encoder.state_dict()[name], value) for name, value in before.items())
    assert not torch.equal(pipe.transformer.state_dict()["proj_out.weight"], experts_before)


def test_training_into_a_finished_folder_is_refused_and_leaves_it_alone(trained):
    out, _ = trained
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(InvalidInputError, match=r"already holds a trained pipeline \(training.json\); choose another"):
        train(out, FEW_STEPS, log=print)  # a few steps: a regression here must not start hours of training
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_second_training_into_a_folder_in_use_is_refused(tmp_path):
    """Two runs into one folder would interleave their VAE, snapshots and record; the second is refused, naming
    the first, before it trains anything."""
    out = tmp_path / "toy"
    out.mkdir()
    with lock_held_elsewhere(out) as holder:
        with pytest.raises(InvalidInputError, match=f"is in use by another run \\(process {holder.pid} on "):
            train(out, FEW_STEPS, log=print)  # a few steps: a regression here must not start hours of training
        assert sorted(path.name for path in out.iterdir()) == [".lock"]


TINY_VAE = TrainConfig(vae_steps=1, decoder_steps=1, window_steps=1, edge_steps=1, polish_steps=1, vae_batch=1,
                       stats_clips=2, log_every=1)  # fmt: skip


def test_a_rerun_reuses_a_whole_saved_vae_and_never_half_of_one(tmp_path):
    out = tmp_path / "toy"
    out.mkdir()
    # What a killed run may leave: a partial save, and a VAE folder without its loss curves. Both are links here,
    # which are replaced and never followed: the folders they point to are left as they were.
    victims = [tmp_path / "victim1", tmp_path / "victim2"]
    for victim in victims:
        victim.mkdir()
        (victim / "config.json").write_text("{}")
    (out / ".vae.partial").symlink_to(victims[0])
    (out / "vae").symlink_to(victims[1])
    messages = []
    vae, losses = trained_vae(out, TINY_VAE, messages.append)
    assert not any(message.startswith("reusing") for message in messages), "a VAE without its losses is retrained"
    assert sorted(path.name for path in out.iterdir()) == ["vae", "vae_losses.json"] and (out / "vae").is_dir()
    assert not (out / "vae").is_symlink()
    assert all(sorted(victim.iterdir()) == [victim / "config.json"] for victim in victims)
    assert list(losses) == ["vae_losses", *(spec.record for spec in DECODER_STAGES.values())]

    messages = []
    again, same_losses = trained_vae(out, TINY_VAE, messages.append)
    assert messages == [f"reusing the trained VAE in {out / 'vae'}"] and same_losses == losses
    for (name, tensor), (_, reused) in zip(vae.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(tensor, reused), name
    assert again.config.latents_mean == vae.config.latents_mean

    other = dataclasses.replace(TINY_VAE, seed=7)
    with pytest.raises(InvalidInputError, match=r"the VAE in .*vae was trained with other settings \(seed\)"):
        trained_vae(out, other, messages.append)  # reusing it would ship a VAE training.json does not describe
    saved = json.loads((out / "vae_losses.json").read_text())
    other_version = {**saved["settings"], "retired_setting": 1}  # another ifedit's VAE had a setting this one lacks
    (out / "vae_losses.json").write_text(json.dumps({**saved, "settings": other_version}))
    with pytest.raises(InvalidInputError, match=r"other settings \(retired_setting\); .* or remove \S*vae to train"):
        trained_vae(out, TINY_VAE, messages.append)
    # Each refusal asks to remove the VAE only: without vae_losses.json the folder would be refused as not a run's.
    for damaged in ("[]", '{"settings": {}, "losses": [1]}', "{", "{}", "[" * 100_000):
        (out / "vae_losses.json").write_text(damaged)
        with pytest.raises(InvalidInputError, match=r"vae_losses.json.*; remove \S*vae to train the VAE again$"):
            trained_vae(out, TINY_VAE, messages.append)
    (out / "vae_losses.json").write_text(json.dumps(saved["losses"]))  # an older ifedit's record: curves only
    with pytest.raises(InvalidInputError, match=r"does not record the settings .*older ifedit.*; remove \S*vae to"):
        trained_vae(out, TINY_VAE, messages.append)
    (out / "vae_losses.json").write_text(json.dumps(saved))

    weights = next((out / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a disk that filled up, a copy cut short
    with pytest.raises(InvalidInputError, match=r"cannot be read \(.*\); remove .*vae to train it again"):
        trained_vae(out, TINY_VAE, messages.append)


def test_a_training_folder_holds_only_a_training_run(tmp_path):
    """Training into a folder of other files would overwrite or delete them (a `vae/` or `snapshot/` of the
    user's); an unfinished run's folder is taken and cleared of what a killed run left half-written."""
    foreign = tmp_path / "models"
    (foreign / "vae").mkdir(parents=True)
    (foreign / "vae" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match=r"is not empty and holds no unfinished training run"):
        train(foreign, FEW_STEPS, log=print)  # a few steps: a regression here must not start hours of training
    assert (foreign / "vae" / "notes.txt").read_text() == "mine" and sorted(foreign.iterdir()) == [foreign / "vae"]

    hidden = tmp_path / "hidden"  # hidden entries alike in name to a run's leftovers are the user's all the same
    for name in (".tmp", ".config.old", ".tmp.driveupload"):
        (hidden / name).mkdir(parents=True)
    with pytest.raises(InvalidInputError, match=r"is not empty and holds no unfinished training run"):
        train(hidden, FEW_STEPS, log=print)
    assert sorted(path.name for path in hidden.iterdir()) == [".config.old", ".tmp", ".tmp.driveupload"]

    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "vae_losses.json").write_text("{}")
    leftovers = [".vae.partial", ".snapshot.old", ".pipeline.partial", ".transformer_2.old"]
    for name in leftovers:
        (unfinished / name).mkdir()
    (unfinished / ".vae_losses.0123456789abcdef.tmp.json").write_text("{")
    (unfinished / ".notes.old").write_text("the user's")
    with claimed(unfinished):
        assert sorted(path.name for path in unfinished.iterdir()) == [".lock", ".notes.old", "vae_losses.json"]
    assert sorted(path.name for path in unfinished.iterdir()) == [".notes.old", "vae_losses.json"]

    killed = tmp_path / "killed"  # a run killed before it wrote anything but a record's temporary
    killed.mkdir()
    (killed / ".vae_losses.fedcba9876543210.tmp.json").write_text("")
    with claimed(killed):
        pass
    assert list(killed.iterdir()) == []


def test_a_swap_killed_between_its_two_renames_is_completed_not_cleared(tmp_path):
    """A kill after the old snapshot (or VAE) moved aside and before the new one moved in leaves neither in place;
    clearing both as leftovers would lose the last snapshot, or a VAE whose record is already written."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "vae_losses.json").write_text("{}")
    for name in ("snapshot", "vae"):
        (out / f".{name}.old").mkdir()
        (out / f".{name}.old" / "weights").write_text("older")
        (out / f".{name}.partial").mkdir()
        (out / f".{name}.partial" / "weights").write_text("saved whole")
    with claimed(out):
        pass
    assert sorted(path.name for path in out.iterdir()) == ["snapshot", "vae", "vae_losses.json"]
    assert all((out / name / "weights").read_text() == "saved whole" for name in ("snapshot", "vae"))

    (out / ".snapshot.partial").mkdir()  # a save killed part-way, the old snapshot still in place: kept
    with claimed(out):
        pass
    assert (out / "snapshot" / "weights").read_text() == "saved whole" and not (out / ".snapshot.partial").exists()


def test_the_finished_pipeline_moves_in_without_touching_the_saved_vae_or_following_links(tmp_path):
    """The last save of a run: a kill during it must not damage the VAE an earlier stage saved whole (the next run
    reuses it), and a link planted at a part's name is replaced, not written through."""
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (out / "vae").mkdir()
    (out / "vae" / "weights").write_text("saved whole")
    (out / "snapshot").mkdir()
    (out / "vae_losses.json").write_text("{}")
    (out / "transformer").symlink_to(victim)
    (out / "model_index.json").symlink_to(victim / "index.json")

    def save(folder):
        for part in ("vae", "transformer"):
            (folder / part).mkdir(parents=True)
            (folder / part / "weights").write_text(f"new {part}")
        (folder / "model_index.json").write_text("{}")

    finish(out, save, {"config": {}})
    assert (out / "vae" / "weights").read_text() == "saved whole"
    assert (out / "transformer" / "weights").read_text() == "new transformer"
    assert (out / "model_index.json").read_text() == "{}"
    assert not (out / "transformer").is_symlink() and not (out / "model_index.json").is_symlink()
    assert list(victim.iterdir()) == []
    assert sorted(path.name for path in out.iterdir()) == ["model_index.json", "training.json", "transformer", "vae"]
    assert json.loads((out / "training.json").read_text()) == {"config": {}}


def test_a_failed_final_save_keeps_the_snapshot_and_a_folder_planted_at_a_files_name_is_replaced(tmp_path):
    """Until `training.json` marks the run finished, the last snapshot is the one copy of the experts a failed or
    killed final save would not lose; and a folder left where the pipeline writes a file must not end hours of
    training with a traceback."""
    out = tmp_path / "run"
    (out / "snapshot").mkdir(parents=True)
    (out / "snapshot" / "weights").write_text("averaged")
    (out / "vae_losses.json").write_text("{}")
    (out / "model_index.json").mkdir()
    (out / "model_index.json" / "planted").write_text("")

    def save(folder):
        (folder / "transformer").mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")

    with pytest.raises(TypeError):  # the last write fails, after every part has moved in
        finish(out, save, {"config": {"unrecordable": object()}})
    assert (out / "snapshot" / "weights").read_text() == "averaged" and not (out / "training.json").exists()

    finish(out, save, {"config": {}})
    assert (out / "model_index.json").read_text() == "{}"
    assert sorted(path.name for path in out.iterdir()) == ["model_index.json", "training.json", "transformer"]
