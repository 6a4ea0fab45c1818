"""The paper's published benchmark numbers (arXiv 2511.19435), shown beside a run's own in reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One row of a published table: who, which metric, the value, and the judge or note it depends on."""

    method: str
    metric: str
    value: float
    note: str = ""


# The judge of the paper's RISEBench and ImgEdit numbers, and the model RISEBench's own scorer asks for.
JUDGE_MODEL = "gpt-4.1-2025-04-14"

PUBLISHED: dict[str, tuple[Published, ...]] = {
    "tedbench": tuple(
        Published(method, metric, value)
        for method, scores in {
            "LEDITS++": (0.23, 0.87, 0.63),
            "Frame2Frame (CogVideoX-5B I2V + GPT-4o)": (0.22, 0.89, 0.63),
            "FlowEdit": (0.22, 0.89, 0.61),
            "IF-Edit": (0.19, 0.96, 0.65),
        }.items()
        for metric, value in zip(("lpips", "clip_i", "clip_t"), scores, strict=True)
    )
    + (Published("IF-Edit", "sharpness", 983.0, "K = 3 with refinement"),),
    "risebench": (
        Published("IF-Edit", "temporal_reasoning", 5.8, "accuracy %, GPT-4.1 judge, scorer before April 2026"),
        Published("IF-Edit", "causal_reasoning", 21.1, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "spatial_reasoning", 12.0, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "logical_reasoning", 4.7, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "overall", 11.1, "accuracy %, GPT-4.1 judge"),
        Published("Nano Banana", "overall", 32.8, "accuracy %"),
        Published("GPT-Image-1", "overall", 28.9, "accuracy %"),
        Published("Qwen-Image-Edit", "overall", 8.9, "accuracy %"),
        Published("Step1X-Edit", "overall", 1.9, "accuracy %"),
    ),
    "bytemorph": (
        Published("IF-Edit", "camera zoom", 67.89, "Claude-3.7 judge, 0-100"),
        Published("IF-Edit", "human motion", 67.04, "Claude-3.7 judge, 0-100"),
        Published("IF-Edit", "interaction", 69.05, "Claude-3.7 judge, 0-100"),
    ),
    "imgedit": (
        Published("IF-Edit", "overall", 2.19, "GPT-4.1 judge, 1-5"),
        Published("GPT-Image", "overall", 4.20, "GPT-4.1 judge, 1-5"),
    ),
}
