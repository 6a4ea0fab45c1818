"""Pixel sizes at a target area and 4n+1 frame counts."""

import logging

import pytest

from ifedit.errors import InvalidInputError
from ifedit.sizes import fit_size, round_frames


@pytest.mark.parametrize(
    ("image_size", "expected"),
    [
        ((1664, 960), (480, 832)),  # the paper's landscape 480p
        ((960, 1664), (832, 480)),
        ((1000, 1000), (624, 624)),
        ((4000, 3000), (544, 736)),
    ],
)
def test_default_size_keeps_aspect_at_the_area(image_size, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        height, width = fit_size(image_size, None, None, 480 * 832, 16)
    assert (height, width) == expected
    assert height % 16 == 0 and width % 16 == 0
    assert abs(height * width - 480 * 832) / (480 * 832) < 0.05
    assert not caplog.records


def test_the_default_area_shrinks_to_a_small_models_longest_side_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        assert fit_size((96, 64), None, None, 480 * 832, 16, largest_side=512) == (336, 512)
    assert "768x512 px (the default area) is more than this model's 512 px a side: using 512x336" in caplog.text
    assert fit_size((1664, 960), None, None, 480 * 832, 16, largest_side=16384) == (480, 832)  # Wan: untouched


def test_one_given_side_sets_the_other_by_aspect():
    assert fit_size((1600, 800), 320, None, 480 * 832, 16) == (320, 640)
    assert fit_size((1600, 800), None, 640, 480 * 832, 16) == (320, 640)


def test_given_sides_are_rounded_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        assert fit_size((100, 100), 470, 830, 0, 16) == (464, 832)
    assert "multiples of 16 px" in caplog.text and "width 830 -> 832, height 470 -> 464 (832x464 px" in caplog.text
    assert fit_size((100, 100), 470, 830, 0, 32) == (480, 832)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ifedit"):  # only the side given is named; the other follows
        assert fit_size((64, 64), 30, None, 0, 16) == (32, 32)
    assert "height 30 -> 32 (32x32 px" in caplog.text and "width" not in caplog.text.split("(")[0]


def test_sides_below_the_multiple_are_refused():
    with pytest.raises(InvalidInputError, match="height must be at least 32 px"):
        fit_size((100, 100), 16, None, 0, 32)


@pytest.mark.parametrize(
    ("frames", "expected"), [(33, 33), (32, 33), (30, 29), (31, 33), (34, 33), (5, 5), (7, 9), (81, 81)]
)
def test_frames_round_to_4n_plus_1(frames, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        assert round_frames(frames) == expected
    assert ("4n+1" in caplog.text) == (frames != expected)


def test_too_few_frames_are_refused():
    with pytest.raises(InvalidInputError, match="frames must be at least 5, got 4"):
        round_frames(4)


@pytest.mark.parametrize("image_size", [(64, 4000), (4000, 64), (1000, 64)])
def test_a_photo_too_narrow_for_the_models_area_is_refused_not_made_a_strip(image_size, caplog):
    """At the toy model's 4096-pixel area and 64 px sides a 64 x 4000 photo became an 8 px wide clip."""
    with (
        caplog.at_level(logging.WARNING, logger="ifedit"),
        pytest.raises(
            InvalidInputError, match=rf"\({image_size[0]}x{image_size[1]} px\) is too narrow .* at least 16 px"
        ),
    ):
        fit_size(image_size, None, None, max_area=64 * 64, multiple=8, largest_side=64)
    assert not caplog.records  # the refusal is the only line
    assert fit_size((256, 64), None, None, max_area=64 * 64, multiple=8, largest_side=64) == (16, 64)
    assert fit_size(image_size, 64, 64, max_area=64 * 64, multiple=8, largest_side=64) == (64, 64)  # sides given
