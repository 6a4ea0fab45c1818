"""The shape of the paper's published benchmark numbers (arXiv 2511.19435), which each benchmark holds for reports."""

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
