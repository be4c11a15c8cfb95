"""Wan 2.1 / 2.2 (diffusers ``WanPipeline``, ``WanImageToVideoPipeline``) behind Tessera's stage interface.

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

Image to video, the way ``WanImageToVideoPipeline`` conditions (its ``prepare_latents`` and
``encode_image`` run on the Decoder, which holds the VAE and, for Wan 2.1 I2V, the CLIP image
encoder: :meth:`WanVideoModel.encode_conditioning`, once per job; the result reaches the
Denoiser by reference, as a :class:`~tessera.models.interface.ModelConditioning`):

* **Wan 2.1 I2V 14B / Wan 2.2 I2V A14B** (``WanImageToVideoPipeline`` folders; transformer
  ``in_channels`` = 2 x z_dim + 4): ``per_frame["condition"]`` ``(4 + z_dim, T, H, W)``, the
  temporal mask (1 on the image's frame) and the VAE latents of the image followed by T-1 black
  frames, concatenated to the latents as extra input channels at every step; Wan 2.1 also has
  ``shared["image_embeds"]``, CLIP's penultimate hidden states of the image (257 x 1280), as
  ``encoder_hidden_states_image`` (Wan 2.2 A14B has no image encoder). These folders serve image
  to video only: their transformers need the extra channels.
* **Wan 2.2 TI2V 5B** (``expand_timesteps``): the image's latent is the clean first latent frame
  (``frames``), its tokens get timestep 0, the other frames are denoised; the folder serves text
  to video too.

The card (geometry, limits, capabilities) comes from the folder's JSON configs and the
pipeline's own ``__call__`` defaults (steps, guidance, size, frames), never from weights.

Modes: text to video, image (one frame) and edit (SDEdit, what ``WanVideoToVideoPipeline``
does with the same transformer) on text-to-video folders; image to video on image-to-video
folders and TI2V. The image is the first frame (``image_is_last_frame`` is refused: the
pipeline's ``last_image`` adds a last frame to a first one, it never stands alone); extend,
transition and loop are refused (no Wan transformer was trained to keep those frames).
"""

from __future__ import annotations

from collections import defaultdict

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
    card_limits,
    first_frame_image,
    pad_text,
    pipeline_defaults,
    prompt_rows,
    require,
    uint8_to_video,
    weights_version,
)

MODES = frozenset({"text_to_video", "image", "edit"})
I2V_MODES = frozenset({"image_to_video"})
"""An image-to-video folder's transformer takes the image's channels at every step: it serves nothing else."""


def i2v_kind(folder: DiffusersFolder) -> str | None:
    """How a Wan folder does image to video: 'channels' (Wan 2.1 I2V, Wan 2.2 I2V A14B: the
    image's latents and mask as extra input channels), 'frames' (Wan 2.2 TI2V: a clean first
    latent frame with timestep 0) or None (text to video only)."""
    transformer = folder.config("transformer" if folder.has("transformer") else "transformer_2")
    if int(transformer["in_channels"]) > int(transformer["out_channels"]):
        return "channels"
    if folder.index.get("expand_timesteps"):
        return "frames"
    return None
# Decode tiles: Wan's causal decoder carries a feature cache through the whole video, so a tile
# decoded after `decode_context_frames` latent frames of context matches the untiled decode only
# approximately; at the real decoder's depth (random weights, 2 res blocks per level) about 24
# frames of context come within 1 uint8 level and 30 match it (WanModelConfig's default: 32).


class WanVideoModel(OpenVideoModel):
    """A ``WanPipeline`` folder, stage by stage (see the module docstring)."""

    family = "wan"
    pipelines = ("WanPipeline", "WanImageToVideoPipeline")
    parts = {
        "text": ("tokenizer", "text_encoder"),
        "denoiser": ("transformer", "transformer_2"),
        "vae": ("vae", "image_encoder", "image_processor"),  # the image's conditioning is made beside the VAE
    }

    def __init__(self, *args):
        super().__init__(*args)
        self.boundary_ratio = self.folder.index.get("boundary_ratio")
        self.expand_timesteps = bool(self.folder.index.get("expand_timesteps", False))
        self.denoiser_component = "transformer" if self.folder.has("transformer") else "transformer_2"
        transformer = self.folder.config(self.denoiser_component)
        self.text_dim = int(transformer["text_dim"])
        self.max_text_tokens = self.config.max_sequence_length
        self.i2v = i2v_kind(self.folder)
        self.keeps_frames = self.i2v == "frames"
        self.condition_channels = int(transformer["in_channels"]) - int(transformer["out_channels"])
        # The pipeline passes image embeddings when its first transformer has an image projection (Wan 2.1 I2V).
        self.image_dim = self.folder.config("transformer").get("image_dim") if self.folder.has("transformer") else None

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
        kind = i2v_kind(folder)
        modes = {"channels": I2V_MODES, "frames": MODES | I2V_MODES, None: MODES}[kind]
        capabilities = ModelCapabilities(
            modes=modes, time_tiling=True, conditioned_modes=I2V_MODES if kind else frozenset(),
            refused_options=frozenset({"image_is_last_frame"}),
        )
        return ModelCard(
            family=cls.family, name=config.name or folder.path.name, version=config.version or weights_version(folder),
            geometry=geometry, limits=limits, capabilities=capabilities,
        )

    @classmethod
    def make_pipeline(cls, folder: DiffusersFolder, components: dict, scheduler):
        """A ``WanPipeline`` of the folder's components (its ``encode_prompt``; diffusers 0.42's
        image-to-video module cleans prompts with ``ftfy`` without checking it is installed), and
        beside it, as ``image_pipeline``, a ``WanImageToVideoPipeline`` sharing its VAE with the
        image encoder: its ``prepare_latents`` and ``encode_image`` make the image's conditioning."""
        from diffusers import WanImageToVideoPipeline, WanPipeline

        image = {name: components.pop(name, None) for name in ("image_encoder", "image_processor")}
        settings = dict(boundary_ratio=folder.index.get("boundary_ratio"), expand_timesteps=bool(folder.index.get("expand_timesteps", False)))
        pipe = WanPipeline(scheduler=scheduler, **settings, **components)
        pipe.image_pipeline = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=components.get("vae"), scheduler=scheduler,
                                                      **image, **settings)
        return pipe

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

    def check_conditioning(self, item: DenoiseWork) -> None:
        """An image-to-video folder's items carry the image's channels ``(4 + z_dim, T, H, W)``
        (and, for Wan 2.1, its CLIP tokens); other folders' items carry none (TI2V: given frames only)."""
        payload = item.conditioning
        if self.i2v != "channels":
            return super().check_conditioning(item)
        if payload is None or "condition" not in payload.per_frame:
            raise ValueError(f"model {self.card.name} ({self.folder.pipeline_class}) denoises only with an image's "
                             "conditioning (mode image_to_video); the work item has none")
        _, t, h, w = item.latents.shape
        condition = payload.per_frame["condition"]
        if tuple(condition.shape) != (self.condition_channels, t, h, w):
            raise ValueError(f"image condition must be {(self.condition_channels, t, h, w)}, got {tuple(condition.shape)}")
        embeds = payload.shared.get("image_embeds")
        if self.image_dim is not None and (embeds is None or embeds.ndim != 2 or embeds.shape[1] != self.image_dim):
            got = None if embeds is None else tuple(embeds.shape)
            raise ValueError(f"model {self.card.name} needs the image's CLIP tokens (N, {self.image_dim}), got {got}")
        if self.image_dim is None and embeds is not None:
            raise ValueError(f"model {self.card.name} has no image projection; the work item carries CLIP tokens")

    def batch_key(self, work: DenoiseWork) -> tuple:
        steps, index, first = self.schedule.locate(tuple(work.sigmas), work.solver_state)
        t = float(self.schedule._at(steps).timesteps[index]) if first is None else first * self.schedule.template.config.num_train_timesteps
        embeds = work.conditioning.shared.get("image_embeds") if work.conditioning is not None else None
        return (*super().batch_key(work), None if embeds is None else tuple(embeds.shape), self._expert(t))

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        where, guided = self.places["denoiser"], self.guided(items[0])
        experts = [self.pipe.transformer, self.pipe.transformer_2]
        schedulers, latents = self.start(items)
        length = self.config.max_sequence_length
        text = pad_text([item.text for item in items], length, where.device, where.dtype)[0]
        negative = pad_text([item.negative_text for item in items], length, where.device, where.dtype)[0] if guided else None
        image = self._image_inputs(items)
        for _ in range(len(items[0].sigmas) - 1):
            timesteps = [self.schedule.timestep(s) for s in schedulers]
            by_expert: dict[int, list[int]] = defaultdict(list)
            for index, t in enumerate(timesteps):
                by_expert[self._expert(float(t))].append(index)
            for expert, indices in by_expert.items():
                predictions = self._predict(experts[expert], [latents[i] for i in indices], [timesteps[i] for i in indices],
                                            text[indices], negative[indices] if negative is not None else None,
                                            {name: value[indices] for name, value in image.items()})
                for slot, index in enumerate(indices):
                    noise_pred = predictions[0][slot : slot + 1]
                    if guided:
                        scale = items[index].guidance_scale
                        if expert == 1 and self.boundary_ratio is not None and self.config.guidance_scale_2 is not None:
                            scale = self.config.guidance_scale_2
                        uncond = predictions[1][slot : slot + 1]
                        noise_pred = uncond + scale * (noise_pred - uncond)
                    latents[index] = schedulers[index].step(noise_pred, timesteps[index], latents[index], return_dict=False)[0]
                    latents[index] = self.keep_frames(items[index], latents[index])
        return self.finish(schedulers, latents)

    def _image_inputs(self, items: list[DenoiseWork]) -> dict[str, torch.Tensor]:
        """The batch's image conditioning on the denoiser's device: ``condition`` ``(B, 4 + z_dim, T, H, W)``
        float32 (I2V folders), ``image_embeds`` ``(B, N, image_dim)`` in the transformer's dtype
        (Wan 2.1 I2V), ``keep`` ``(B, T, H, W)`` float32, 0 on given frames (TI2V)."""
        where = self.places["denoiser"]
        out: dict[str, torch.Tensor] = {}
        if self.i2v == "channels":
            out["condition"] = torch.stack([item.conditioning.per_frame["condition"] for item in items]).to(where.device, torch.float32)
            if self.image_dim is not None:
                out["image_embeds"] = torch.stack([item.conditioning.shared["image_embeds"] for item in items]).to(where.device, where.dtype)
        if self.expand_timesteps:  # the pipelines' timestep mask: 0 on the given first frame, 1 elsewhere
            _, t, h, w = items[0].latents.shape
            keep = torch.ones(len(items), t, h, w, dtype=torch.float32)
            for slot, item in enumerate(items):
                if item.frames is not None:
                    keep[slot, item.frames.mask.bool()] = 0
            out["keep"] = keep.to(where.device)
        return out

    def _predict(self, transformer, latents: list[torch.Tensor], timesteps: list[torch.Tensor], text: torch.Tensor,
                 negative: torch.Tensor | None, image: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The transformer's flow prediction for a batch, conditional and (with guidance)
        unconditional: ``(B, C, T, H, W)`` each, in the transformer's dtype. The two branches are
        two forwards, as the pipeline runs them (bit-exact), or one with ``batch_guidance``.
        ``image``: :meth:`_image_inputs` of the batch (empty for text to video)."""
        dtype = self.places["denoiser"].dtype
        x = torch.cat(latents)  # (B, C, T, H, W) float32
        if "condition" in image:  # I2V: the image's mask and latents as extra channels, as the pipeline concatenates them
            x = torch.cat([x, image["condition"]], dim=1)
        x = x.to(dtype)
        t = torch.stack([ts.reshape(()) for ts in timesteps]).to(x.device)  # (B,)
        if self.expand_timesteps:  # Wan 2.2 TI2V: one timestep per token, 0 on a given first frame
            t = image["keep"][:, :, ::2, ::2].flatten(1) * t[:, None]  # (B, tokens)
        embeds = image.get("image_embeds")

        def forward(hidden: torch.Tensor, timestep: torch.Tensor, encoder: torch.Tensor, encoder_image) -> torch.Tensor:
            return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=encoder,
                               encoder_hidden_states_image=encoder_image, return_dict=False)[0]

        if negative is None:
            return forward(x, t, text, embeds), None
        if not self.config.batch_guidance:
            return forward(x, t, text, embeds), forward(x, t, negative, embeds)
        both = None if embeds is None else torch.cat([embeds, embeds])
        out = forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, negative]), both)
        return out[: x.shape[0]], out[x.shape[0] :]

    # -- VAE ------------------------------------------------------------------------------
    def _normalisation(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``latents_mean`` and ``1 / latents_std`` as the pipeline computes them, in ``like``'s dtype."""
        vae = self.pipe.vae.config
        mean = torch.tensor(vae.latents_mean).view(1, vae.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, vae.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    @torch.no_grad()
    def encode_conditioning(self, request: ConditioningRequest) -> ModelConditioning:
        """The image's conditioning as ``WanImageToVideoPipeline.__call__`` makes it: the image
        through its video processor and ``prepare_latents`` (the VAE's mode of the image followed
        by T-1 black frames, normalised, with the temporal mask in front; TI2V: the image's latent
        alone), and for Wan 2.1 I2V through ``encode_image`` (CLIP). Part "vae"."""
        vae = self.part("vae", "vae")
        if self.i2v is None:
            raise ValueError(f"model {self.card.name} ({self.folder.pipeline_class}) has no image to video")
        image = first_frame_image(request, self.card, "WanImageToVideoPipeline")
        device = self.places["vae"].device
        pixels = self.pipe.video_processor.preprocess(image, height=request.height, width=request.width).to(device, torch.float32)
        z, (t, h, w) = vae.config.z_dim, self.card.geometry.latent_shape(request.num_frames, request.height, request.width)[1:]
        i2v = self.pipe.image_pipeline
        out = i2v.prepare_latents(pixels, 1, z, request.height, request.width, request.num_frames, torch.float32, device,
                                  None, torch.zeros(1, z, t, h, w))  # latents given: no noise is drawn here
        if self.i2v == "frames":  # TI2V: (1, z, 1, h, w), the clean first latent frame
            known = torch.zeros(z, t, h, w)
            known[:, :1] = out[1][0].float().cpu()
            mask = torch.zeros(t)
            mask[0] = 1
            return ModelConditioning(frames=FrameCondition(known, mask))
        conditioning = ModelConditioning(per_frame={"condition": out[1][0].float().cpu()})  # (4 + z, T, h, w)
        if self.image_dim is not None:
            encoder = require("vae", i2v.image_encoder)
            conditioning.shared["image_embeds"] = i2v.encode_image(image, encoder.device)[0].float().cpu()  # (N, image_dim)
        return conditioning

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
