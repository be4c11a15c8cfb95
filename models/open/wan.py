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

import inspect
from collections import defaultdict

import torch

from tessera.models.config import WanModelConfig
from tessera.models.interface import (
    DenoiseWork,
    LatentGeometry,
    ModelCapabilities,
    ModelCard,
    ModelLimits,
    StepResult,
    TextConditioning,
    TimeGrid,
    VideoModel,
)
from tessera.models.open.common import (
    DiffusersFolder,
    Placement,
    SolverSchedule,
    flow_add_noise,
    load_component,
    placement,
    require,
    uint8_to_video,
    video_to_uint8,
    weights_version,
)

PIPELINES = ("WanPipeline",)
MODES = frozenset({"text_to_video", "image", "edit"})
# Decode tiles: Wan's causal decoder carries a feature cache through the whole video, so a tile
# decoded after `decode_context_frames` latent frames of context matches the untiled decode only
# approximately; at the real decoder's depth (random weights, 2 res blocks per level) about 24
# frames of context come within 1 uint8 level and 30 match it (WanModelConfig's default: 32).

def pipeline_defaults(pipeline_class) -> dict:
    """The pipeline's own ``__call__`` defaults (steps, guidance, size, frames, text length)."""
    return {
        name: p.default
        for name, p in inspect.signature(pipeline_class.__call__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def read_card(folder: DiffusersFolder, config: WanModelConfig) -> ModelCard:
    """The model card from the folder's JSON configs alone (no weights)."""
    from diffusers import WanPipeline

    if folder.pipeline_class not in PIPELINES:
        raise ValueError(f"{folder.path} holds a {folder.pipeline_class}; family 'wan' serves {', '.join(PIPELINES)}")
    vae = folder.config("vae")
    expert = "transformer" if folder.has("transformer") else "transformer_2"
    transformer = folder.config(expert)
    defaults = pipeline_defaults(WanPipeline)
    temporal = int(vae.get("scale_factor_temporal") or 4)
    spatial = int(vae.get("scale_factor_spatial") or 8)
    patch = tuple(int(p) for p in transformer["patch_size"])
    geometry = LatentGeometry(
        latent_channels=int(vae["z_dim"]),
        spatial_factor=spatial,
        temporal_factor=temporal,
        patch_size=patch,  # type: ignore[arg-type]
        native_window=TimeGrid(temporal).latent_frames(int(defaults["num_frames"])),
        decode_context=config.decode_context_frames,
    )
    limits = ModelLimits(
        min_side=geometry.size_multiple,
        max_side=config.max_side,
        max_image_side=config.max_side,
        min_fps=1.0,
        max_fps=60.0,
        default_fps=config.fps,
        default_width=int(defaults["width"]),
        default_height=int(defaults["height"]),
        default_steps=int(defaults["num_inference_steps"]),
        max_steps=config.max_steps,
        default_guidance_scale=float(defaults["guidance_scale"]),
        max_prompt_tokens=config.max_sequence_length,
    )
    capabilities = ModelCapabilities(modes=MODES, time_tiling=True)
    name = config.name or folder.path.name
    version = config.version or weights_version(folder)
    return ModelCard(family="wan", name=name, version=version, geometry=geometry, limits=limits, capabilities=capabilities)


def build_scheduler(folder: DiffusersFolder, config: WanModelConfig):
    import diffusers

    library, class_name = folder.component("scheduler") or ("diffusers", "UniPCMultistepScheduler")
    cls = getattr(diffusers, class_name)
    overrides = {"flow_shift": config.flow_shift} if config.flow_shift is not None else {}
    return cls.from_config(folder.config("scheduler"), **overrides)


class WanVideoModel(VideoModel):
    """A ``WanPipeline`` folder, stage by stage (see the module docstring)."""

    def __init__(self, config: WanModelConfig, folder: DiffusersFolder, card: ModelCard, schedule: SolverSchedule,
                 pipe, places: dict[str, Placement]):
        self.config = config
        self.folder = folder
        self.card = card
        self.schedule = schedule
        self.pipe = pipe
        self.places = places
        self.boundary_ratio = folder.index.get("boundary_ratio")
        self.expand_timesteps = bool(folder.index.get("expand_timesteps", False))
        transformer = folder.config("transformer" if folder.has("transformer") else "transformer_2")
        self.text_dim = int(transformer["text_dim"])
        self.in_channels = int(transformer["in_channels"])
        self.patch_size = tuple(int(p) for p in transformer["patch_size"])

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, config: WanModelConfig, parts: frozenset[str]) -> WanVideoModel:
        from diffusers import WanPipeline

        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        folder = DiffusersFolder(config.path)
        card = read_card(folder, config)
        scheduler = build_scheduler(folder, config)
        schedule = SolverSchedule(scheduler, config.max_steps)
        places = {
            "denoiser": placement(config.device, config.dtype),
            "text": placement(config.text_encoder_device or config.device, config.text_encoder_dtype or config.dtype),
            "vae": placement(config.vae_device or config.device, config.vae_dtype or config.dtype),
        }
        components: dict = {"tokenizer": None, "text_encoder": None, "vae": None, "transformer": None, "transformer_2": None}
        if "text" in parts:
            components["tokenizer"] = load_component(folder, "tokenizer", None)
            components["text_encoder"] = load_component(folder, "text_encoder", places["text"])
        if "denoiser" in parts:
            for name in ("transformer", "transformer_2"):
                if folder.has(name):
                    components[name] = load_component(folder, name, places["denoiser"])
        if "vae" in parts:
            components["vae"] = load_component(folder, "vae", places["vae"])
            if config.vae_tiling:
                components["vae"].enable_tiling()
        pipe = None
        if parts:
            pipe = WanPipeline(
                scheduler=scheduler, boundary_ratio=folder.index.get("boundary_ratio"),
                expand_timesteps=bool(folder.index.get("expand_timesteps", False)), **components,
            )
            if components["vae"] is None:  # the processor's factor, as the pipeline sets it from its VAE
                from diffusers.video_processor import VideoProcessor

                pipe.video_processor = VideoProcessor(vae_scale_factor=card.geometry.spatial_factor)
        return cls(config, folder, card, schedule, pipe, places)

    def _part(self, part: str, component: str):
        return require(part, getattr(self.pipe, component, None) if self.pipe is not None else None)

    # -- text -----------------------------------------------------------------------------
    def expand(self, prompt: str, character: str = "") -> str:
        """Open families have no built-in captioner: the prompt as written (with the shared
        character description in front, for multi-shot)."""
        return f"{character.strip()} {prompt}".strip() if character.strip() else prompt

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Each prompt through ``encode_prompt`` on its own (as the pipeline encodes the prompt
        and the negative prompt), keeping the prompt's rows (the rest are the pipeline's zeros)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        self._part("text", "text_encoder")
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
            n = int(mask.gt(0).sum())
            out.append(TextConditioning(tokens=embeds[0, :n].float().cpu(), mask=torch.ones(n, dtype=torch.bool)))
        return out

    # -- denoising ------------------------------------------------------------------------
    def sigmas(self, steps: int) -> list[float]:
        return list(self.schedule.sigmas(steps))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return flow_add_noise(latents, noise, sigma, self.schedule.top())

    def _guided(self, work: DenoiseWork) -> bool:
        return work.negative_text is not None and work.guidance_scale > 1.0

    def _expert(self, timestep: float) -> int:
        """0: ``transformer`` (Wan 2.1, or 2.2's high-noise expert); 1: ``transformer_2``."""
        if self.boundary_ratio is None:
            return 0 if self.folder.has("transformer") else 1
        boundary = self.boundary_ratio * self.schedule.template.config.num_train_timesteps
        return 0 if timestep >= boundary else 1

    def batch_key(self, work: DenoiseWork) -> tuple:
        steps, index, first = self.schedule.locate(tuple(work.sigmas), work.solver_state)
        t = float(self.schedule._at(steps).timesteps[index]) if first is None else first * self.schedule.template.config.num_train_timesteps
        return (tuple(work.latents.shape), self._guided(work), self._expert(t))

    def check_work(self, item: DenoiseWork) -> None:
        c, (pt, ph, pw) = self.in_channels, self.patch_size
        if item.latents.ndim != 4 or item.latents.shape[0] != c:
            raise ValueError(f"latents must be ({c}, T, H, W), got {tuple(item.latents.shape)}")
        _, t, h, w = item.latents.shape
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent grid {(t, h, w)} must be divisible by the patch size {(pt, ph, pw)}")
        if len(item.sigmas) < 2 or any(b > a for a, b in zip(item.sigmas, item.sigmas[1:])):
            raise ValueError(f"sigmas must be at least two non-increasing levels, got {item.sigmas}")
        if item.frames is not None:
            raise ValueError(
                f"model {self.card.name} ({self.folder.pipeline_class}) cannot keep given frames: its transformer was "
                "not trained with frame conditioning (modes image_to_video, extend, transition)"
            )
        if item.sampler != "euler":
            raise ValueError(f"model {self.card.name} samples with its own {self.schedule.name}; sampler {item.sampler!r} is not available")
        if item.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {item.guidance_scale}")
        for text in (item.text, item.negative_text):
            if text is not None and (text.tokens.ndim != 2 or text.tokens.shape[1] != self.text_dim):
                raise ValueError(f"text tokens must be (N, {self.text_dim}), got {tuple(text.tokens.shape)}")
            if text is not None and text.tokens.shape[0] > self.config.max_sequence_length:
                raise ValueError(f"text of {text.tokens.shape[0]} tokens is longer than max_sequence_length {self.config.max_sequence_length}")

    def _padded(self, texts: list[TextConditioning], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(B, max_sequence_length, D)``: the prompts' rows, then zeros, as ``encode_prompt`` makes them."""
        out = torch.zeros(len(texts), self.config.max_sequence_length, self.text_dim, dtype=torch.float32)
        for index, text in enumerate(texts):
            rows = text.tokens[text.mask.bool()] if text.mask is not None else text.tokens
            out[index, : rows.shape[0]] = rows.float()
        return out.to(device, dtype)

    def step(self, work: list[DenoiseWork]) -> list[torch.Tensor]:
        """The latents of :meth:`step_with_state`. A caller that drops the state restarts the
        multistep solver's history at every call (valid, but not the pipeline's trajectory)."""
        return [result.latents for result in self.step_with_state(work)]

    @torch.no_grad()
    def step_with_state(self, work: list[DenoiseWork]) -> list[StepResult]:
        self._part("denoiser", "transformer" if self.folder.has("transformer") else "transformer_2")
        for item in work:
            self.check_work(item)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(work):
            groups[(self.batch_key(item), len(item.sigmas))].append(index)
        results: list[StepResult | None] = [None] * len(work)
        for (key, _), indices in groups.items():
            for index, result in zip(indices, self._advance([work[i] for i in indices], guided=key[1]), strict=True):
                results[index] = result
        return results  # type: ignore[return-value]

    def _advance(self, items: list[DenoiseWork], guided: bool) -> list[StepResult]:
        where = self.places["denoiser"]
        experts = [self.pipe.transformer, self.pipe.transformer_2]
        schedulers = [self.schedule.start(tuple(item.sigmas), item.solver_state) for item in items]
        for scheduler in schedulers:
            SolverSchedule.to_device(scheduler, where.device)
        latents = [item.latents.to(where.device, torch.float32)[None] for item in items]  # (1, C, T, H, W) each
        text = self._padded([item.text for item in items], where.device, where.dtype)
        negative = self._padded([item.negative_text for item in items], where.device, where.dtype) if guided else None
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
        return [
            StepResult(latents=x[0].float().cpu(), solver_state=SolverSchedule.state(s))
            for x, s in zip(latents, schedulers, strict=True)
        ]

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
        vae = self._part("vae", "vae")
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        s = self.card.geometry.spatial_factor
        if frames.shape[1] % s or frames.shape[2] % s:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be a multiple of {s}")
        missing = self.geometry.time_grid.ceil_start(frames.shape[0]) - frames.shape[0]
        if missing:
            frames = torch.cat([frames, frames[-1:].expand(missing, -1, -1, -1)])
        video = uint8_to_video(self.pipe.video_processor, frames).to(self.places["vae"].device, torch.float32)
        latents = vae.encode(video.to(vae.dtype)).latent_dist.mode().to(torch.float32)
        mean, inverse_std = self._normalisation(latents)
        return ((latents - mean) * inverse_std)[0].cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """As the pipeline decodes: un-normalise, ``vae.decode``, its video processor. The first
        ``context_frames`` latent frames are decoded as causal context and their pixels dropped."""
        vae = self._part("vae", "vae")
        c = self.card.geometry.latent_channels
        if latents.ndim != 4 or latents.shape[0] != c:
            raise ValueError(f"latents must be ({c}, T, H, W), got {tuple(latents.shape)}")
        if not 0 <= context_frames < latents.shape[1]:
            raise ValueError(f"context_frames must be in [0, {latents.shape[1]}), got {context_frames}")
        z = latents[None].to(self.places["vae"].device, dtype=vae.dtype)
        mean, inverse_std = self._normalisation(z)
        video = vae.decode(z / inverse_std + mean, return_dict=False)[0]
        frames = video_to_uint8(self.pipe.video_processor, video)
        return frames[self.geometry.time_grid.pixel_start(context_frames):]
