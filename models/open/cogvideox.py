"""CogVideoX 1.0 text to video (diffusers ``CogVideoXPipeline``) behind Tessera's stage interface.

The split, reusing the pipeline's own components and functions:

* **text** — ``CogVideoXPipeline.encode_prompt`` (T5, 226 tokens). CogVideoX attends jointly to
  all 226 text rows, padding included (no mask), so a :class:`TextConditioning` carries them all.
* **denoiser** — ``CogVideoXTransformer3DModel`` with the pipeline's 3D RoPE
  (``_prepare_rotary_positional_embeddings``), ``[uncond, cond]`` guidance in one forward in
  float32 (``use_dynamic_cfg`` as the pipeline computes it), the scheduler's own ``step``, and the
  latents rounded to the transformer's dtype after every step as the pipeline keeps them. The
  pipeline's layout is ``(B, T, C, H, W)``; latents cross stages as ``(C, T, H, W)``, scaled by
  the VAE's ``scaling_factor``. The schedulers are v-prediction DDIM over ``alphas_cumprod``, not
  flow: a level's sigma is the label ``(t + 1) / 1000`` of its timestep ``t`` (1.0 at t = 999,
  0.0 after the last step). CogVideoX-2b's ``CogVideoXDDIMScheduler`` keeps nothing between steps;
  CogVideoX-5b's ``CogVideoXDPMScheduler`` is a stochastic multistep solver whose history (the
  previous x0 prediction) and noise stream (the generator's state) the pipeline keeps in its loop:
  both travel in ``solver_state``; a first step without one seeds the generator from the latents.
* **vae** — ``AutoencoderKLCogVideoX``, ``latents / scaling_factor`` as the pipeline decodes.

Modes: text to video. CogVideoX 1.5 (``patch_size_t`` 2) is refused: its transformer patches
pairs of latent frames, so for an odd latent count (81 frames: 21) ``CogVideoXPipeline.__call__``
adds ``patch_size_t - T % patch_size_t`` latent frames *in front* (``num_frames += 4``), denoises
them with the video (their noise is part of every token's attention) and drops them before
decoding (``latents[:, additional_frames:]``). Faithful serving needs latent frames before the
decoded video's first one, which Tessera's latent time grid (latent frame 0 is pixel frame 0;
plans, windows, decode tiles and given frames all index from it) does not have; an even count
(e.g. 85 frames: 22) has no padding, but then every request of an odd count is one the pipeline
renders differently.
"""

from __future__ import annotations

import hashlib
import math

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
    SolverSchedule,
    card_limits,
    pipeline_defaults,
    uint8_to_video,
    weights_version,
)

MODES = frozenset({"text_to_video"})


class CogVideoXModel(OpenVideoModel):
    """A ``CogVideoXPipeline`` folder, stage by stage (see the module docstring)."""

    family = "cogvideox"
    pipelines = ("CogVideoXPipeline",)

    def __init__(self, *args):
        super().__init__(*args)
        transformer = self.folder.config("transformer")
        self.text_dim = int(transformer["text_embed_dim"])
        self.max_text_tokens = self.config.max_sequence_length
        self.dpm = self.schedule.name == "CogVideoXDPMScheduler"
        if self.pipe is not None:  # the factor its RoPE grid uses, as the pipeline derives it from its VAE
            self.pipe.vae_scale_factor_spatial = self.card.geometry.spatial_factor

    @classmethod
    def read_card(cls, folder: DiffusersFolder, config) -> ModelCard:
        vae, transformer = folder.config("vae"), folder.config("transformer")
        if transformer.get("patch_size_t") is not None:
            raise ValueError(
                f"{folder.path} is CogVideoX 1.5 (patch_size_t {transformer['patch_size_t']}): its pipeline pads an odd "
                "number of latent frames with latent frames in front of the video, denoised with it and dropped before "
                "decoding, which Tessera's latent time grid (latent frame 0 is pixel frame 0) cannot place; only "
                "CogVideoX 1.0 is served"
            )
        spatial = 2 ** (len(vae["block_out_channels"]) - 1)
        temporal = int(vae.get("temporal_compression_ratio", 4))
        defaults = {
            **pipeline_defaults(cls.pipeline_class()),  # height, width and frames: None there, from the transformer's config
            "height": transformer["sample_height"] * spatial, "width": transformer["sample_width"] * spatial,
        }
        p = int(transformer["patch_size"])
        geometry = LatentGeometry(
            latent_channels=int(vae["latent_channels"]), spatial_factor=spatial, temporal_factor=temporal,
            patch_size=(1, p, p), native_window=TimeGrid(temporal).latent_frames(int(transformer["sample_frames"])),
            decode_context=config.decode_context_frames,
        )
        return ModelCard(
            family=cls.family, name=config.name or folder.path.name, version=config.version or weights_version(folder),
            geometry=geometry, limits=card_limits(geometry, config, defaults, config.fps),
            capabilities=ModelCapabilities(modes=MODES, time_tiling=True),
        )

    @classmethod
    def build_schedule(cls, folder: DiffusersFolder, config, geometry: LatentGeometry) -> SolverSchedule:
        """DDIM timesteps labelled ``(t + 1) / T`` (descending to 1/N or so), then 0.0 for the clean end."""
        import diffusers

        _, class_name = folder.component("scheduler")
        scheduler = getattr(diffusers, class_name).from_config(folder.config("scheduler"))
        total = scheduler.config.num_train_timesteps

        def labels(s) -> list[float]:
            return [(int(t) + 1) / total for t in s.timesteps] + [0.0]

        return SolverSchedule(scheduler, config.max_steps, levels_of=labels)

    # -- text -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Each prompt through ``encode_prompt`` on its own; every row is kept (no mask downstream)."""
        self.part("text", "text_encoder")
        out = []
        for prompt in prompts:
            embeds, _ = self.pipe.encode_prompt(
                prompt=[prompt], do_classifier_free_guidance=False, max_sequence_length=self.config.max_sequence_length,
                device=self.places["text"].device,
            )
            out.append(TextConditioning(tokens=embeds[0].float().cpu(), mask=torch.ones(embeds.shape[1], dtype=torch.bool)))
        return out

    # -- denoising ------------------------------------------------------------------------
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """The scheduler's own ``add_noise`` at the label's timestep; at the top, the noise
        scaled by ``init_noise_sigma`` as the pipeline starts."""
        template = self.schedule.template
        if sigma >= self.schedule.top():
            return noise * template.init_noise_sigma
        timestep = torch.tensor([round(sigma * template.config.num_train_timesteps) - 1])
        return template.add_noise(latents[None], noise[None], timestep)[0]

    def check_work(self, item: DenoiseWork) -> None:
        super().check_work(item)
        if item.text.tokens.shape[0] != self.max_text_tokens:
            raise ValueError(f"text must be all {self.max_text_tokens} rows encode_text gives, got {item.text.tokens.shape[0]}")

    def _timestep(self, steps: int, index: int) -> torch.Tensor:
        return self.schedule._at(steps).timesteps[index]

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        where, guided = self.places["denoiser"], self.guided(items[0])
        b = len(items)
        _, t, h, w = items[0].latents.shape
        positions = [list(self.schedule.locate(tuple(item.sigmas), item.solver_state)) for item in items]
        if any(first is not None for _, _, first in positions):
            raise ValueError(f"model {self.card.name}: noise levels must lie on its {self.schedule.name} schedule (from sigmas(steps))")
        texts = ([item.negative_text for item in items] if guided else []) + [item.text for item in items]
        embeds = torch.stack([text.tokens for text in texts]).to(where.device, where.dtype)
        latents = [item.latents.to(where.device, where.dtype).permute(1, 0, 2, 3)[None] for item in items]  # (1, T, C, H, W)
        rope = None
        if self.pipe.transformer.config.use_rotary_positional_embeddings:
            spatial = self.card.geometry.spatial_factor
            rope = self.pipe._prepare_rotary_positional_embeddings(h * spatial, w * spatial, t, where.device)
        history = [self._history(item, where.device) for item in items]
        for _ in range(len(items[0].sigmas) - 1):
            timesteps = torch.stack([self._timestep(steps, index) for steps, index, _ in positions]).to(where.device)
            x = torch.cat(latents)
            if guided:
                x, timesteps = torch.cat([x, x]), torch.cat([timesteps, timesteps])
            noise_pred = self.pipe.transformer(
                hidden_states=x, encoder_hidden_states=embeds, timestep=timesteps, image_rotary_emb=rope, return_dict=False,
            )[0].float()
            for slot, item in enumerate(items):
                steps, index, _ = positions[slot]
                scheduler = self.schedule._at(steps)
                step_t = scheduler.timesteps[index].to(where.device)
                prediction = noise_pred[b + slot : b + slot + 1] if guided else noise_pred[slot : slot + 1]
                if guided:
                    scale = item.guidance_scale
                    if self.config.use_dynamic_cfg:
                        scale = 1 + scale * ((1 - math.cos(math.pi * ((steps - step_t.item()) / steps) ** 5.0)) / 2)
                    uncond = noise_pred[slot : slot + 1]
                    prediction = uncond + scale * (prediction - uncond)
                if self.dpm:
                    generator, old = history[slot]
                    back = scheduler.timesteps[index - 1].to(where.device) if index > 0 else None
                    sample, old = scheduler.step(prediction, old, step_t, back, latents[slot], eta=0.0, generator=generator,
                                                 return_dict=False)
                    history[slot] = (generator, old)
                else:
                    sample = scheduler.step(prediction, step_t, latents[slot], eta=0.0, return_dict=False)[0]
                latents[slot] = sample.to(where.dtype)
                positions[slot][1] = index + 1
        return [
            StepResult(x[0].permute(1, 0, 2, 3).float().cpu(), self._state(steps, index, history[slot]))
            for slot, (x, (steps, index, _)) in enumerate(zip(latents, positions, strict=True))
        ]

    def _history(self, item: DenoiseWork, device: torch.device):
        """CogVideoX-5b's solver: (its noise generator, the previous x0 prediction)."""
        if not self.dpm:
            return None
        generator = torch.Generator(device=device)
        state = item.solver_state or {}
        if "generator" in state:
            generator.set_state(state["generator"])
        else:  # a first step: a noise stream of its own, the same wherever it runs
            generator.manual_seed(int.from_bytes(hashlib.sha256(item.latents.numpy().tobytes()).digest()[:8], "little") >> 1)
        old = state.get("old_pred_original_sample")
        return generator, old.to(device) if old is not None else None

    def _state(self, steps: int, index: int, history) -> dict:
        state = {"steps": steps, "index": index, "first": None, "first_index": None}
        if history is not None:
            generator, old = history
            state.update(generator=generator.get_state(), old_pred_original_sample=old.cpu() if old is not None else None)
        return state

    # -- VAE ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """The VAE's mode times ``scaling_factor`` (as CogVideoX's video-to-video pipeline encodes)."""
        vae = self.part("vae", "vae")
        video = uint8_to_video(self.pipe.video_processor, self.encoder_frames(frames)).to(self.places["vae"].device, vae.dtype)
        return (vae.encode(video).latent_dist.mode() * vae.config.scaling_factor)[0].float().cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """As the pipeline decodes: ``latents / scaling_factor``, ``vae.decode``, its video processor."""
        vae = self.part("vae", "vae")
        self.check_decode(latents, context_frames)
        z = latents[None].to(self.places["vae"].device, self.places["denoiser"].dtype).to(vae.dtype)
        video = vae.decode(1 / vae.config.scaling_factor * z).sample
        return self.frames_after(video, context_frames)
