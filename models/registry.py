"""Load a model family by config, with only the parts a stage needs."""

from __future__ import annotations

from collections.abc import Iterable

from tessera.models.config import CogVideoXModelConfig, LTXModelConfig, ModelConfig, NativeModelConfig, WanModelConfig
from tessera.models.config import HunyuanVideo15ModelConfig, SimModelConfig
from tessera.models.interface import ALL_PARTS, VideoModel


def load_model(config: ModelConfig, parts: Iterable[str] = ALL_PARTS) -> VideoModel:
    """Build the model family named by ``config`` with the given parts loaded."""
    parts = frozenset(parts)
    unknown = parts - ALL_PARTS
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; expected a subset of {sorted(ALL_PARTS)}")
    if isinstance(config, NativeModelConfig):
        from tessera.models.native.pipeline import NativeVideoModel

        return NativeVideoModel.load(config, parts)
    if isinstance(config, WanModelConfig):
        from tessera.models.open.wan import WanVideoModel

        return WanVideoModel.load(config, parts)
    if isinstance(config, LTXModelConfig):
        from tessera.models.open.ltx import LTXVideoModel

        return LTXVideoModel.load(config, parts)
    if isinstance(config, CogVideoXModelConfig):
        from tessera.models.open.cogvideox import CogVideoXModel

        return CogVideoXModel.load(config, parts)
    if isinstance(config, HunyuanVideo15ModelConfig):
        from tessera.models.open.hunyuan import HunyuanVideo15Model

        return HunyuanVideo15Model.load(config, parts)
    if isinstance(config, SimModelConfig):
        from tessera.models.sim.model import SimVideoModel

        return SimVideoModel.load(config, parts)
    raise ValueError(f"unknown model family {config.family!r}")
