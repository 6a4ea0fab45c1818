"""Procedural clips: a few coloured shapes on a plain or textured background, and one event that changes them.

Every case is a pure function of its seed, so the same seed gives the same source, target and instruction on any
machine. Training uses seeds below `EVAL_SEED_START`, evaluation seeds from it upwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SIZE = 64
NUM_FRAMES = 17
HELD_FRAMES = 4  # frames 13-16, the last latent frame, show the event's result
EVAL_SEED_START = 1_000_000

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
EVENTS = ("left", "right", "up", "down", "fall", "grow", "shrink", "recolour", "fade", "appear", "still")
# Muted backgrounds, far from every object colour so a detector can tell them apart.
BACKGROUNDS = ((200, 200, 200), (170, 160, 140), (70, 75, 80), (225, 215, 195), (120, 135, 150))
# Every change has one size, so an instruction says exactly what the result is: with moves of 14-22 px and
# scales drawn from a range, the trained toy experts averaged over the outcomes and drew shapes smeared along
# the range, where a model this small could learn one outcome.
MOVE_PIXELS = 18.0
GROW, SHRINK = 1.65, 0.56
RADIUS = (7, 11)
# The thirds of the frame, by name; an appearing shape goes to the centre of the one its instruction names.
VERTICAL, HORIZONTAL = ("top", "centre", "bottom"), ("left", "middle", "right")
PLACES = {"left": 14.0, "middle": 32.0, "right": 50.0, "top": 14.0, "centre": 32.0, "bottom": 50.0}

_PHRASES = {
    "left": ("the {o} moves to the left", "move the {o} to the left", "slide the {o} left"),
    "right": ("the {o} moves to the right", "move the {o} to the right", "slide the {o} right"),
    "up": ("the {o} moves up", "move the {o} up", "lift the {o} up"),
    "down": ("the {o} moves down", "move the {o} down", "lower the {o}"),
    "fall": ("the {o} falls to the floor", "drop the {o} to the floor", "let the {o} fall down"),
    "grow": ("the {o} grows bigger", "make the {o} bigger", "enlarge the {o}"),
    "shrink": ("the {o} shrinks", "make the {o} smaller", "shrink the {o}"),
    "recolour": ("the {o} turns {c}", "make the {o} {c}", "paint the {o} {c}"),
    "fade": ("the {o} fades away", "make the {o} disappear", "remove the {o}"),
    "appear": ("a {o} appears at the {p}", "add a {o} at the {p}", "make a {o} appear at the {p}"),
    "still": ("nothing changes", "keep the scene still", "the scene stays the same"),
}


@dataclass(frozen=True)
class Shape:
    """One object: what it is, its colour, where its centre is and its radius, all in pixels."""

    kind: str
    colour: str
    x: float
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Case:
    """A scene, the event that edits one of its shapes, and the words for it."""

    seed: int
    background: tuple[int, int, int]
    texture: str
    shapes: tuple[Shape, ...]
    event: str
    target: int  # index into shapes of the one that changes
    end: Shape  # the changed shape at the end of the event
    instruction: str
    caption: str

    @property
    def moved(self) -> Shape:
        return self.shapes[self.target]


def sample_case(seed: int, event: str | None = None) -> Case:
    """A random scene and event from `seed` (the event can be forced, for balanced evaluation sets)."""
    rng = np.random.default_rng(seed)
    event = event or str(rng.choice(EVENTS))
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; choose one of {', '.join(EVENTS)}")
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    texture = str(rng.choice(("plain", "plain", "gradient", "stripes")))
    colours = [str(name) for name in rng.permutation(list(COLOURS))]
    start, end = _target(event, colours, rng)
    shapes = [start]
    for colour in colours[1 : 1 + int(rng.random() < 0.4)]:
        for _ in range(100):  # a distractor clear of where the target starts and ends
            radius = float(rng.uniform(*RADIUS))
            x, y = (float(value) for value in rng.uniform(radius + 2, SIZE - radius - 2, size=2))
            if all(np.hypot(x - other.x, y - other.y) > radius + other.radius + 6 for other in (start, end)):
                shapes.append(Shape(str(rng.choice(SHAPES)), colour, x, y, radius))
                break
    if event == "appear":
        shapes[0] = dataclasses.replace(start, radius=0.0)
    place = " ".join(places(end))
    instruction = str(rng.choice(_PHRASES[event])).format(o=start.name, c=end.colour, p=place)
    return Case(
        seed=seed,
        background=background,
        texture=texture,
        shapes=tuple(shapes),
        event=event,
        target=0,
        end=end,
        instruction=instruction,
        caption=describe(end, event),
    )


def _target(event: str, colours: list[str], rng: np.random.Generator) -> tuple[Shape, Shape]:
    """The shape that changes, placed so that its whole change fits in the frame, and its end state."""
    radius = float(rng.uniform(*RADIUS))
    scale = GROW if event == "grow" else SHRINK if event == "shrink" else 1.0
    margin = radius * max(scale, 1.0) + 2
    low, high = margin, SIZE - margin
    step = MOVE_PIXELS
    x_range, y_range = [low, high], [low, high]
    if event == "left":
        x_range[0] += step
    elif event == "right":
        x_range[1] -= step
    elif event == "up":
        y_range[0] += step
    elif event == "down":
        y_range[1] -= step
    elif event == "fall":
        y_range[1] = SIZE / 2
    x, y = float(rng.uniform(*x_range)), float(rng.uniform(*y_range))
    if event == "appear":
        x = PLACES[str(rng.choice(HORIZONTAL))]
        y = PLACES[str(rng.choice(VERTICAL))]
    start = Shape(str(rng.choice(SHAPES)), colours[0], x, y, radius)
    moves = {"left": (-step, 0), "right": (step, 0), "up": (0, -step), "down": (0, step)}
    dx, dy = moves.get(event, (0, 0))
    end = dataclasses.replace(start, x=start.x + dx, y=high if event == "fall" else start.y + dy)
    if event in ("grow", "shrink"):
        end = dataclasses.replace(end, radius=radius * scale)
    elif event == "recolour":
        end = dataclasses.replace(end, colour=colours[-1])
    elif event == "fade":
        end = dataclasses.replace(end, radius=0.0)
    return start, end


def describe(shape: Shape, event: str) -> str:
    """A caption of the final frame, as a target-description benchmark would give it."""
    if event == "fade":
        return "A photo of an empty background."
    vertical, horizontal = places(shape)
    size = " big" if event == "grow" else " small" if event == "shrink" else ""
    return f"A photo of a{size} {shape.name} at the {vertical} {horizontal}."


def places(shape: Shape) -> tuple[str, str]:
    """Which third of the frame a shape's centre is in, vertically and horizontally ("top", "left")."""

    def third(position: float) -> int:
        return 0 if position < SIZE / 3 else 2 if position > 2 * SIZE / 3 else 1

    return VERTICAL[third(shape.y)], HORIZONTAL[third(shape.x)]


def _eased(progress: float, event: str) -> float:
    if event == "fall":
        return progress**2  # gravity: starts slow, lands fast
    return 0.5 - 0.5 * np.cos(np.pi * progress)


def shape_at(case: Case, progress: float) -> tuple[Shape, float]:
    """The changing shape and its opacity at `progress` in [0, 1] of the event."""
    start, end = case.moved, case.end
    amount = _eased(progress, case.event)
    if case.event == "fade":
        return start, 1.0 - amount
    if case.event == "appear":
        return end, amount
    return (
        dataclasses.replace(
            start,
            x=start.x + (end.x - start.x) * amount,
            y=start.y + (end.y - start.y) * amount,
            radius=start.radius + (end.radius - start.radius) * amount,
        ),
        1.0,
    )


def render_frame(case: Case, progress: float) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 frame of the case at `progress` in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    image = _background(case, x, y)
    for index, shape in enumerate(case.shapes):
        opacity = 1.0
        if index == case.target:
            shape, opacity = shape_at(case, progress)
            colour = np.array(COLOURS[case.moved.colour], dtype=np.float32)
            if case.event == "recolour":
                colour += (np.array(COLOURS[case.end.colour], dtype=np.float32) - colour) * _eased(progress, "")
        else:
            colour = np.array(COLOURS[shape.colour], dtype=np.float32)
        if shape.radius <= 0:
            continue
        alpha = np.clip(0.5 - _signed_distance(shape, x, y), 0.0, 1.0)[..., None] * opacity
        image = image * (1 - alpha) + colour * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_clip(case: Case, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """The whole event as (num_frames, SIZE, SIZE, 3) uint8: frame 0 is the source, the last the target.

    The event plays over all but the last HELD_FRAMES frames, which hold its result, as a clip of an edit ends in
    the edited state. With the event running to the last frame, the causal VAE's last latent frame (the last four
    frames) held motion, and the trained toy VAE decoded it as ghosts: a moved shape smeared over its last
    positions, a faded one still there."""
    event_frames = num_frames - HELD_FRAMES
    return np.stack([render_frame(case, min(1.0, index / event_frames)) for index in range(num_frames)])


def _background(case: Case, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    base = np.array(case.background, dtype=np.float32)
    if case.texture == "gradient":
        shade = (y / SIZE - 0.5)[..., None] * 40
    elif case.texture == "stripes":
        shade = (np.sin(x / 3.0) * 10)[..., None]
    else:
        shade = np.zeros((SIZE, SIZE, 1), dtype=np.float32)
    return base + shade


def _signed_distance(shape: Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx, dy = x - shape.x, y - shape.y
    if shape.kind == "circle":
        return np.hypot(dx, dy) - shape.radius
    if shape.kind == "square":
        half = shape.radius * 0.85
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    # An upward-pointing triangle inscribed in the circle of the shape's radius.
    r = shape.radius
    edges = (dy - r / 2, (np.sqrt(3) * dx - dy) / 2 - r / 2, (-np.sqrt(3) * dx - dy) / 2 - r / 2)
    return np.maximum.reduce(edges)
