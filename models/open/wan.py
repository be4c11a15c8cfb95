"""Wan 2.1 / 2.2 text to video (diffusers ``WanPipeline``) behind Tessera's stage interface.

The split, part by part, reusing the pipeline's own components and functions:

* **text** — ``WanPipeline.encode_prompt`` (UMT5). The pipeline pads every prompt's embeddings
  with zero rows up to ``max_sequence_length`` (512) and the transformer attends to all of them;
  the rows after the prompt's tokens are exact zeros, so a :class:`TextConditioning` carries only
  the prompt's own rows (float32, exact for bf16 encoders) and the Denoiser pads them back: the
  same tensor the pipeline uses, at a few hundred KB instead of 8 MB per prompt.
* **denoiser** — ``WanTransformer3DModel`` (and ``transformer_2``, Wan 2.2's low-noise expert,
  for levels below ``boundary_ratio``) plus the folder's scheduler (UniPC by default) through
  :class:`~tessera.models.open.common.SolverSchedule`: classifier-free guidance as the pipeline
  computes it (``uncond + scale * (cond - uncond)``, on when ``guidance_scale > 1``), the
  scheduler's own ``step``, its history in ``solver_state``.
* **vae** — ``AutoencoderKLWan`` with the pipeline's latent normalisation
  (``(z - latents_mean) / latents_std``) and its video processor. Latents cross stages in this
  normalised layout ``(z_dim, T, H/8, W/8)``, float32.

The card (geometry, limits, capabilities) comes from the folder's JSON configs and the
pipeline's own ``__call__`` defaults (steps, guidance, size, frames), never from weights.

Modes: text to video, image (one frame) and edit (SDEdit, what ``WanVideoToVideoPipeline``
does with the same transformer). Wan's T2V transformer was not trained to keep given frames, so
image to video, extend and transition are refused (they need ``WanImageToVideoPipeline``).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from tessera.models.interface import (
    DenoiseWork,
    LatentGeometry,
    ModelCapabilities,
    ModelCard,
    StepResult,
    TextConditioning,
    TimeGrid,
)
from tessera.models.open.common import (
    DiffusersFolder,
    OpenVideoModel,
    card_limits,
    pad_text,
    pipeline_defaults,
    prompt_rows,
    uint8_to_video,
    weights_version,
)

MODES = frozenset({"text_to_video", "image", "edit"})
# Decode tiles: Wan's causal decoder carries a feature cache through the whole video, so a tile
# decoded after `decode_context_frames` latent frames of context matches the untiled decode only
# approximately; at the real decoder's depth (random weights, 2 res blocks per level) about 24
# frames of context come within 1 uint8 level and 30 match it (WanModelConfig's default: 32).


class WanVideoModel(OpenVideoModel):
    """A ``WanPipeline`` folder, stage by stage (see the module docstring)."""

    family = "wan"
    pipelines = ("WanPipeline",)
    parts = {"text": ("tokenizer", "text_encoder"), "denoiser": ("transformer", "transformer_2"), "vae": ("vae",)}

    def __init__(self, *args):
        super().__init__(*args)
        self.boundary_ratio = self.folder.index.get("boundary_ratio")
        self.expand_timesteps = bool(self.folder.index.get("expand_timesteps", False))
        self.denoiser_component = "transformer" if self.folder.has("transformer") else "transformer_2"
        transformer = self.folder.config(self.denoiser_component)
        self.text_dim = int(transformer["text_dim"])
        self.max_text_tokens = self.config.max_sequence_length

    @classmethod
    def read_card(cls, folder: DiffusersFolder, config) -> ModelCard:
        """The model card from the folder's JSON configs and the pipeline's defaults (no weights)."""
        vae = folder.config("vae")
        transformer = folder.config("transformer" if folder.has("transformer") else "transformer_2")
        defaults = pipeline_defaults(cls.pipeline_class())
        temporal = int(vae.get("scale_factor_temporal") or 4)
        geometry = LatentGeometry(
            latent_channels=int(vae["z_dim"]),
            spatial_factor=int(vae.get("scale_factor_spatial") or 8),
            temporal_factor=temporal,
            patch_size=tuple(int(p) for p in transformer["patch_size"]),  # type: ignore[arg-type]
            native_window=TimeGrid(temporal).latent_frames(int(defaults["num_frames"])),
            decode_context=config.decode_context_frames,
        )
        limits = card_limits(geometry, config, defaults, config.fps)
        return ModelCard(
            family=cls.family, name=config.name or folder.path.name, version=config.version or weights_version(folder),
            geometry=geometry, limits=limits, capabilities=ModelCapabilities(modes=MODES, time_tiling=True),
        )

    @classmethod
    def make_pipeline(cls, folder: DiffusersFolder, components: dict, scheduler):
        return cls.pipeline_class()(
            scheduler=scheduler, boundary_ratio=folder.index.get("boundary_ratio"),
            expand_timesteps=bool(folder.index.get("expand_timesteps", False)), **components,
        )

    # -- text -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Each prompt through ``encode_prompt`` on its own (as the pipeline encodes the prompt
        and the negative prompt), keeping the prompt's rows (the rest are the pipeline's zeros)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        self.part("text", "text_encoder")
        length = self.config.max_sequence_length
        out = []
        for prompt in prompts:
            embeds, _ = self.pipe.encode_prompt(
                prompt=[prompt], do_classifier_free_guidance=False, max_sequence_length=length,
                device=self.places["text"].device,
            )
            mask = self.pipe.tokenizer(
                [prompt_clean(prompt)], padding="max_length", max_length=length, truncation=True,
                add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
            ).attention_mask
            out.append(prompt_rows(embeds[0], mask[0]))
        return out

    # -- denoising ------------------------------------------------------------------------
    def _expert(self, timestep: float) -> int:
        """0: ``transformer`` (Wan 2.1, or 2.2's high-noise expert); 1: ``transformer_2``."""
        if self.boundary_ratio is None:
            return 0 if self.folder.has("transformer") else 1
        boundary = self.boundary_ratio * self.schedule.template.config.num_train_timesteps
        return 0 if timestep >= boundary else 1

    def batch_key(self, work: DenoiseWork) -> tuple:
        steps, index, first = self.schedule.locate(tuple(work.sigmas), work.solver_state)
        t = float(self.schedule._at(steps).timesteps[index]) if first is None else first * self.schedule.template.config.num_train_timesteps
        return (*super().batch_key(work), self._expert(t))

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        where, guided = self.places["denoiser"], self.guided(items[0])
        experts = [self.pipe.transformer, self.pipe.transformer_2]
        schedulers, latents = self.start(items)
        length = self.config.max_sequence_length
        text = pad_text([item.text for item in items], length, where.device, where.dtype)[0]
        negative = pad_text([item.negative_text for item in items], length, where.device, where.dtype)[0] if guided else None
        for _ in range(len(items[0].sigmas) - 1):
            timesteps = [self.schedule.timestep(s) for s in schedulers]
            by_expert: dict[int, list[int]] = defaultdict(list)
            for index, t in enumerate(timesteps):
                by_expert[self._expert(float(t))].append(index)
            for expert, indices in by_expert.items():
                predictions = self._predict(experts[expert], [latents[i] for i in indices], [timesteps[i] for i in indices],
                                            text[indices], negative[indices] if negative is not None else None)
                for slot, index in enumerate(indices):
                    noise_pred = predictions[0][slot : slot + 1]
                    if guided:
                        scale = items[index].guidance_scale
                        if expert == 1 and self.boundary_ratio is not None and self.config.guidance_scale_2 is not None:
                            scale = self.config.guidance_scale_2
                        uncond = predictions[1][slot : slot + 1]
                        noise_pred = uncond + scale * (noise_pred - uncond)
                    latents[index] = schedulers[index].step(noise_pred, timesteps[index], latents[index], return_dict=False)[0]
        return self.finish(schedulers, latents)

    def _predict(self, transformer, latents: list[torch.Tensor], timesteps: list[torch.Tensor], text: torch.Tensor,
                 negative: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The transformer's flow prediction for a batch, conditional and (with guidance)
        unconditional: ``(B, C, T, H, W)`` each, in the transformer's dtype. The two branches are
        two forwards, as the pipeline runs them (bit-exact), or one with ``batch_guidance``."""
        dtype = self.places["denoiser"].dtype
        x = torch.cat(latents).to(dtype)
        t = torch.stack([ts.reshape(()) for ts in timesteps]).to(x.device)  # (B,)
        if self.expand_timesteps:  # Wan 2.2 TI2V: one timestep per token (all equal for text to video)
            mask = torch.ones(x.shape[2:], device=x.device)[:, ::2, ::2]
            t = mask.flatten()[None] * t[:, None]  # (B, tokens)

        def forward(hidden: torch.Tensor, timestep: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
            return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=encoder, return_dict=False)[0]

        if negative is None:
            return forward(x, t, text), None
        if not self.config.batch_guidance:
            return forward(x, t, text), forward(x, t, negative)
        out = forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, negative]))
        return out[: x.shape[0]], out[x.shape[0] :]

    # -- VAE ------------------------------------------------------------------------------
    def _normalisation(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``latents_mean`` and ``1 / latents_std`` as the pipeline computes them, in ``like``'s dtype."""
        vae = self.pipe.vae.config
        mean = torch.tensor(vae.latents_mean).view(1, vae.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, vae.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """As ``WanVideoToVideoPipeline`` encodes its input: the VAE's mode, normalised. Frames are
        padded to ``1 + 4k`` by repeating the last one (the encoder reads whole groups)."""
        vae = self.part("vae", "vae")
        frames = self.encoder_frames(frames)
        video = uint8_to_video(self.pipe.video_processor, frames).to(self.places["vae"].device, torch.float32)
        latents = vae.encode(video.to(vae.dtype)).latent_dist.mode().to(torch.float32)
        mean, inverse_std = self._normalisation(latents)
        return ((latents - mean) * inverse_std)[0].cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """As the pipeline decodes: un-normalise, ``vae.decode``, its video processor. The first
        ``context_frames`` latent frames are decoded as causal context and their pixels dropped."""
        vae = self.part("vae", "vae")
        self.check_decode(latents, context_frames)
        z = latents[None].to(self.places["vae"].device, dtype=vae.dtype)
        mean, inverse_std = self._normalisation(z)
        video = vae.decode(z / inverse_std + mean, return_dict=False)[0]
        return self.frames_after(video, context_frames)
