"""Image metrics the papers report for TEdBench (LPIPS, CLIP-I, CLIP-T) and sharpness, from user-given weights.

LPIPS is built here (AlexNet features and the learned linear heads of Zhang et al., CVPR 2018, version 0.1)
because the `lpips` package needs torchvision; it loads the same two weight files that package uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SetupError
from ..sharpness import laplacian_variance

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_HINT = f"torchvision's AlexNet weights, {ALEXNET_FILE} from https://download.pytorch.org/models/{ALEXNET_FILE}"
HEADS_HINT = (
    "the LPIPS linear heads, alex.pth from the lpips package (lpips/weights/v0.1/alex.pth in "
    "https://github.com/richzhang/PerceptualSimilarity)"
)
# Input scaling of LPIPS v0.1 (ScalingLayer): inputs in [-1, 1], shifted and scaled to ImageNet statistics.
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
_TAPS = (2, 5, 8, 10, 12)  # ends of the slices of `features` whose outputs LPIPS compares (after each ReLU)
_CHANNELS = (64, 192, 384, 256, 256)


def to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """A PIL image as a (1, 3, H, W) float tensor in [0, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


def sharpness(image: PIL.Image.Image) -> float:
    """Variance of the Laplacian on a 0-255 scale, as the pipeline scores frames (the paper's sharpness)."""
    return float(laplacian_variance(to_tensor(image))[0])


class LPIPS(nn.Module):
    """AlexNet LPIPS: per-layer unit-normalised feature differences, weighted by learned 1x1 heads, averaged."""

    def __init__(self):
        super().__init__()
        # torchvision's `alexnet().features`, layer for layer, so its state dict keys load unchanged.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in _CHANNELS)
        self.eval().requires_grad_(False)

    @classmethod
    def from_files(cls, alexnet: str | Path | None, heads: str | Path | None) -> LPIPS:
        """Load the backbone (torchvision keys `features.N.*`) and the heads (lpips keys `linK.model.1.weight`)."""
        model = cls()
        backbone = _state_dict(alexnet, "--lpips-alexnet", ALEXNET_HINT)
        model.features.load_state_dict(_subset(backbone, "features.", alexnet, ALEXNET_HINT))
        linear = _state_dict(heads, "--lpips-heads", HEADS_HINT)
        renamed = {f"{k}.weight": linear.get(f"lin{k}.model.1.weight") for k in range(len(_CHANNELS))}
        missing = [name for name, value in renamed.items() if value is None]
        if missing:
            raise SetupError(f"{heads} is not {HEADS_HINT}: no key lin{missing[0].split('.')[0]}.model.1.weight")
        model.heads.load_state_dict(renamed)
        return model

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Distances of two (N, 3, H, W) batches in [0, 1]: 0 for identical images, larger when they differ."""
        distance = first.new_zeros(first.shape[0])
        x, y = (self._scaled(image) for image in (first, second))
        start = 0
        for head, end in zip(self.heads, _TAPS, strict=True):
            x, y = self.features[start:end](x), self.features[start:end](y)
            start = end
            difference = (_unit(x) - _unit(y)) ** 2
            distance = distance + head(difference).mean(dim=(1, 2, 3))
        return distance

    def _scaled(self, image: torch.Tensor) -> torch.Tensor:
        return (image * 2 - 1 - _SHIFT.to(image)) / _SCALE.to(image)


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each position's feature vector divided by its length (LPIPS's normalize_tensor)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _state_dict(path: str | Path | None, option: str, hint: str) -> dict[str, torch.Tensor]:
    if path is None:
        raise SetupError(f"LPIPS needs {option} FILE: {hint}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise SetupError(f"{option} file not found: {path} (expected {hint})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise SetupError(f"{option} {path} is not a PyTorch weights file ({error}); expected {hint}") from None
    if not isinstance(state, dict):
        raise SetupError(f"{option} {path} holds no state dict; expected {hint}")
    return state


def _subset(state: dict[str, torch.Tensor], prefix: str, path, hint: str) -> dict[str, torch.Tensor]:
    subset = {name.removeprefix(prefix): value for name, value in state.items() if name.startswith(prefix)}
    if not subset:
        raise SetupError(f"{path} has no '{prefix}*' weights; expected {hint}")
    return subset


class CLIPScorer:
    """CLIP image and text embeddings, for CLIP-I (output vs source) and CLIP-T (output vs target text)."""

    def __init__(self, model: str, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.processor = AutoImageProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise SetupError(
                f"cannot load CLIP {model!r} ({str(error).splitlines()[0]}); pass --clip a folder or Hub id holding a "
                "transformers CLIPModel with its tokenizer and image processor, e.g. openai/clip-vit-large-patch14"
            ) from None
        self.name = model
        self.device = device
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def image_embedding(self, image: PIL.Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"].to(self.device)
        return _unit_vector(_features(self.model.get_image_features(pixel_values=pixels)))

    @torch.no_grad()
    def text_embedding(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer([text], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {
            name: value.to(self.device) for name, value in tokens.items() if name in ("input_ids", "attention_mask")
        }
        return _unit_vector(_features(self.model.get_text_features(**tokens)))

    def clip_i(self, output: PIL.Image.Image, source: PIL.Image.Image) -> float:
        return float((self.image_embedding(output) * self.image_embedding(source)).sum())

    def clip_t(self, output: PIL.Image.Image, text: str) -> float:
        return float((self.image_embedding(output) * self.text_embedding(text)).sum())


def _features(output) -> torch.Tensor:
    """The projected embedding, whether transformers returns it bare or inside a model output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit_vector(embedding: torch.Tensor) -> torch.Tensor:
    return F.normalize(embedding.float(), dim=-1)[0]
