"""Detectors for toy-world frames and the measures of an edit against its ground-truth target.

Objects have saturated colours and backgrounds are muted, so a colour threshold finds an object's mask; its
centroid, area and mean colour say where it is, how big and what colour. An edit is judged on the shape the event
changed, and on how much of the rest of the picture it kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import COLOURS, Case, Shape

COLOUR_DISTANCE = 80.0  # RGB distance under which a pixel counts as the object's colour
POSITION_TOLERANCE = 5.0  # pixels
AREA_TOLERANCE = 1.3  # ratio
MIN_AREA = 12  # pixels: fewer is noise, not an object
MOVING_EVENTS = ("left", "right", "up", "down", "fall")  # the events whose edits have a move error
# Half the frame: the move error of a shape the edit lost, so that losing it is never better than moving it badly.
LOST_SHAPE_ERROR = 32.0


@dataclass(frozen=True)
class Detection:
    """Pixels of one colour in a frame: how many, and their centroid (x, y)."""

    area: int
    x: float
    y: float

    @property
    def found(self) -> bool:
        return self.area >= MIN_AREA


def colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    """Pixels within COLOUR_DISTANCE of a named object colour."""
    reference = np.array(COLOURS[colour], dtype=np.float32)
    return np.linalg.norm(frame.astype(np.float32) - reference, axis=-1) < COLOUR_DISTANCE


def detect(frame: np.ndarray, colour: str) -> Detection:
    """The object of `colour` in an (H, W, 3) uint8 frame (area 0 when absent)."""
    mask = colour_mask(frame, colour)
    area = int(mask.sum())
    if area == 0:
        return Detection(0, float("nan"), float("nan"))
    y, x = np.nonzero(mask)
    return Detection(area, float(x.mean()) + 0.5, float(y.mean()) + 0.5)


def shape_mask(shape: Shape, size: int, grow: float = 3.0) -> np.ndarray:
    """A disc covering `shape` plus `grow` pixels: the region an edit of that shape may change."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return np.hypot(x - shape.x, y - shape.y) <= shape.radius * 1.2 + grow


@dataclass(frozen=True)
class EditScore:
    """How one edited frame compares with the target frame of its case."""

    event: str
    success: bool
    position_error: float  # pixels between the changed shape's centroids (nan when either is missing)
    area_ratio: float  # area of the changed shape in the output over the target's (0 when missing)
    background_error: float  # mean absolute 0-255 difference outside the changed shape's start and end


def score_edit(case: Case, output: np.ndarray, target: np.ndarray) -> EditScore:
    """Measure `output` against `target` on the shape the case's event changes."""
    colour = case.end.colour
    found, wanted = detect(output, colour), detect(target, colour)
    both = found.found and wanted.found
    position_error = float(np.hypot(found.x - wanted.x, found.y - wanted.y)) if both else float("nan")
    area_ratio = found.area / wanted.area if wanted.area else 0.0
    size = output.shape[0]
    untouched = ~changed_region(case, size)
    difference = np.abs(output.astype(np.float32) - target.astype(np.float32)).mean(axis=-1)
    background_error = float(difference[untouched].mean())
    return EditScore(case.event, _success(case, output, found, position_error, area_ratio), position_error,
                     area_ratio, background_error)  # fmt: skip


def move_error(position_error: float) -> float:
    """An edit's move error in pixels, from its `EditScore.position_error` (nan when the shape was lost)."""
    return LOST_SHAPE_ERROR if np.isnan(position_error) else position_error


def _success(case: Case, output: np.ndarray, found: Detection, position_error: float, area_ratio: float) -> bool:
    close = found.found and position_error <= POSITION_TOLERANCE
    sized = 1 / AREA_TOLERANCE <= area_ratio <= AREA_TOLERANCE
    if case.event == "fade":
        return detect(output, case.moved.colour).area <= MIN_AREA
    if case.event == "appear":
        return found.found and area_ratio >= 0.5
    if case.event == "recolour":
        old_left = detect(output, case.moved.colour).area
        return close and area_ratio >= 0.5 and old_left <= 0.3 * np.pi * case.moved.radius**2
    return close and sized


# 0-255 difference (largest over the channels) from the source beyond which an output pixel counts as changed by
# the edit: a shape drawn or removed there, not the blur or colour drift of a VAE round trip.
EDIT_CHANGE = 60.0


def changed_region(case: Case, size: int) -> np.ndarray:
    """Where the event's shape starts or ends (`shape_mask` of both): the part of the picture an edit must change."""
    return shape_mask(case.moved, size) | shape_mask(case.end, size)


def region_error_reduction(case: Case, output: np.ndarray, source: np.ndarray, target: np.ndarray) -> float:
    """How much of copying the source's error the edit removes: 1 - error(output) / error(source), each the summed
    absolute 0-255 difference from the target over the region the event changes (`changed_region`) and wherever
    the output changed the source by more than EDIT_CHANGE. 1 is a perfect edit, 0 no better than copying (a shape
    moved the wrong way scores about 0: it leaves its start right but is missing at its end and drawn where
    nothing should be), negative worse; nan when the event changes nothing.

    A pixel measure, independent of the colour detectors `score_edit` uses: a blurred or half-moved shape earns
    part of the way."""
    output, source, target = (image.astype(np.float32) for image in (output, source, target))
    edited = np.abs(output - source).max(axis=-1) > EDIT_CHANGE
    region = changed_region(case, output.shape[0]) | edited
    copy_error = np.abs(source - target).mean(axis=-1)[region].sum()
    if copy_error == 0:
        return float("nan")
    return float(1.0 - np.abs(output - target).mean(axis=-1)[region].sum() / copy_error)
