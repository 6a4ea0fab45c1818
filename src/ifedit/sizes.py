"""Output geometry: pixel sizes at a target area keeping the input's aspect ratio, and Wan's 4n+1 frame counts."""

from __future__ import annotations

import logging
import math

from .errors import InvalidInputError
from .options import MIN_FRAMES

logger = logging.getLogger("ifedit")


def fit_size(
    image_size: tuple[int, int],
    height: int | None,
    width: int | None,
    max_area: int,
    multiple: int,
    largest_side: int | None = None,
) -> tuple[int, int]:
    """(height, width) for the model: the image's aspect ratio at `max_area` pixels, sides multiples of `multiple`.

    A side the caller gives is kept (rounded to the multiple with a warning); a missing side follows the aspect
    ratio of the image, whose size is given as (width, height) like PIL's. When neither is given and the area
    would need a side longer than `largest_side` (a small model's rotary positions), the area shrinks to fit, with a
    warning.
    """
    image_width, image_height = image_size
    aspect = image_height / image_width
    for name, value in (("height", height), ("width", width)):
        if value is not None and value < multiple:
            raise InvalidInputError(f"{name} must be at least {multiple} px for this model, got {value}")
    if height is None and width is None:
        height = math.sqrt(max_area * aspect)
        width = math.sqrt(max_area / aspect)
        shrunk = largest_side is not None and max(height, width) > largest_side
        if shrunk:
            scale = largest_side / max(height, width)
            fitted = _floor_to(height * scale, multiple), _floor_to(width * scale, multiple)
        else:
            fitted = _round_to(height, multiple), _round_to(width, multiple)
        _check_short_side(fitted, image_size, multiple)
        if shrunk:
            logger.warning(
                "%dx%d px (the default area) is more than this model's %d px a side: using %dx%d",
                _round_to(width, multiple),
                _round_to(height, multiple),
                largest_side,
                fitted[1],
                fitted[0],
            )
        return fitted
    asked = {"width": width, "height": height}
    if height is None:
        height = _round_to(width * aspect, multiple)
    if width is None:
        width = _round_to(height / aspect, multiple)
    rounded = _round_to(height, multiple), _round_to(width, multiple)
    fitted = {"width": rounded[1], "height": rounded[0]}
    changed = [
        f"{name} {value} -> {fitted[name]}" for name, value in asked.items() if value not in (None, fitted[name])
    ]
    if changed:
        logger.warning(
            "sides must be multiples of %d px for this model: %s (%dx%d px, width x height)",
            multiple,
            ", ".join(changed),
            rounded[1],
            rounded[0],
        )
    return rounded


# The fewest latent patches (`multiple` px) across the short side of a clip sized from the photo: one is a strip of
# single tokens that no video model was trained on (a 64 x 4000 photo at the toy model's area came out 8 px wide).
MIN_SHORT_SIDE_PATCHES = 2


def _check_short_side(fitted: tuple[int, int], image_size: tuple[int, int], multiple: int) -> None:
    least = MIN_SHORT_SIDE_PATCHES * multiple
    if min(fitted) < least:
        width, height = image_size
        raise InvalidInputError(
            f"the image's shape ({width}x{height} px) is too narrow for this model: at its area the clip would be "
            f"{fitted[1]}x{fitted[0]} px, and each side must be at least {least} px; crop the image, or give the "
            "clip's height and width"
        )


def round_frames(num_frames: int, temporal_scale: int = 4) -> int:
    """Nearest valid frame count 4n+1 (Wan's VAE packs 4 frames per latent after the first), with a warning."""
    if num_frames < MIN_FRAMES:
        raise InvalidInputError(f"frames must be at least {MIN_FRAMES}, got {num_frames}")
    rounded = math.floor((num_frames - 1) / temporal_scale + 0.5) * temporal_scale + 1
    if rounded != num_frames:
        logger.warning(
            "frames must be %dn+1 for this model: using %d instead of %d", temporal_scale, rounded, num_frames
        )
    return rounded


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def _floor_to(value: float, multiple: int) -> int:
    return max(multiple, math.floor(value / multiple) * multiple)
