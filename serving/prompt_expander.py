"""PromptExpander stage: re-caption a short prompt, then encode it for cross-attention."""

from __future__ import annotations

import asyncio

from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.registry import load_model
from tessera.serving.config import ExpansionConfig
from tessera.serving.expansion import Expansion, build_expander
from tessera.serving.logs import configure_replica_logging
from tessera.serving.stages import Conditioning, ModelThread


class PromptExpanderEngine:
    """Expansion with the configured backend (serving/expansion.py), then text encoding."""

    def __init__(self, model_config: ModelConfig, expansion: ExpansionConfig, threads: int | None = None):
        self._thread = ModelThread(threads)
        self.model = load_model(model_config, parts={"text"})
        self.expander = build_expander(expansion, self.model)

    async def condition(
        self, prompt: str, negative_prompt: str, expand: bool, character: str = ""
    ) -> Conditioning:
        """``character``: the description shared by every shot of a multi-shot video (one call per shot)."""
        expansion = await self._expand(prompt, character) if expand else Expansion(prompt, "none")
        text, negative = await self._thread.run(self.model.encode_text, [expansion.caption, negative_prompt])
        return Conditioning(
            caption=expansion.caption,
            expander=expansion.backend,
            text=text,
            negative_text=negative,
            expansion_note=expansion.note,
        )

    async def _expand(self, prompt: str, character: str) -> Expansion:
        if self.expander.runs_torch:
            # A local language model shares the replica's model thread with the text encoder.
            return await self._thread.run(self.expander.expand, prompt, character)
        if self.expander.blocking:
            return await asyncio.to_thread(self.expander.expand, prompt, character)
        return self.expander.expand(prompt, character)


@serve.deployment
class PromptExpander:
    """Serve shim around :class:`PromptExpanderEngine`."""

    def __init__(self, model_config: ModelConfig, expansion: ExpansionConfig, threads: int | None = None):
        configure_replica_logging()
        self.engine = PromptExpanderEngine(model_config, expansion, threads)

    async def condition(
        self, prompt: str, negative_prompt: str, expand: bool, character: str = ""
    ) -> Conditioning:
        return await self.engine.condition(prompt, negative_prompt, expand, character)
