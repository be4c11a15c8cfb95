"""LTX-Video text to video (diffusers ``LTXPipeline``) behind Tessera's stage interface.

The split, reusing the pipeline's own components and functions:

* **text** — ``LTXPipeline.encode_prompt`` (T5). The transformer masks the padding tokens, so a
  :class:`TextConditioning` carries the prompt's real rows only and the Denoiser pads them back
  with the mask (masked rows contribute exactly nothing).
* **denoiser** — ``LTXVideoTransformer3DModel`` on the pipeline's packed tokens
  (``_pack_latents``; the latents cross stages unpacked, ``(128, T, H/32, W/32)``, normalised
  with the VAE's ``latents_mean``/``latents_std`` and ``scaling_factor``), guidance as the
  pipeline runs it (``[uncond, cond]`` in one forward, in float32, ``guidance_rescale``), the
  RoPE interpolation from the video's frame rate, and the scheduler's own ``step``. LTX's
  flow-match Euler scheduler keeps no history, so ``solver_state`` stays None and the scheduler
  is rebuilt from each item's own levels.
* **schedule** — dynamic shifting: the pipeline shifts its levels by ``mu`` computed from the
  video's token count, so the levels depend on the size; :meth:`sigmas_for` takes the latent
  shape (``sigmas(steps)`` is the schedule at the card's default size).
* **vae** — ``AutoencoderKLLTXVideo`` with the pipeline's normalisation, its timestep-conditioned
  decode where the VAE has one (LTX 0.9.1+; the decode noise from ``decode_seed``) and its video
  processor.

Image to video, as ``LTXImageToVideoPipeline`` does it with the same folders (LTX-Video's
checkpoints serve both pipelines): the image's latent, sampled from the VAE's distribution with
the pipeline's generator (``prepare_latents``, seeded with the job's seed) and normalised as that
pipeline normalises it, is the clean first latent frame (:meth:`LTXVideoModel.encode_conditioning`
on the Decoder, once per job; ``ModelConditioning.frames``). Its tokens get timestep 0 (the
pipeline's ``conditioning_mask``) and only the other frames are stepped.

Modes: text to video, image (one frame), edit (SDEdit) and image to video with the image as the
first frame (``image_is_last_frame`` is refused: the pipeline conditions on the first frame only).
"""

from __future__ import annotations

import numpy as np
import torch

from tessera.models.interface import (
    ConditioningRequest,
    DenoiseWork,
    FrameCondition,
    LatentGeometry,
    ModelCapabilities,
    ModelCard,
    ModelConditioning,
    StepResult,
    TextConditioning,
    TimeGrid,
)
from tessera.models.open.common import (
    DiffusersFolder,
    OpenVideoModel,
    SolverSchedule,
    card_limits,
    first_frame_image,
    pad_text,
    pipeline_defaults,
    prompt_rows,
    uint8_to_video,
    weights_version,
)

MODES = frozenset({"text_to_video", "image", "edit", "image_to_video"})


def compression(vae: dict) -> tuple[int, int]:
    """(spatial, temporal) compression of an ``AutoencoderKLLTXVideo`` config, as its ``__init__`` computes them."""
    scaling = sum(bool(x) for x in vae.get("spatio_temporal_scaling", (True, True, True, False)))
    spatial = vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * 2**scaling
    temporal = vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * 2**scaling
    return int(spatial), int(temporal)


class LTXVideoModel(OpenVideoModel):
    """An ``LTXPipeline`` folder, stage by stage (see the module docstring)."""

    family = "ltx"
    pipelines = ("LTXPipeline", "LTXImageToVideoPipeline")
    keeps_frames = True  # given frames' tokens get timestep 0, as the pipeline's conditioning_mask gives them

    def __init__(self, *args):
        super().__init__(*args)
        transformer = self.folder.config("transformer")
        self.patch = int(transformer.get("patch_size", 1))
        self.patch_t = int(transformer.get("patch_size_t", 1))
        self.text_dim = int(transformer["caption_channels"])
        self.max_text_tokens = self.config.max_sequence_length
        self.temporal_ratio = self.card.geometry.temporal_factor
        self.spatial_ratio = self.card.geometry.spatial_factor

    @classmethod
    def read_card(cls, folder: DiffusersFolder, config) -> ModelCard:
        vae, transformer = folder.config("vae"), folder.config("transformer")
        defaults = pipeline_defaults(cls.pipeline_class())
        spatial, temporal = compression(vae)
        patch, patch_t = int(transformer.get("patch_size", 1)), int(transformer.get("patch_size_t", 1))
        geometry = LatentGeometry(
            latent_channels=int(vae["latent_channels"]), spatial_factor=spatial, temporal_factor=temporal,
            patch_size=(patch_t, patch, patch),
            native_window=TimeGrid(temporal).latent_frames(int(defaults["num_frames"])),
            decode_context=config.decode_context_frames,
        )
        limits = card_limits(geometry, config, defaults, float(defaults["frame_rate"]))
        return ModelCard(
            family=cls.family, name=config.name or folder.path.name, version=config.version or weights_version(folder),
            geometry=geometry, limits=limits,
            capabilities=ModelCapabilities(modes=MODES, time_tiling=True, conditioned_modes=frozenset({"image_to_video"}),
                                           refused_options=frozenset({"image_is_last_frame"})),
        )

    @classmethod
    def make_pipeline(cls, folder: DiffusersFolder, components: dict, scheduler):
        """An ``LTXImageToVideoPipeline`` for every folder: ``LTXPipeline``'s components and
        ``encode_prompt``, and the ``prepare_latents`` that conditions on an image."""
        from diffusers import LTXImageToVideoPipeline

        return LTXImageToVideoPipeline(scheduler=scheduler, **components)

    @classmethod
    def build_schedule(cls, folder: DiffusersFolder, config, geometry: LatentGeometry) -> SolverSchedule:
        """The pipeline's levels: ``linspace(1, 1/N, N)`` shifted by ``mu`` of the video's token count."""
        import diffusers
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        _, class_name = folder.component("scheduler")
        scheduler = getattr(diffusers, class_name).from_config(folder.config("scheduler"))
        defaults = pipeline_defaults(cls.pipeline_class())
        default_shape = geometry.latent_shape(int(defaults["num_frames"]), int(defaults["height"]), int(defaults["width"]))

        def timesteps_for(steps: int, latent_shape: tuple | None) -> dict:
            _, t, h, w = latent_shape or default_shape
            mu = calculate_shift(
                t * h * w, scheduler.config.get("base_image_seq_len", 256), scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15),
            )
            return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

        return SolverSchedule(scheduler, config.max_steps, timesteps_for)

    # -- text -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Each prompt through ``encode_prompt`` on its own, keeping its unmasked rows."""
        self.part("text", "text_encoder")
        out = []
        for prompt in prompts:
            embeds, mask, _, _ = self.pipe.encode_prompt(
                prompt=[prompt], do_classifier_free_guidance=False, max_sequence_length=self.config.max_sequence_length,
                device=self.places["text"].device,
            )
            out.append(prompt_rows(embeds[0], mask[0]))
        return out

    # -- denoising ------------------------------------------------------------------------
    def sigmas_for(self, steps: int, latent_shape: tuple[int, int, int, int]) -> list[float]:
        return list(self.schedule.sigmas(steps, tuple(latent_shape)))

    def batch_key(self, work: DenoiseWork) -> tuple:
        # The RoPE interpolation depends on the frame rate; given frames make the timestep per token.
        return (*super().batch_key(work), float(work.fps), work.frames is not None)

    def token_mask(self, item: DenoiseWork) -> torch.Tensor:
        """``(1, tokens)`` float32, 1 on the tokens of given frames: the pipeline's packed ``conditioning_mask``."""
        _, t, h, w = item.latents.shape
        mask = item.frames.mask.float().view(1, 1, t, 1, 1).expand(1, 1, t, h, w)
        return self.pipe._pack_latents(mask, self.patch, self.patch_t).squeeze(-1)

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        from diffusers.pipelines.ltx.pipeline_ltx import rescale_noise_cfg

        where, guided = self.places["denoiser"], self.guided(items[0])
        schedulers, latents = self.start(items)
        b = len(items)
        _, t, h, w = items[0].latents.shape
        texts = [item.text for item in items]
        if guided:  # the pipeline's order: [uncond, cond]
            texts = [item.negative_text for item in items] + texts
        embeds, mask = pad_text(texts, self.config.max_sequence_length, where.device, where.dtype)
        rope = (self.temporal_ratio / items[0].fps, self.spatial_ratio, self.spatial_ratio)
        given = items[0].frames is not None  # the same for the whole batch (batch_key)
        masks = torch.cat([self.token_mask(item) for item in items]).to(where.device) if given else None  # (B, tokens)
        for _ in range(len(items[0].sigmas) - 1):
            timesteps = torch.stack([self.schedule.timestep(s).reshape(()) for s in schedulers]).to(where.device)
            packed = torch.cat([self.pipe._pack_latents(x, self.patch, self.patch_t) for x in latents])
            if guided:
                packed, timesteps = torch.cat([packed, packed]), torch.cat([timesteps, timesteps])
            if given:  # the image's tokens at timestep 0, the rest at t (the pipeline's conditioning_mask)
                timesteps = timesteps.unsqueeze(-1) * (1 - (torch.cat([masks, masks]) if guided else masks))
            noise_pred = self.pipe.transformer(
                hidden_states=packed.to(where.dtype), encoder_hidden_states=embeds, timestep=timesteps,
                encoder_attention_mask=mask, num_frames=t, height=h, width=w, rope_interpolation_scale=rope,
                return_dict=False,
            )[0].float()
            for index, item in enumerate(items):
                prediction = noise_pred[b + index : b + index + 1] if guided else noise_pred[index : index + 1]
                if guided:
                    uncond = noise_pred[index : index + 1]
                    text_pred = prediction
                    prediction = uncond + item.guidance_scale * (text_pred - uncond)
                    if self.config.guidance_rescale > 0:
                        prediction = rescale_noise_cfg(prediction, text_pred, guidance_rescale=self.config.guidance_rescale)
                scheduler = schedulers[index]
                sample = self.pipe._pack_latents(latents[index], self.patch, self.patch_t)
                sample = scheduler.step(prediction, self.schedule.timestep(scheduler), sample, return_dict=False)[0]
                latents[index] = self.pipe._unpack_latents(sample, t // self.patch_t, h // self.patch, w // self.patch,
                                                           self.patch, self.patch_t)
                latents[index] = self.keep_frames(item, latents[index])
        return self.finish(schedulers, latents)

    # -- VAE ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_conditioning(self, request: ConditioningRequest) -> ModelConditioning:
        """The image's latent as ``LTXImageToVideoPipeline.__call__`` makes it with
        ``generator=torch.Generator().manual_seed(seed)``: its video processor, then its
        ``prepare_latents`` (the VAE's latent distribution sampled with that generator,
        normalised), whose first latent frame is the image's. Part "vae"."""
        vae = self.part("vae", "vae")
        image = first_frame_image(request, self.card, "LTXImageToVideoPipeline")
        device = self.places["vae"].device
        pixels = self.pipe.video_processor.preprocess(image, height=request.height, width=request.width).to(device, vae.dtype)
        generator = torch.Generator().manual_seed(request.seed)
        c = self.card.geometry.latent_channels
        _, t, h, w = self.card.geometry.latent_shape(request.num_frames, request.height, request.width)
        packed, _ = self.pipe.prepare_latents(pixels, 1, c, request.height, request.width, request.num_frames, torch.float32,
                                              device, generator)
        # The pipeline's latents are image * mask + noise * (1 - mask): the first frame is the image's latent.
        # prepare_latents packs with the transformer's patch (1 where it is not loaded, as here): unpack alike.
        ps, pt = self.pipe.transformer_spatial_patch_size, self.pipe.transformer_temporal_patch_size
        latents = self.pipe._unpack_latents(packed, t // pt, h // ps, w // ps, ps, pt)[0].float().cpu()  # (C, T, h, w)
        known = torch.zeros(c, t, h, w)
        known[:, :1] = latents[:, :1]
        mask = torch.zeros(t)
        mask[0] = 1
        return ModelConditioning(frames=FrameCondition(known, mask))

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """The VAE's mode, normalised as the pipelines normalise (frames padded to ``1 + 8k``)."""
        vae = self.part("vae", "vae")
        frames = self.encoder_frames(frames)
        video = uint8_to_video(self.pipe.video_processor, frames).to(self.places["vae"].device, vae.dtype)
        latents = vae.encode(video).latent_dist.mode().to(torch.float32)
        latents = self.pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        return latents[0].cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """As the pipeline decodes: un-normalise, the transformer's dtype, timestep-conditioned
        decode where the VAE has it, its video processor; context frames' pixels dropped."""
        vae = self.part("vae", "vae")
        self.check_decode(latents, context_frames)
        device = self.places["vae"].device
        z = latents[None].to(device, torch.float32)
        z = self.pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        z = z.to(self.places["denoiser"].dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            generator = torch.Generator(device=device).manual_seed(self.config.decode_seed)
            noise = torch.randn(z.shape, generator=generator, device=device, dtype=z.dtype)
            scale = self.config.decode_timestep if self.config.decode_noise_scale is None else self.config.decode_noise_scale
            timestep = torch.tensor([self.config.decode_timestep], device=device, dtype=z.dtype)
            scale = torch.tensor([scale], device=device, dtype=z.dtype)[:, None, None, None, None]
            z = (1 - scale) * z + scale * noise
        video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]
        return self.frames_after(video, context_frames)
