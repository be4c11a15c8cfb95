"""HunyuanVideo 1.5 text to video (diffusers ``HunyuanVideo15Pipeline``) behind Tessera's stage interface.

The split, reusing the pipeline's own components and functions:

* **text** — ``HunyuanVideo15Pipeline.encode_prompt``: two encoders. Qwen2.5-VL (an MLLM, its
  hidden states two layers from the top, after the chat template's system prompt is cropped off,
  up to 1000 tokens) and ByT5 (the glyphs of any quoted text in the prompt, up to 256 tokens; all
  zeros and masked when there is none). The transformer masks the padding of both (its token
  refiner attends only to real tokens, then it moves the real ones first and zeroes the rest), so a
  :class:`TextConditioning` carries each encoder's real rows only: the MLLM's as ``tokens``, ByT5's
  in ``extra["byt5"]``. The Denoiser pads both back with their masks.
* **denoiser** — ``HunyuanVideo15Transformer3DModel`` on the pipeline's input: the latents
  concatenated with the conditioning latents and mask (zeros for text to video), zero image
  embeddings (the pipeline's ``vision_num_semantic_tokens`` x ``image_embed_dim``; the transformer
  masks them out when they are all zero), the timestep in the latents' dtype. Guidance is the
  folder's own ``guider`` (``ClassifierFreeGuidance``): conditional and unconditional branches as
  two forwards, combined by the guider's ``forward`` with the request's scale (the card's default
  is the guider's ``guidance_scale``; the pipeline's ``__call__`` has no guidance argument). The
  schedule is the pipeline's: ``linspace(1, 0, N + 1)[:-1]`` given to the flow-match Euler
  scheduler, which shifts it by its ``shift``; it keeps no history, so ``solver_state`` stays None.
* **vae** — ``AutoencoderKLHunyuanVideo15`` with the pipeline's ``scaling_factor`` and its
  ``HunyuanVideo15ImageProcessor``. Latents cross stages as the pipeline keeps them,
  ``(C, T, H/16, W/16)`` scaled, float32. Decode tiles: the decoder's causal convolutions and its
  mid-block's causal attention over all earlier frames make a tile decoded after
  ``decode_context_frames`` latent frames of context an approximation of the untiled decode.

The card comes from the folder's JSON configs (``guider/guider_config.json`` included) and the
pipeline's defaults: 50 steps, 121 frames (31 latent frames, the native window), the default size
the pipeline computes for 16:9 at the transformer's ``target_size``.

Modes: text to video, image (one frame) and edit (SDEdit; the input encoded as the image-to-video
pipeline encodes its image: the VAE's mode times ``scaling_factor``). Image to video, extend and
transition need the I2V checkpoint (``HunyuanVideo15ImageToVideoPipeline``: the same input channels
carry the given frames' latents and mask, plus SigLIP image embeddings), which is not served here yet.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from tessera.models.interface import (
    DenoiseWork,
    LatentGeometry,
    ModelCapabilities,
    ModelCard,
    ModelLimits,
    StepResult,
    TextConditioning,
    TimeGrid,
)
from tessera.models.open.common import (
    DiffusersFolder,
    OpenVideoModel,
    SolverSchedule,
    pad_text,
    pipeline_defaults,
    uint8_to_video,
    weights_version,
)

MODES = frozenset({"text_to_video", "image", "edit"})
MLLM_TOKENS = 1000
"""``HunyuanVideo15Pipeline.tokenizer_max_length``: MLLM tokens after the template's crop."""
BYT5_TOKENS = 256
"""``HunyuanVideo15Pipeline.tokenizer_2_max_length``."""
IMAGE_TOKENS = 729
"""``HunyuanVideo15Pipeline.vision_num_semantic_tokens``: SigLIP tokens (zeros for text to video)."""
DEFAULT_ASPECT = (16, 9)
"""``HunyuanVideo15Pipeline.default_aspect_ratio`` (width, height)."""


def real_rows(embeds: torch.Tensor, mask: torch.Tensor) -> TextConditioning:
    """The rows of ``(L, D)`` embeddings whose mask is set, in order, float32 on the CPU (exact
    for bf16 and fp16 encoders)."""
    keep = mask.to(torch.float32).gt(0).cpu()
    rows = embeds.float().cpu()[keep]
    return TextConditioning(tokens=rows, mask=torch.ones(rows.shape[0], dtype=torch.bool))


def guider_config(folder: DiffusersFolder) -> dict:
    """The folder's ``guider`` (``ClassifierFreeGuidance``), which this family supports only with
    guidance on at every step (``start`` 0, ``stop`` 1): the Denoiser does not know a step's index
    within its job."""
    entry = folder.component("guider")
    if entry is None or entry[1] != "ClassifierFreeGuidance":
        raise ValueError(f"{folder.path}: family 'hunyuanvideo15' needs a ClassifierFreeGuidance guider, the folder has {entry}")
    config = json.loads((folder.path / "guider" / "guider_config.json").read_text())
    if float(config.get("start", 0.0)) != 0.0 or float(config.get("stop", 1.0)) != 1.0:
        raise ValueError(f"{folder.path}: guidance limited to part of the schedule (guider start/stop) is not supported")
    return config


class HunyuanVideo15Model(OpenVideoModel):
    """A ``HunyuanVideo15Pipeline`` folder, stage by stage (see the module docstring)."""

    family = "hunyuanvideo15"
    pipelines = ("HunyuanVideo15Pipeline",)
    parts = {"text": ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"), "denoiser": ("transformer",), "vae": ("vae",)}

    def __init__(self, *args):
        super().__init__(*args)
        transformer = self.folder.config("transformer")
        self.text_dim = int(transformer["text_embed_dim"])
        self.text_2_dim = int(transformer["text_embed_2_dim"])
        self.image_dim = int(transformer["image_embed_dim"])
        self.max_text_tokens = MLLM_TOKENS
        self.guider_settings = guider_config(self.folder)

    @classmethod
    def read_card(cls, folder: DiffusersFolder, config) -> ModelCard:
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

        vae, transformer = folder.config("vae"), folder.config("transformer")
        defaults = pipeline_defaults(cls.pipeline_class())
        spatial, temporal = int(vae.get("spatial_compression_ratio", 16)), int(vae.get("temporal_compression_ratio", 4))
        patch, patch_t = int(transformer.get("patch_size", 1)), int(transformer.get("patch_size_t", 1))
        geometry = LatentGeometry(
            latent_channels=int(vae.get("latent_channels", 32)), spatial_factor=spatial, temporal_factor=temporal,
            patch_size=(patch_t, patch, patch), native_window=TimeGrid(temporal).latent_frames(int(defaults["num_frames"])),
            decode_context=config.decode_context_frames,
        )
        processor = HunyuanVideo15ImageProcessor(vae_scale_factor=spatial)
        height, width = processor.calculate_default_height_width(DEFAULT_ASPECT[1], DEFAULT_ASPECT[0], int(transformer.get("target_size", 640)))
        limits = ModelLimits(
            min_side=geometry.size_multiple, max_side=config.max_side, max_image_side=config.max_side,
            min_fps=1.0, max_fps=60.0, default_fps=config.fps, default_width=int(width), default_height=int(height),
            default_steps=int(defaults["num_inference_steps"]), max_steps=config.max_steps,
            default_guidance_scale=float(guider_config(folder).get("guidance_scale", 6.0)), max_prompt_tokens=MLLM_TOKENS,
        )
        return ModelCard(
            family=cls.family, name=config.name or folder.path.name, version=config.version or weights_version(folder),
            geometry=geometry, limits=limits, capabilities=ModelCapabilities(modes=MODES, time_tiling=True),
        )

    @classmethod
    def build_schedule(cls, folder: DiffusersFolder, config, geometry: LatentGeometry) -> SolverSchedule:
        """The pipeline's levels: ``linspace(1, 0, N + 1)[:-1]``, shifted by the scheduler."""
        import diffusers

        _, class_name = folder.component("scheduler")
        scheduler = getattr(diffusers, class_name).from_config(folder.config("scheduler"))
        return SolverSchedule(scheduler, config.max_steps, lambda steps, shape: {"sigmas": np.linspace(1.0, 0.0, steps + 1)[:-1]})

    @classmethod
    def make_pipeline(cls, folder: DiffusersFolder, components: dict, scheduler):
        from diffusers.guiders import ClassifierFreeGuidance

        settings = {k: v for k, v in guider_config(folder).items() if not k.startswith("_")}
        guider = ClassifierFreeGuidance(**settings)
        if components.get("vae") is not None:
            return cls.pipeline_class()(scheduler=scheduler, guider=guider, **components)
        # The pipeline's __init__ reads its VAE's config (latent channels, compression); a stage
        # without the VAE gives it one on the meta device (the config only, no memory), then drops it.
        import accelerate
        from diffusers import AutoencoderKLHunyuanVideo15

        with accelerate.init_empty_weights():
            config_only = AutoencoderKLHunyuanVideo15.from_config(folder.config("vae"))
        pipe = cls.pipeline_class()(scheduler=scheduler, guider=guider, **{**components, "vae": config_only})
        pipe.vae = None
        return pipe

    # -- text -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Each prompt through ``encode_prompt`` on its own (as the pipeline encodes the prompt and
        the negative prompt), keeping each encoder's unmasked rows."""
        self.part("text", "text_encoder")
        out = []
        for prompt in prompts:
            embeds, mask, embeds_2, mask_2 = self.pipe.encode_prompt(
                prompt=[prompt], device=self.places["text"].device, dtype=torch.float32, batch_size=1,
            )
            text = real_rows(embeds[0], mask[0])
            text.extra["byt5"] = real_rows(embeds_2[0], mask_2[0])
            out.append(text)
        return out

    # -- denoising ------------------------------------------------------------------------
    def guided(self, work: DenoiseWork) -> bool:
        """As the guider decides: a negative branch unless the scale makes guidance the identity."""
        if work.negative_text is None:
            return False
        neutral = 0.0 if self.guider_settings.get("use_original_formulation") else 1.0
        return not np.isclose(work.guidance_scale, neutral)

    def check_work(self, item: DenoiseWork) -> None:
        super().check_work(item)
        for text in (item.text, item.negative_text):
            if text is None:
                continue
            byt5 = text.extra.get("byt5")
            if byt5 is None or byt5.tokens.ndim != 2 or byt5.tokens.shape[1] != self.text_2_dim or byt5.tokens.shape[0] > BYT5_TOKENS:
                shape = None if byt5 is None else tuple(byt5.tokens.shape)
                raise ValueError(f"text needs extra['byt5'] of (N <= {BYT5_TOKENS}, {self.text_2_dim}) ByT5 rows, got {shape}")

    def _guider(self, scale: float):
        guider = copy.copy(self.pipe.guider)
        guider.guidance_scale = scale
        return guider

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        where, guided = self.places["denoiser"], self.guided(items[0])
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        schedulers, latents = self.start(items)
        b = len(items)

        def conditioning(texts: list[TextConditioning]) -> dict[str, torch.Tensor]:
            embeds, mask = pad_text(texts, MLLM_TOKENS, where.device, dtype)
            embeds_2, mask_2 = pad_text([t.extra["byt5"] for t in texts], BYT5_TOKENS, where.device, dtype)
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask.to(dtype),
                    "encoder_hidden_states_2": embeds_2, "encoder_attention_mask_2": mask_2.to(dtype)}

        branches = [conditioning([item.text for item in items])]
        if guided:
            branches.append(conditioning([item.negative_text for item in items]))
        image_embeds = torch.zeros(b, IMAGE_TOKENS, self.image_dim, dtype=dtype, device=where.device)
        guiders = [self._guider(item.guidance_scale) for item in items]
        for _ in range(len(items[0].sigmas) - 1):
            x = torch.cat(latents).to(dtype)
            model_input = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x[:, :1])], dim=1)
            timestep = torch.stack([self.schedule.timestep(s).reshape(()) for s in schedulers]).to(where.device, dtype)
            predictions = [
                transformer(hidden_states=model_input, image_embeds=image_embeds, timestep=timestep, return_dict=False, **branch)[0]
                for branch in branches
            ]
            for index in range(b):
                cond = predictions[0][index : index + 1]
                noise_pred = guiders[index].forward(cond, predictions[1][index : index + 1]).pred if guided else cond
                latents[index] = schedulers[index].step(noise_pred, self.schedule.timestep(schedulers[index]), latents[index],
                                                        return_dict=False)[0]
        return self.finish(schedulers, latents)

    # -- VAE ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """As the image-to-video pipeline encodes its image: the VAE's mode times ``scaling_factor``
        (frames padded to ``1 + 4k`` by repeating the last one)."""
        vae = self.part("vae", "vae")
        frames = self.encoder_frames(frames)
        video = uint8_to_video(self.pipe.video_processor, frames).to(self.places["vae"].device, vae.dtype)
        latents = vae.encode(video).latent_dist.mode().to(torch.float32) * vae.config.scaling_factor
        return latents[0].cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """As the pipeline decodes: ``/ scaling_factor`` in the VAE's dtype, ``vae.decode``, its
        processor; the pixels of ``context_frames`` latent frames of context dropped."""
        vae = self.part("vae", "vae")
        self.check_decode(latents, context_frames)
        z = latents[None].to(self.places["vae"].device, vae.dtype) / vae.config.scaling_factor
        video = vae.decode(z, return_dict=False)[0]
        return self.frames_after(video, context_frames)
