"""Model families behind one stage interface (see ``interface.py``)."""

from tessera.models.config import (
    MODEL_CONFIG_ADAPTER,
    ModelConfig,
    NativeModelConfig,
    SimModelConfig,
    parse_model_config,
)
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
    "MODEL_CONFIG_ADAPTER",
    "ModelConfig",
    "ModelLimits",
    "NativeModelConfig",
    "PartNotLoadedError",
    "SimModelConfig",
    "TextConditioning",
    "VideoModel",
    "frame_noise",
    "load_model",
    "parse_model_config",
]
