"""A VLM run in this process through transformers, loaded once for a batch and released before the video model."""

from __future__ import annotations

import gc

import PIL.Image
import torch
from transformers import PROCESSOR_MAPPING, AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin
from transformers.utils import is_torchvision_available

from .. import hub
from .base import EnhancementError, one_line

MAX_NEW_TOKENS = 400


def default_device_dtype() -> tuple[torch.device, torch.dtype]:
    """bfloat16 on a GPU, float32 on the CPU (where half precision is slow or unsupported)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_processor(model_id: str, local_files_only: bool = False) -> ProcessorMixin:
    """The model's processor; without torchvision, its processor class loaded without the video processor."""
    try:
        return AutoProcessor.from_pretrained(model_id, local_files_only=local_files_only)
    except ImportError:
        if is_torchvision_available():
            raise
    # Qwen-VL processors also load a video processor, which transformers builds only with torchvision, though a prompt
    # needs one image. Their image processors fall back to PIL and a processor lacking a video processor handles images
    # alone, so the same class loads with "video_processor" left out of the parts it loads and checks.
    processor_class = PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(model_id, local_files_only=local_files_only))]
    parts = [name for name in processor_class.get_attributes() if name != "video_processor"]
    image_only = type(processor_class.__name__, (processor_class,), {"get_attributes": classmethod(lambda _: parts)})
    return image_only.from_pretrained(model_id, local_files_only=local_files_only)


class LocalVLM:
    """A loaded image-text-to-text model and its processor; `close()` (or leaving a `with`) frees the memory.

    `local_files_only` takes a model named by Hub id from the download cache alone, as it is taken anyway when the
    Hub cannot be reached (`hub.cache_only`)."""

    def __init__(
        self,
        model_id: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
    ):
        default_device, default_dtype = default_device_dtype()
        self.model_id = model_id
        self.processor = self.model = None
        self.device = torch.device(device) if device is not None else default_device
        dtype = dtype or (default_dtype if self.device.type == default_device.type else torch.float32)
        cache_only = hub.cache_only(model_id, local_files_only)
        if cache_only and not hub.is_folder(model_id) and not hub.is_downloaded(model_id):
            unreachable = hub.known_unreachable()
            why = f"the Hub cannot be reached ({unreachable})" if unreachable else "--offline or HF_HUB_OFFLINE is set"
            raise EnhancementError(
                f"could not load the local VLM {model_id!r}: it is not downloaded and {why}; run `hf download "
                f"{model_id}` where there is a network, or choose another --prompt-enhancer"
            )
        # Any failure here (unknown id, no network, missing torchvision, out of memory) means no local prompts.
        try:
            self.processor = load_processor(model_id, cache_only)
            self.model = AutoModelForImageTextToText.from_pretrained(
                model_id, dtype=dtype, device_map=self.device, local_files_only=cache_only, use_safetensors=True
            )
        except Exception as error:
            self.close()
            raise EnhancementError(f"could not load the local VLM {model_id!r}: {one_line(error)}") from error
        self.model.eval()

    def generate(self, image: PIL.Image.Image, system: str, user: str) -> str:
        """The model's answer to the system rules, the image and the user's words, decoded without special tokens."""
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user}]},
        ]
        try:
            inputs = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            ).to(self.model.device, dtype=self.model.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        except Exception as error:  # out of memory or a processor that rejects the input: no prompt from this model
            raise EnhancementError(f"the local VLM {self.model_id!r} failed: {one_line(error)}") from error
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        """Drop the model and give its memory back, so the video model can use it."""
        self.model = None
        self.processor = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> LocalVLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
