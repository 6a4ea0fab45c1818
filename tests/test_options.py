"""Edit settings: a preset's recipe with the user's overrides, validated before any model loads."""

import pytest

from ifedit.errors import InvalidInputError
from ifedit.options import check_options, edit_settings
from ifedit.presets import get_preset


def test_overrides_replace_the_recipe_and_none_keeps_it():
    settings = edit_settings(get_preset("paper"), num_inference_steps=4, tld_stride=None, refine=False)
    assert settings["num_inference_steps"] == 4 and settings["tld_stride"] == 3 and settings["refine"] is False
    assert settings["num_frames"] == 33 and settings["guidance_scale"] == 1.0 and settings["max_area"] == 480 * 832
    assert settings["refine_strength"] == 1.0 and settings["height"] is None
    check_options(prompt="p", **settings)


def test_unknown_settings_are_a_programming_error():
    with pytest.raises(TypeError, match="unknown edit settings: tld_strid"):
        edit_settings(get_preset("paper"), tld_strid=2)


def test_check_options_refuses_booleans_and_strings_for_numbers():
    with pytest.raises(InvalidInputError, match="tld_stride must be an integer >= 1"):
        check_options(prompt="p", tld_stride=True)
    with pytest.raises(InvalidInputError, match="refine_strength must be a number"):
        check_options(prompt="p", refine_strength="0.5")
    with pytest.raises(InvalidInputError, match="callback_on_step_end_tensor_inputs must be names from latents"):
        check_options(prompt="p", callback_on_step_end_tensor_inputs=("noise",))
