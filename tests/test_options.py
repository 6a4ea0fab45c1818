"""Edit settings: one frozen dataclass with the defaults and checks, a preset's recipe with the user's overrides,
validated before any model loads."""

import dataclasses
import inspect
import subprocess
import sys

import pytest

from ifedit.errors import InvalidInputError
from ifedit.options import EditSettings, check_call
from ifedit.pipeline import IFEditPipeline
from ifedit.presets import PRESETS, edit_settings, get_preset

# The `settings` of every record, in this order, since records were first written.
RECORDED_SETTINGS = [
    "num_inference_steps", "guidance_scale", "guidance_scale_2", "num_frames", "max_area", "sigma_schedule",
    "tld_stride", "tld_threshold", "max_sequence_length", "refine", "negative_prompt", "height", "width",
    "tld_history", "tld_positions", "refine_prompt", "refine_frames", "refine_steps", "refine_strength",
    "decode_frames", "edit_position",
]  # fmt: skip


def test_overrides_replace_the_recipe_and_none_keeps_it():
    settings = edit_settings(get_preset("paper"), num_inference_steps=4, tld_stride=None, refine=False)
    assert settings.num_inference_steps == 4 and settings.tld_stride == 3 and settings.refine is False
    assert settings.num_frames == 33 and settings.guidance_scale == 1.0 and settings.max_area == 480 * 832
    assert settings.refine_strength == 1.0 and settings.height is None
    assert settings.sigma_schedule == "uniform"  # the recipe's, not the dataclass default


def test_unknown_settings_are_a_programming_error():
    with pytest.raises(TypeError, match="unknown edit settings: tld_strid"):
        edit_settings(get_preset("paper"), tld_strid=2)


def test_settings_refuse_booleans_and_strings_for_numbers():
    with pytest.raises(InvalidInputError, match="tld_stride must be an integer >= 1"):
        EditSettings(tld_stride=True)
    with pytest.raises(InvalidInputError, match="refine_strength must be a number"):
        EditSettings(refine_strength="0.5")
    with pytest.raises(InvalidInputError, match="callback_on_step_end_tensor_inputs must be names from latents"):
        check_call("p", "pil", ("noise",))


def test_bad_values_are_refused_however_the_settings_are_made():
    """An override or a copy is checked like a fresh object: no path around the checks."""
    with pytest.raises(InvalidInputError, match="height must be a whole number of pixels from 16 to 4096"):
        edit_settings(get_preset("paper"), height=8)
    with pytest.raises(InvalidInputError, match="num_frames must be at most 1001"):
        dataclasses.replace(EditSettings(), num_frames=2001)
    with pytest.raises(InvalidInputError, match="sigma_schedule must be default or uniform, got 'linear'"):
        EditSettings(sigma_schedule="linear")
    with pytest.raises(dataclasses.FrozenInstanceError):
        EditSettings().num_frames = 9  # type: ignore[misc]


def test_records_keep_their_settings_in_order():
    assert list(EditSettings().as_kwargs()) == RECORDED_SETTINGS


def test_the_pipelines_keywords_are_the_settings_with_their_defaults():
    """The pipeline's public keywords are a view of EditSettings: a default written out differently there fails."""
    parameters = inspect.signature(IFEditPipeline.__call__).parameters
    defaults = EditSettings()
    for name in EditSettings.names():
        assert parameters[name].default == getattr(defaults, name), name


def test_every_preset_recipe_is_valid_settings():
    for preset in PRESETS.values():
        assert isinstance(preset.recipe, EditSettings)
        assert EditSettings(**preset.recipe.as_kwargs()) == preset.recipe


def test_the_core_options_do_not_depend_on_app_configuration():
    code = "import sys, ifedit.options; print(sorted(m for m in sys.modules if m.startswith('ifedit')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ifedit.presets" not in loaded and "ifedit.options" in loaded
