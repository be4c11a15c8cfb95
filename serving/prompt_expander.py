"""PromptExpander stage: re-caption a short prompt, then encode it for cross-attention."""

from __future__ import annotations

from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.registry import load_model
from tessera.serving.stages import Conditioning, ModelThread


class PromptExpanderEngine:
    """Expansion with the model family's built-in deterministic re-captioner, then text encoding."""

    def __init__(self, model_config: ModelConfig, threads: int | None = None):
        self._thread = ModelThread(threads)
        self.model = load_model(model_config, parts={"text"})

    async def condition(self, prompt: str, negative_prompt: str, expand: bool) -> Conditioning:
        caption = self.model.expand(prompt) if expand else prompt
        text, negative = await self._thread.run(self.model.encode_text, [caption, negative_prompt])
        return Conditioning(
            caption=caption, expander="builtin" if expand else "none", text=text, negative_text=negative
        )


@serve.deployment
class PromptExpander:
    """Serve shim around :class:`PromptExpanderEngine`."""

    def __init__(self, model_config: ModelConfig, threads: int | None = None):
        self.engine = PromptExpanderEngine(model_config, threads)

    async def condition(self, prompt: str, negative_prompt: str, expand: bool) -> Conditioning:
        return await self.engine.condition(prompt, negative_prompt, expand)
