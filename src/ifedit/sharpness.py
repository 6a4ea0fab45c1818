"""Frame scoring and selection (SPEC step 4): variance of the Laplacian of the grayscale frame, on a 0-255 scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The 4-neighbour Laplacian, as OpenCV's cv2.Laplacian uses with its default aperture.
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
# ITU-R BT.601 luma weights, as in cv2.cvtColor(..., COLOR_RGB2GRAY).
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def laplacian_variance(frames: torch.Tensor) -> torch.Tensor:
    """Sharpness of each frame of a (N, 3, H, W) batch in [0, 1]: higher is crisper.

    Frames are quantised to 8 bits first, so scores match what a user measures on the saved PNGs.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round()
    gray = torch.einsum("nchw,c->nhw", pixels, _LUMA.to(pixels.device)).round().unsqueeze(1)
    response = F.conv2d(gray, _LAPLACIAN.to(gray.device).view(1, 1, 3, 3))
    return response.flatten(1).var(dim=1, unbiased=False)


def candidate_frames(num_frames: int, temporal_scale: int) -> list[int]:
    """Pixel frames decoded from the last latent frame: the late frames IF-Edit chooses from (4 with Wan's VAE)."""
    if num_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to have late frames, got {num_frames}")
    return list(range(max(1, num_frames - temporal_scale), num_frames))


def latent_frame_candidates(latent_frame: int, temporal_scale: int) -> list[int]:
    """Pixel frames decoded from latent frame `latent_frame` >= 1 of a causal video VAE: (j-1)T+1 ... jT.

    The candidates of an edit read earlier than the clip's end (`edit_position` below 1)."""
    if latent_frame < 1:
        raise ValueError(f"latent frame 0 decodes to the source frame alone, not candidates; got {latent_frame}")
    first = (latent_frame - 1) * temporal_scale + 1
    return list(range(first, first + temporal_scale))


def sharpest(scores: dict[int, float]) -> int:
    """The frame index with the highest score; ties go to the later frame, which is further into the edit."""
    return max(scores, key=lambda index: (scores[index], index))
