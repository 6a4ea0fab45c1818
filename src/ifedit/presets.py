"""Named model presets: the published numbers of each supported model and of the paper's recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInputError
from .io import read_model_json, shown
from .options import EditSettings

SchedulerName = Literal["euler", "unipc"]


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA file on the Hub (or a local path) and the expert it goes into."""

    source: str
    weight_name: str
    target: Literal["transformer", "transformer_2"]
    subfolder: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Preset:
    """Where a model's weights live and the settings its publishers (or the paper) run it with."""

    name: str
    description: str
    model_id: str | None  # Hub id; None for models built in memory
    scheduler: SchedulerName | None  # None keeps the scheduler the model ships with
    flow_shift: float | None
    fps: int
    recipe: EditSettings  # how its publishers (or the paper) sample it; users' settings override it per edit
    loras: tuple[LoraWeights, ...] = ()
    lora_distilled: bool = False  # its steps and guidance are those its LoRAs were distilled for
    gpu_memory_gb: float = 0.0  # what one edit needs on a GPU without offloading; 0 = runs anywhere
    notes: str = ""
    # The photo (width, height) memory plans assume before one is given: what the model is usually given.
    usual_photo: tuple[int, int] = (832, 480)

    def with_loras(self, loras: tuple[LoraWeights, ...]) -> Preset:
        return dataclasses.replace(self, loras=loras)


TOYWORLD_WEIGHTS = Path(__file__).parent / "toyworld" / "weights"
TOYWORLD_TRAINING_RECORD = "training.json"  # beside a trained toy world's model_index.json
LIGHTNING_SOURCE = "lightx2v/Wan2.2-Lightning"
LIGHTNING_FOLDER = "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1"
AREA_480P = 480 * 832
AREA_720P = 704 * 1280

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="paper",
            description="IF-Edit's recipe: Wan2.2-I2V-A14B + Lightning LoRA per expert, 8 steps, 33 frames, K=3",
            model_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
            scheduler="euler",
            flow_shift=5.0,
            fps=16,
            recipe=EditSettings(
                num_inference_steps=8,
                guidance_scale=1.0,
                sigma_schedule="uniform",
                num_frames=33,
                max_area=AREA_480P,
            ),
            loras=(
                LoraWeights(LIGHTNING_SOURCE, "high_noise_model.safetensors", "transformer", LIGHTNING_FOLDER),
                LoraWeights(LIGHTNING_SOURCE, "low_noise_model.safetensors", "transformer_2", LIGHTNING_FOLDER),
            ),
            lora_distilled=True,
            gpu_memory_gb=70,
            notes="about 12 s per edit on one H100 in the paper; a download of tens of GB",
        ),
        Preset(
            name="wan2.2-i2v-a14b",
            description="Wan2.2-I2V-A14B without LoRA: 40 steps, guidance 3.5 on both experts, 81 frames",
            model_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
            scheduler="unipc",
            flow_shift=5.0,
            fps=16,
            recipe=EditSettings(
                num_inference_steps=40,
                guidance_scale=3.5,
                guidance_scale_2=3.5,
                num_frames=81,
                max_area=AREA_480P,
            ),
            gpu_memory_gb=70,
            notes="several minutes per edit on one H100",
        ),
        Preset(
            name="wan2.2-ti2v-5b",
            description="Wan2.2-TI2V-5B: one expert, 720p, fits 24 GB GPUs",
            model_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            scheduler="unipc",
            flow_shift=5.0,
            fps=24,
            recipe=EditSettings(
                num_inference_steps=50,
                guidance_scale=5.0,
                num_frames=121,
                max_area=AREA_720P,
            ),
            gpu_memory_gb=24,
        ),
        Preset(
            name="wan2.1-i2v-480p",
            description="Wan2.1-I2V-14B-480P: one expert with a CLIP image encoder",
            model_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            scheduler="unipc",
            flow_shift=3.0,
            fps=16,
            recipe=EditSettings(
                num_inference_steps=40,
                guidance_scale=5.0,
                num_frames=81,
                max_area=AREA_480P,
            ),
            gpu_memory_gb=45,
        ),
        Preset(
            name="toyworld",
            description="2 M-parameter Wan2.2-style model trained on procedural shape clips: real edits on a CPU",
            model_id=str(TOYWORLD_WEIGHTS),
            scheduler="euler",
            # 12 steps at shift 5: 20 steps, shift 8 or the scheduler's own spacing meet slightly fewer targets on
            # 110 held-out scenes, shift 3 more on those and about as many on three other sets (README, sampler).
            flow_shift=5.0,
            fps=8,
            recipe=EditSettings(
                num_inference_steps=12,
                # Classifier-free guidance on the high-noise expert alone, where the motion is laid out: the toy
                # experts are not distilled (the paper's guidance 1 belongs to its Lightning LoRA) and learned an
                # unconditional branch. On 110 held-out scenes (README) it meets more targets than guidance 1
                # (paired difference 0.13 [0.04, 0.22]) at the same background error; guiding the low-noise expert
                # too adds background error instead.
                guidance_scale=2.0,
                guidance_scale_2=1.0,
                sigma_schedule="uniform",
                num_frames=17,
                max_area=64 * 64,
                max_sequence_length=128,  # what the toy model was trained with (toyworld.train.TEXT_SEQUENCE)
                # No still-video refinement, the one step of the paper's recipe the toy world measures as harmful:
                # on 110 held-out scenes (README) it lowers the region gain (paired median difference 0.05
                # [0.03, 0.07]) and adds background error (6.0 against 4.6); 110 scenes of other seeds agreed.
                # The toy experts redraw a still clip less faithfully than the VAE copies it (refining the true
                # target meets 0.73 of the targets, its VAE round trip 0.81). `--refine` turns it on.
                refine=False,
            ),
            notes="see `ifedit toyworld --help` and `ifedit demo`",
            usual_photo=(64, 64),  # its scenes
        ),
        Preset(
            name="debug-tiny",
            description="tiny random Wan2.2-style model built in memory; smoke-tests an install on a CPU (noise)",
            model_id=None,
            scheduler="euler",
            flow_shift=5.0,
            fps=8,
            recipe=EditSettings(
                num_inference_steps=4,
                guidance_scale=1.0,
                sigma_schedule="uniform",
                num_frames=9,
                max_area=64 * 96,
            ),
        ),
    )
}
DEFAULT_PRESET = "paper"


def edit_settings(preset: Preset, **overrides: Any) -> EditSettings:
    """A preset's recipe with every override that is not None (None keeps the recipe's value), checked."""
    unknown = set(overrides) - set(EditSettings.names())
    if unknown:
        raise TypeError(f"unknown edit settings: {', '.join(sorted(unknown))}")
    return dataclasses.replace(
        preset.recipe, **{name: value for name, value in overrides.items() if value is not None}
    )


def get_preset(name: str) -> Preset:
    """Look up a preset by name, with an error listing the names that exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def preset_for_model_id(model_id: str) -> Preset | None:
    """The first preset that loads `model_id` without LoRA (used when a user names a Hub id directly)."""
    for preset in PRESETS.values():
        if preset.model_id == model_id and not preset.loras:
            return preset
    return None


def custom_preset(model: str) -> Preset:
    """Settings for a model we have no published numbers for: its own scheduler, the paper's other numbers."""
    paper = PRESETS[DEFAULT_PRESET]
    return dataclasses.replace(
        paper,
        name="custom",
        description=f"model {model} with the paper's sampling settings",
        model_id=model,
        scheduler=None,
        flow_shift=None,
        recipe=dataclasses.replace(paper.recipe, sigma_schedule="default"),
        loras=(),
        lora_distilled=False,
        gpu_memory_gb=0.0,
        notes="",
    )


def local_paper_preset(folder: str) -> Preset:
    """The paper's recipe for Wan2.2-I2V-A14B weights in a local folder; its LoRAs are looked up on this machine
    (loading.local_loras), and whether the GPU suffices is left to the memory plan."""
    return dataclasses.replace(
        PRESETS[DEFAULT_PRESET],
        name="paper (local folder)",
        description=f"IF-Edit's recipe on the Wan2.2-I2V-A14B weights in {folder}",
        model_id=folder,
        gpu_memory_gb=0.0,
        notes="",
    )


def has_a14b_i2v_layout(folder: Path) -> bool:
    """Whether a diffusers folder is laid out as Wan2.2-I2V-A14B, whatever its size: two experts split at a
    boundary, image-to-video (the expert takes the noise and the image condition, 2 x z_dim + 4 channels: the
    latents, the encoded image and its 4-channel frame mask), no image encoder, one timestep a sample."""
    try:
        index = read_model_json(folder / "model_index.json", "a pipeline's index")
        expert = read_model_json(folder / "transformer" / "config.json", "an expert's config")
        z_dim = read_model_json(folder / "vae" / "config.json", "a VAE's config").get("z_dim", 16)
        return (
            has_component(index, "transformer_2")
            and index.get("boundary_ratio") is not None
            and not has_component(index, "image_encoder")
            and not index.get("expand_timesteps")
            and expert.get("in_channels") == 2 * z_dim + 4
        )
    except (ValueError, TypeError):  # InvalidInputError among them; a TypeError from a value of the wrong type
        return False  # not this layout; loading the folder says what is wrong with it


def has_component(index: dict, name: str) -> bool:
    """Whether a pipeline's index (model_index.json) names a module for `name`, as diffusers reads it: an entry
    [library, class] whose library is not null; absent or null when the pipeline has none; an entry that is not a
    non-empty list is a ValueError naming it."""
    entry = index.get(name)
    if entry is None:
        return False
    if not (isinstance(entry, list) and entry):
        raise ValueError(f"model_index.json's {name} entry is {shown(entry)}, not [library, class]")
    return entry[0] is not None


def resolve_model(model: str) -> Preset:
    """A preset name, a local pipeline directory, or a Hub id, as the preset that describes how to run it."""
    if model in PRESETS:
        return get_preset(model)
    if Path(model).expanduser().is_dir():
        path = Path(model).expanduser()
        if not (path / "model_index.json").is_file():
            raise InvalidInputError(f"model directory {path} has no model_index.json (not a diffusers pipeline)")
        if (path / TOYWORLD_TRAINING_RECORD).is_file():  # written by `ifedit toyworld train`: run it as trained
            return dataclasses.replace(get_preset("toyworld"), model_id=str(path))
        if has_a14b_i2v_layout(path):
            return local_paper_preset(str(path))
        return custom_preset(str(path))
    if Path(model).expanduser().exists():
        raise InvalidInputError(
            f"model {model} is a file, not a pipeline folder: give the folder holding model_index.json (a single "
            "expert file goes to --transformer / --transformer-2)"
        )
    if Path(model).expanduser().is_symlink():  # not a Hub id that happens to be a broken path
        raise InvalidInputError(f"model {model} is a link that leads to no folder (dangling, or a loop)")
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return preset_for_model_id(model) or custom_preset(model)
    raise InvalidInputError(
        f"unknown model {model!r}: give a preset ({', '.join(PRESETS)}), a local pipeline directory, "
        "or a Hugging Face Hub id such as Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    )
