"""ifedit: edit images with image-to-video diffusion models (IF-Edit, arXiv 2511.19435)."""

import logging

from .errors import IFEditError, InvalidInputError, SetupError

# Without torchvision (whose PyPI build does not import beside every PyTorch wheel) transformers takes CLIP's PIL
# image processor, which Wan2.1's image encoder works with alike, and says so when diffusers' Wan pipelines are
# imported: on every ifedit command, about something no ifedit user needs to act on.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed)" not in record.getMessage()
)

__version__ = "0.1.0"
__all__ = ["IFEditError", "IFEditPipeline", "IFEditPipelineOutput", "InvalidInputError", "SetupError"]


def __getattr__(name: str):
    # The pipeline pulls in diffusers and transformers; import it on first use so `ifedit --help` stays instant.
    if name in ("IFEditPipeline", "IFEditPipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ifedit' has no attribute {name!r}")
