"""ifedit: edit images with image-to-video diffusion models (IF-Edit, arXiv 2511.19435)."""

from .errors import IFEditError, InvalidInputError, SetupError

__version__ = "0.1.0"
__all__ = ["IFEditError", "IFEditPipeline", "IFEditPipelineOutput", "InvalidInputError", "SetupError"]


def __getattr__(name: str):
    # The pipeline pulls in diffusers and transformers; import it on first use so `ifedit --help` stays instant.
    if name in ("IFEditPipeline", "IFEditPipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ifedit' has no attribute {name!r}")
