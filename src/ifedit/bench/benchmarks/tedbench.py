"""TEdBench (Imagic's benchmark): target captions and no ground truth, scored by LPIPS, CLIP-I and CLIP-T."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image

from ...io import read_json
from ..cases import EditCase, existing_image, listing_field, safe_id, safe_name
from ..published import Published
from .base import Benchmark, OwnScores

if TYPE_CHECKING:
    import torch

    from ..scoring import ScoreOptions


class TEdBench(Benchmark):
    name = "tedbench"
    title = "TEdBench"
    listings = ("input_list.json",)
    published = tuple(
        Published(method, metric, value)
        for method, scores in {
            "LEDITS++": (0.23, 0.87, 0.63),
            "Frame2Frame (CogVideoX-5B I2V + GPT-4o)": (0.22, 0.89, 0.63),
            "FlowEdit": (0.22, 0.89, 0.61),
            "IF-Edit": (0.19, 0.96, 0.65),
        }.items()
        for metric, value in zip(("lpips", "clip_i", "clip_t"), scores, strict=True)
    ) + (Published("IF-Edit", "sharpness", 983.0, "K = 3 with refinement"),)

    def load(self, root: Path) -> list[EditCase]:
        """`input_list.json` (img_name, target_text) and `originals/`: target captions, no ground-truth image."""
        listing = self.listing(root)
        folder = listing.parent / "originals"
        entries = read_json(listing, "TEdBench list (input_list.json)", list)
        cases = []
        for index, entry in enumerate(entries):
            where = f"{listing} entry {index}"
            name, target = listing_field(entry, "img_name", where), listing_field(entry, "target_text", where)
            source = existing_image(folder / name, where)
            stem = safe_name(Path(name).stem, f"{where}: field 'img_name'")
            case_id = f"{index:03d}_{safe_id(stem)}"
            cases.append(EditCase(self.name, case_id, case_id, target, "target", stem, source))
        return cases

    def own_metrics(
        self,
        cases: Sequence[EditCase],
        edited: Callable[[EditCase], PIL.Image.Image],
        options: ScoreOptions,
        device: torch.device,
    ) -> OwnScores:
        """LPIPS to the source (AlexNet), CLIP-I to the source and CLIP-T to the target caption, as the papers
        report them."""
        import torch

        from ..metrics import ALEXNET_HINT, HEADS_HINT, LPIPS, CLIPScorer, to_tensor

        found = OwnScores()
        lpips = None
        if options.lpips_alexnet or options.lpips_heads:
            lpips = LPIPS.from_files(options.lpips_alexnet, options.lpips_heads).to(device)
            found.metrics["lpips"] = "LPIPS v0.1, AlexNet, output vs source resized to the output's size"
        else:
            found.notes.append(
                f"LPIPS needs --lpips-alexnet FILE ({ALEXNET_HINT}) and --lpips-heads FILE ({HEADS_HINT})"
            )
        clip = None
        if options.clip:
            clip = CLIPScorer(options.clip, device)
            found.metrics["clip_i"] = f"cosine of CLIP image embeddings, output vs source; backbone {options.clip}"
            found.metrics["clip_t"] = (
                f"cosine of CLIP image and text embeddings, output vs target text; backbone {options.clip}"
            )
            found.metrics["clip_backbone"] = options.clip
        else:
            found.notes.append("CLIP-I and CLIP-T need --clip MODEL: a folder or Hub id of a transformers CLIPModel")
        if lpips is None and clip is None:
            return found
        for case in cases:
            image, source = edited(case), case.load_source()
            scores = found.cases.setdefault(case.id, {})
            if lpips is not None:
                resized = source.resize(image.size, PIL.Image.Resampling.BICUBIC)
                with torch.no_grad():
                    scores["lpips"] = float(lpips(to_tensor(image).to(device), to_tensor(resized).to(device))[0])
            if clip is not None:
                scores["clip_i"] = clip.clip_i(image, source)
                scores["clip_t"] = clip.clip_t(image, case.text)
        return found
