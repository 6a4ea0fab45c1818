"""How the prompt stage runs, as one frozen dataclass: the command line, the benchmark runner and the API server
all build one, and `kwargs` is the only place its fields become `enhance`'s keyword arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptOptions:
    """The backend, the VLM (a local one, or a server with its model, key and timeout) and the cache; see
    `enhance_many` for what each means."""

    enhancer: str = "auto"
    vlm_model: str | None = None
    api_base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    use_cache: bool = True
    strict: bool = False
    local_files_only: bool = False  # a local VLM from the download cache only (--offline)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `enhance` and `enhance_many`."""
        return dataclasses.asdict(self)

    def recorded(self) -> dict[str, Any]:
        """What a benchmark run's manifest keeps (never the key)."""
        return {"enhancer": self.enhancer, "vlm_model": self.vlm_model, "api_base_url": self.api_base_url,
                "api_model": self.api_model, "strict": self.strict}  # fmt: skip
