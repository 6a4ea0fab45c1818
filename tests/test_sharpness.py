"""Laplacian-variance sharpness and the choice of the late frame, on synthetic images."""

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest
import torch

from ifedit.sharpness import candidate_frames, laplacian_variance, sharpest
from observe import laplacian_variance_of


def _to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in images])


@pytest.fixture
def checkerboard() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 80, 3)).astype(np.uint8)
    pixels[::8] = 255
    return PIL.Image.fromarray(pixels)


def test_score_matches_an_independent_computation(checkerboard):
    score = laplacian_variance(_to_tensor([checkerboard]))[0].item()
    assert score == pytest.approx(laplacian_variance_of(np.asarray(checkerboard)), rel=1e-5)
    assert score > 1000


def test_flat_frames_score_zero():
    flat = torch.full((2, 3, 16, 16), 0.5)
    assert laplacian_variance(flat).tolist() == [0.0, 0.0]


def test_more_blur_ranks_lower(checkerboard):
    blurred = [checkerboard.filter(PIL.ImageFilter.GaussianBlur(radius)) for radius in (0, 0.6, 1.2, 2.5, 5)]
    scores = laplacian_variance(_to_tensor(blurred)).tolist()
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)


def test_sharpest_picks_the_unblurred_frame_wherever_it_sits(checkerboard):
    """Mutation: the blurriest frame chosen, or the first / last frame whatever its score."""
    radii = (1.2, 0, 2.5, 0.6)
    frames = [checkerboard.filter(PIL.ImageFilter.GaussianBlur(radius)) for radius in radii]
    scores = dict(zip((29, 30, 31, 32), laplacian_variance(_to_tensor(frames)).tolist(), strict=True))
    assert sharpest(scores) == 30
    assert sharpest(dict(reversed(scores.items()))) == 30


def test_sharpest_prefers_the_later_frame_on_a_tie():
    assert sharpest({5: 1.0, 6: 3.0, 7: 3.0, 8: 2.0}) == 7


def test_candidates_are_the_pixel_frames_of_the_last_latent_frame():
    assert candidate_frames(33, 4) == [29, 30, 31, 32]
    assert candidate_frames(13, 4) == [9, 10, 11, 12]
    assert candidate_frames(5, 4) == [1, 2, 3, 4]  # never frame 0, the input
    with pytest.raises(ValueError, match="at least 2 frames"):
        candidate_frames(1, 4)


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        laplacian_variance(torch.zeros(3, 16, 16))
