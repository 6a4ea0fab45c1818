"""ifedit: edit images with image-to-video diffusion models (IF-Edit, arXiv 2511.19435)."""

from .errors import IFEditError, InvalidInputError, SetupError
from .pipeline import IFEditPipeline, IFEditPipelineOutput

__version__ = "0.1.0"
__all__ = ["IFEditError", "IFEditPipeline", "IFEditPipelineOutput", "InvalidInputError", "SetupError"]
