"""Model families behind one stage interface (see ``interface.py``)."""

from tessera.models.config import ModelConfig
from tessera.models.interface import (
    DenoiseWork,
    FrameCondition,
    LatentGeometry,
    ModelCard,
    ModelLimits,
    PartNotLoadedError,
    TextConditioning,
    VideoModel,
    frame_noise,
)
from tessera.models.registry import load_model

__all__ = [
    "DenoiseWork",
    "FrameCondition",
    "LatentGeometry",
    "ModelCard",
    "ModelConfig",
    "ModelLimits",
    "PartNotLoadedError",
    "TextConditioning",
    "VideoModel",
    "frame_noise",
    "load_model",
]
