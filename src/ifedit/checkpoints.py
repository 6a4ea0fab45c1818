"""Weights users already hold, read as this project loads them: an expert as one file (Wan's own tensor names or
diffusers'; bfloat16, float16, float8 or ComfyUI's scaled float8; or GGUF-quantised) and LoRA files in the Hugging
Face download cache."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import safe_open

from .errors import InvalidInputError, SetupError
from .extras import install_command
from .presets import LoraWeights, Preset

EXPERT_SUFFIXES = (".safetensors", ".gguf")
# ComfyUI's scaled float8 files keep a scale beside each float8 weight ("scale_weight"; "weight_scale" in its newer
# layout, which also names each weight's format in a "comfy_quant" tensor): the true weight is their product. Input
# scales and the "scaled_fp8" marker are no weights.
WEIGHT_SCALES = (".scale_weight", ".weight_scale")
NOT_WEIGHTS = (".scale_input", ".input_scale")
QUANT_FORMAT = ".comfy_quant"
SCALED_FP8_MARKER = "scaled_fp8"
# ComfyUI-GGUF stores a tensor GGUF cannot hold as it is (more than 4 dimensions) in another shape, and its true
# shape under this metadata key.
GGUF_ORIGINAL_SHAPE = "comfy.gguf.orig_shape."
SAFETENSORS_DTYPES = {  # safetensors' names: (torch's, bytes an element)
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}


@dataclass(frozen=True)
class ExpertLayout:
    """What an expert file must hold to replace an expert of a model: every weight's name and shape, and which
    weights belong to Linear layers (the only ones diffusers computes with from GGUF blocks)."""

    shapes: dict[str, tuple[int, ...]]
    linear: frozenset[str]


@dataclass(frozen=True)
class TensorInfo:
    """One weight of an expert file as its header describes it: its shape in the model and how it is stored."""

    shape: tuple[int, ...]
    stored_as: str  # a torch dtype ("bfloat16"), or a GGUF type ("Q4_K")
    nbytes: int


@dataclass(frozen=True)
class ExpertFile:
    """An expert checkpoint, read from its header and checked against the expert it replaces."""

    path: Path
    tensors: dict[str, TensorInfo]  # diffusers name -> what the file holds
    file_names: dict[str, str]  # diffusers name -> the file's own name
    scaled: bool  # float8 weights with ComfyUI's scales

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    def counts(self) -> dict[str, int]:
        """Element count of every weight, as memory.weights_of takes them."""
        return {name: math.prod(info.shape) for name, info in self.tensors.items()}

    def stored_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def storage(self) -> str:
        """How the file stores its weights, named by the type holding the most of them: "GGUF Q4_K",
        "float8_e4m3fn, scaled", "bfloat16"."""
        elements: dict[str, int] = {}
        for info in self.tensors.values():
            elements[info.stored_as] = elements.get(info.stored_as, 0) + math.prod(info.shape)
        kind = max(elements, key=elements.__getitem__)
        if self.is_gguf:
            return f"GGUF {kind}"
        return f"{kind}, scaled" if self.scaled else kind

    def record(self) -> dict[str, Any]:
        return {"file": str(self.path), "storage": self.storage()}


def check_expert_file(path: str, flag: str) -> Path:
    """The file given to --transformer/--transformer-2, refused up front unless it can be an expert checkpoint."""
    file = Path(path).expanduser()
    if not file.is_file():
        what = ("a link to nothing (dangling, or a loop)" if file.is_symlink() and not file.exists()
                else "not a regular file" if file.exists() else "no such file")  # fmt: skip
        raise InvalidInputError(f"{flag} {path}: {what}")
    if file.suffix not in EXPERT_SUFFIXES:
        raise InvalidInputError(f"{flag} {path}: an expert checkpoint is a .safetensors or a .gguf file")
    return file


def expert_layout(config: dict[str, Any]) -> ExpertLayout:
    """The layout of a WanTransformer3DModel with `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    modules = model.named_modules()
    linear = frozenset(f"{name}.weight" for name, module in modules if isinstance(module, torch.nn.Linear))
    return ExpertLayout(shapes, linear)


def read_expert_header(path: Path, layout: ExpertLayout) -> ExpertFile:
    """The expert in `path` under diffusers' names, refused (one line naming the first difference) unless it holds
    exactly the weights of `layout`; reads no weight."""
    if path.suffix == ".gguf":
        stored, scaled = _gguf_header(path), False
    else:
        stored, scaled = _safetensors_header(path)
    names = _diffusers_names(list(stored), set(layout.shapes))
    tensors = {name: stored[original] for name, original in names.items()}
    _check_layout(path, tensors, layout)
    return ExpertFile(path, tensors, names, scaled)


def load_expert(
    expert: ExpertFile,
    layout: ExpertLayout,
    config_source: str,
    subfolder: str | None,
    dtype: torch.dtype,
    local_files_only: bool,
) -> WanTransformer3DModel:
    """Load a checked expert file through diffusers' single-file loading, configured as `config_source`'s expert.
    GGUF weights stay quantised in diffusers' GGUF layers, dequantised layer by layer as they compute."""
    if expert.is_gguf:
        from diffusers import GGUFQuantizationConfig

        state = _read_gguf(expert, layout)
        quantization = GGUFQuantizationConfig(compute_dtype=dtype)
    else:
        state = _read_safetensors(expert, dtype)
        quantization = None
    # The names are diffusers' already: from_single_file converts nothing and loads the tensors as they are.
    return WanTransformer3DModel.from_single_file(
        state,
        config=config_source,
        subfolder=subfolder,
        torch_dtype=dtype,
        quantization_config=quantization,
        local_files_only=local_files_only,
    )


def local_loras(preset: Preset, offline: bool) -> Preset:
    """The preset with each LoRA as a file on this machine where one is: in a folder given as its source, a path
    given as its file name, or, `offline`, in the Hugging Face download cache. Offline, a LoRA named by Hub id and
    not in the cache stops the run before anything loads, with one line saying what to pass."""
    loras, missing = [], []
    for lora in preset.loras:
        if not lora.weight_name.endswith(".safetensors"):
            raise InvalidInputError(f"LoRA {lora.weight_name}: a LoRA is a .safetensors file (pickled .bin, .pt or "
                                    ".ckpt files are never loaded: loading one can run its code)")  # fmt: skip
        file = Path(lora.weight_name).expanduser()
        if Path(lora.source).expanduser().is_dir():
            folder = Path(lora.source).expanduser() / (lora.subfolder or "")
            if not (folder / lora.weight_name).is_file():
                raise SetupError(f"could not load LoRA {folder / lora.weight_name}: no such file")
            loras.append(lora)
        elif ("/" in lora.weight_name or lora.weight_name.startswith("~")) and file.is_file():
            # --lora-high/--lora-low given as a path (a bare name in the working folder stays a name in the source)
            loras.append(dataclasses.replace(lora, source=str(file.parent), weight_name=file.name, subfolder=None))
        elif not offline:
            loras.append(lora)  # downloaded (or taken from the cache) as the model loads
        elif cached := cached_hub_file(lora.source, _hub_name(lora)):
            loras.append(dataclasses.replace(lora, source=str(cached.parent), weight_name=cached.name, subfolder=None))
        else:
            missing.append(lora)
    if missing:
        raise SetupError(_missing_loras(preset, missing))
    return preset.with_loras(tuple(loras))


def _hub_name(lora: LoraWeights) -> str:
    return f"{lora.subfolder}/{lora.weight_name}" if lora.subfolder else lora.weight_name


def _missing_loras(preset: Preset, missing: list[LoraWeights]) -> str:
    sources: dict[str, list[str]] = {}
    for lora in missing:
        sources.setdefault(lora.source, []).append(_hub_name(lora))
    named = "; ".join(f"{' and '.join(names)} of {source}" for source, names in sources.items())
    download = "; ".join(f"hf download {source} {' '.join(names)}" for source, names in sources.items())
    without = " (its few steps without the distillation LoRAs give little but noise)" if preset.lora_distilled else ""
    return (
        f"{preset.name} needs the LoRA{'s' if len(missing) > 1 else ''} {named}, which this machine's Hugging Face "
        "cache lacks (nothing is downloaded for a model in a folder, under --offline, or when the Hub cannot be "
        f"reached): pass the files with --lora-high FILE --lora-low FILE, fetch them with `{download}`, or pass "
        f"--no-lora{without}"
    )


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hub repository in this machine's download cache, looked up without the network."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    return Path(cached) if isinstance(cached, str) else None


def _safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], bool]:
    """Every weight a safetensors expert holds (scales and markers left out) and whether it is scaled float8."""
    try:
        with safe_open(path, "pt") as file:
            names = file.keys()  # a safetensors handle is not iterable
            slices = {name: file.get_slice(name) for name in names}
            formats = [bytes(file.get_tensor(name).tolist()) for name in slices if name.endswith(QUANT_FORMAT)]
    except Exception as error:  # a damaged header fails inside the parser in its own ways (SafetensorError, ...)
        raise SetupError(f"cannot read {path} as a safetensors file: {_first_line(error)}") from None
    for text in formats:
        stored_as = _quant_format(path, text)
        if not stored_as.startswith("float8"):
            raise SetupError(f"{path} stores weights as {stored_as}; expert files can be float8 or GGUF-quantised")
    tensors, scaled = {}, False
    for name, part in slices.items():
        if name == SCALED_FP8_MARKER or name.endswith((*WEIGHT_SCALES, *NOT_WEIGHTS, QUANT_FORMAT)):
            scaled = scaled or name.endswith(WEIGHT_SCALES)
            continue
        shape = tuple(part.get_shape())
        stored_as, size = SAFETENSORS_DTYPES.get(part.get_dtype(), (part.get_dtype(), 4))
        tensors[name] = TensorInfo(shape, stored_as, math.prod(shape) * size)
    return tensors, scaled


def _quant_format(path: Path, text: bytes) -> str:
    try:
        return str(json.loads(text.decode())["format"])
    except (ValueError, KeyError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise SetupError(f"{path} has a damaged comfy_quant entry") from None


def _gguf_header(path: Path) -> dict[str, TensorInfo]:
    reader = _gguf_reader(path)
    return {
        tensor.name: TensorInfo(_gguf_shape(reader, tensor), tensor.tensor_type.name, int(tensor.n_bytes))
        for tensor in reader.tensors
    }


def _gguf_reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise SetupError(f"GGUF experts need the gguf package: {install_command('gguf')}") from None
    try:
        return GGUFReader(path)
    except Exception as error:  # counts and offsets of a damaged file fail inside the reader (IndexError, ...)
        raise SetupError(f"cannot read {path} as a GGUF file: {_first_line(error)}") from None


def _gguf_shape(reader, tensor) -> tuple[int, ...]:
    """A GGUF tensor's shape in the model: GGUF lists dimensions innermost first; an original shape ComfyUI-GGUF
    recorded wins."""
    field = reader.get_field(GGUF_ORIGINAL_SHAPE + tensor.name)
    if field is not None:
        return tuple(int(field.parts[index][0]) for index in field.data)
    return tuple(int(size) for size in reversed(tensor.shape))


def _diffusers_names(names: list[str], expected: set[str]) -> dict[str, str]:
    """diffusers name -> the file's name: the same when the file uses diffusers' names, else through diffusers' own
    conversion of Wan's names (which would garble names that are diffusers' already)."""
    if set(names) == expected:
        return {name: name for name in names}
    return dict(convert_wan_transformer_to_diffusers({name: name for name in names}))


def _check_layout(path: Path, tensors: dict[str, TensorInfo], layout: ExpertLayout) -> None:
    where = f"{path} does not hold an expert of this model"
    missing = [name for name in layout.shapes if name not in tensors]
    if missing:
        raise SetupError(f"{where}: it lacks {missing[0]}{_more(missing)}")
    extra = [name for name in tensors if name not in layout.shapes]
    if extra:
        raise SetupError(f"{where}: it has {extra[0]}{_more(extra)}, which the model has not")
    for name, shape in layout.shapes.items():
        if tensors[name].shape != shape:
            raise SetupError(f"{where}: {name} is {list(tensors[name].shape)} in the file, {list(shape)} in the model")


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""


def _read_safetensors(expert: ExpertFile, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights under diffusers' names; scaled ones multiplied by their scale and float8 ones cast to `dtype`,
    one at a time, so the file's float8 copy of the whole expert is never held beside the result."""
    state = {}
    with safe_open(expert.path, "pt") as file:
        names = set(file.keys())
        for name, original in expert.file_names.items():
            tensor = file.get_tensor(original)
            stem = original.removesuffix(".weight")
            scale = next((stem + suffix for suffix in WEIGHT_SCALES if stem + suffix in names), None)
            if scale is not None:
                tensor = _scaled(expert.path, original, tensor, file.get_tensor(scale)).to(dtype)
            elif tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                tensor = tensor.to(dtype)
            state[name] = tensor
    return state


def _scaled(path: Path, name: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A scaled weight's true value: one scale for the whole tensor, or one per output channel."""
    if scale.numel() == 1:
        return weight.to(torch.float32) * scale.to(torch.float32).reshape(())
    if weight.dim() and scale.numel() == weight.shape[0]:
        return weight.to(torch.float32) * scale.to(torch.float32).reshape(-1, *[1] * (weight.dim() - 1))
    raise SetupError(f"{path}: the scale of {name} has {scale.numel()} values for a {list(weight.shape)} weight")


def _read_gguf(expert: ExpertFile, layout: ExpertLayout) -> dict[str, torch.Tensor]:
    """The weights under diffusers' names: quantised Linear weights as diffusers' GGUFParameter; other quantised
    tensors, and any stored in another shape, dequantised here (only Linear layers compute from GGUF blocks)."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter, dequantize_gguf_tensor

    tensors = {tensor.name: tensor for tensor in _gguf_reader(expert.path).tensors}
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    state = {}
    for name, original in expert.file_names.items():
        tensor, shape = tensors[original], expert.tensors[name].shape
        data = torch.from_numpy(tensor.data.copy())  # out of the file's memory map
        if tensor.tensor_type in plain:
            state[name] = data.reshape(shape)
            continue
        if tensor.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES:
            readable = ", ".join(kind.name for kind in SUPPORTED_GGUF_QUANT_TYPES)
            raise SetupError(f"{expert.path}: {original} is stored as {tensor.tensor_type.name}, which diffusers "
                             f"cannot compute with; it reads F32, F16, {readable}")  # fmt: skip
        quantised = GGUFParameter(data, quant_type=tensor.tensor_type)
        if name in layout.linear and tuple(int(size) for size in reversed(tensor.shape)) == shape:
            state[name] = quantised
        else:
            state[name] = dequantize_gguf_tensor(quantised).reshape(shape).to(torch.float32)
    return state


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
