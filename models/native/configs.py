"""Registry of named sizes of the native model family.

A :class:`NativeConfig` fully describes one member: the VAE, the DiT, the latent geometry and
what the deployed model accepts (limits). ``tiny`` is the shipped default, trained by
``tessera.models.train``; the others are realistic sizes for GPU benchmarks (random weights
unless a weights folder is given). A trained checkpoint stores its full config in
``config.json`` next to the safetensors (with the measured latent statistics).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.models.interface import LatentGeometry, ModelLimits


class VAEConfig(BaseModel):
    """Causal 3D convolutional autoencoder (see ``vae.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent_channels: int = Field(16, ge=1, description="Channels of the latent video.")
    temporal_factor: int = Field(4, ge=1, description="Pixel frames per latent frame after the first.")
    patch_size: int = Field(
        4, ge=1, description="Pixels per side folded into channels at the input (space-to-depth) before any conv."
    )
    channels: tuple[int, ...] = Field(
        (64, 128),
        min_length=1,
        description="Channels of each resolution stage; every stage after the first halves height and width.",
    )
    blocks_per_stage: int = Field(2, ge=1, description="Residual blocks per stage (the first one mixes time).")
    time_kernel: int = Field(3, ge=1, description="Temporal kernel of the time-mixing convolutions (causal).")
    full_rate_encoder_stages: int = Field(
        0,
        ge=0,
        description="Encoder stages (from the first, highest-resolution one) that run at the pixel frame rate "
        "before time is folded into channels; 0 (v1): folded at the input.",
    )
    full_rate_decoder_stages: int = Field(
        0,
        ge=0,
        description="Decoder stages (from the last, highest-resolution one) that run at the pixel frame rate after "
        "time is unfolded from channels; 0 (v1): each latent frame's pixel frames come out of the output "
        "convolution as channels.",
    )
    latent_mean: tuple[float, ...] | None = Field(
        None, description="Per-channel mean of the latents over training data (set by training; None: 0)."
    )
    latent_std: tuple[float, ...] | None = Field(
        None, description="Per-channel std of the latents over training data (set by training; None: 1)."
    )

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channels) - 1)

    @model_validator(mode="after")
    def _check_full_rate_stages(self) -> "VAEConfig":
        for name in ("full_rate_encoder_stages", "full_rate_decoder_stages"):
            if getattr(self, name) > len(self.channels) - 1:
                raise ValueError(f"{name} must be at most {len(self.channels) - 1} (stages - 1), got {getattr(self, name)}")
        return self

    @property
    def decoder_context_frames(self) -> int:
        """Latent frames of temporal receptive field of the decoder (one time-mixing block per stage).

        A latent-rate stage looks ``time_kernel - 1`` latent frames back; the full-rate stages
        together look ``(time_kernel - 1) * full_rate_decoder_stages`` pixel frames back, which
        from a group's first pixel frame reaches that many groups back, rounded up."""
        back = self.time_kernel - 1
        latent_rate = len(self.channels) - self.full_rate_decoder_stages
        return back * latent_rate + -(-back * self.full_rate_decoder_stages // self.temporal_factor)


class DiTConfig(BaseModel):
    """Spacetime-patch diffusion transformer (see ``dit.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(192, ge=8, description="Token width.")
    depth: int = Field(6, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (self and cross).")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of hidden_size.")
    patch_size: tuple[int, int, int] = Field((1, 2, 2), description="Latent cells per token along (t, h, w).")
    text_dim: int = Field(384, ge=1, description="Width of the text encoder's token embeddings.")
    rope_theta: float = Field(10_000.0, gt=0, description="Base period of the rotary position embedding.")
    rope_split: tuple[int, int, int] | None = Field(
        None,
        description="Head channels given to the (t, h, w) rotary axes (each even, summing to the head "
        "size); None splits evenly with the remainder to time.",
    )
    video_start_embedding: bool = Field(
        False,
        description="Condition on whether the window's first latent frame is the video's first (an "
        "embedding added to the timestep's): where objects enter, a window that starts a video and one "
        "that starts mid-video have different priors (models/train/README_v2.md).",
    )


class TextEncoderConfig(BaseModel):
    """Which sentence encoder produces the cross-attention tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("all-MiniLM-L6-v2", description="Name recorded in the model card.")
    dim: int = Field(384, ge=1, description="Width of its token embeddings.")
    max_tokens: int = Field(128, ge=8, description="Longest caption read, in tokens; longer ones are truncated.")


class SamplerConfig(BaseModel):
    """Defaults of the flow-matching sampler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shift: float = Field(
        1.0, gt=0, description="Timestep shift of the schedule (sigma' = s*sigma / (1 + (s-1)*sigma)); >1 spends more steps at high noise."
    )
    default_steps: int = Field(25, ge=1, description="Sampler steps when a request names none.")
    max_steps: int = Field(100, ge=1, description="Most sampler steps a request may ask for.")
    default_guidance_scale: float = Field(4.0, ge=1.0, description="Classifier-free guidance scale by default.")


class NativeConfig(BaseModel):
    """One member of the native family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Variant name in the registry.")
    vae: VAEConfig = Field(default_factory=VAEConfig, description="Video autoencoder.")
    dit: DiTConfig = Field(default_factory=DiTConfig, description="Denoising transformer.")
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig, description="Text encoder.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Sampler defaults.")
    native_window: int = Field(8, ge=1, description="Latent frames the denoiser was trained on per window.")
    native_fps: float = Field(8.0, gt=0, description="Frame rate the model was trained at most.")
    min_fps: float = Field(6.0, gt=0, description="Lowest fps the model was trained and evaluated at.")
    max_fps: float = Field(12.0, gt=0, description="Highest fps the model was trained and evaluated at.")
    default_width: int = Field(64, ge=1, description="Width of a video when a request names no size, in pixels.")
    default_height: int = Field(64, ge=1, description="Height of a video when a request names no size, in pixels.")
    min_side: int = Field(32, ge=1, description="Smallest width or height served, in pixels.")
    max_side: int = Field(256, ge=1, description="Largest width or height of a video, in pixels.")
    max_image_side: int = Field(256, ge=1, description="Largest width or height of a single image, in pixels.")

    def geometry(self) -> LatentGeometry:
        return LatentGeometry(
            latent_channels=self.vae.latent_channels,
            spatial_factor=self.vae.spatial_factor,
            temporal_factor=self.vae.temporal_factor,
            patch_size=self.dit.patch_size,
            native_window=self.native_window,
            decode_context=self.vae.decoder_context_frames,
        )

    def limits(self) -> ModelLimits:
        return ModelLimits(
            min_side=self.min_side,
            max_side=self.max_side,
            max_image_side=self.max_image_side,
            min_fps=self.min_fps,
            max_fps=self.max_fps,
            default_fps=self.native_fps,
            default_width=self.default_width,
            default_height=self.default_height,
            default_steps=self.sampler.default_steps,
            max_steps=self.sampler.max_steps,
            default_guidance_scale=self.sampler.default_guidance_scale,
            max_prompt_tokens=self.text.max_tokens,
        )


VARIANTS: dict[str, NativeConfig] = {
    # Shipped default: trains on 2 CPU cores in about two hours (see models/train).
    "tiny": NativeConfig(
        name="tiny",
        vae=VAEConfig(latent_channels=8),
        dit=DiTConfig(hidden_size=160, depth=5, num_heads=4),
        sampler=SamplerConfig(shift=3.0),  # matches the training noise levels (train_dit --sigma-shift)
    ),
    # v2 candidate (models/train/README_v2.md): the VAE decoder's last stage runs at the pixel
    # frame rate so objects keep moving inside latent groups; same latent shape as tiny.
    "tiny-v2": NativeConfig(
        name="tiny-v2",
        vae=VAEConfig(latent_channels=8, full_rate_decoder_stages=1),
        dit=DiTConfig(hidden_size=160, depth=5, num_heads=4, video_start_embedding=True),
        sampler=SamplerConfig(shift=3.0),
    ),
    # Realistic sizes for GPU benchmarks; no shipped weights.
    "1b": NativeConfig(
        name="1b",
        vae=VAEConfig(latent_channels=16, patch_size=2, channels=(128, 256, 512), blocks_per_stage=2),
        dit=DiTConfig(hidden_size=1536, depth=24, num_heads=24, patch_size=(1, 2, 2)),
        native_window=21,
        native_fps=16.0,
        min_fps=8.0,
        max_fps=24.0,
        max_side=1920,
        default_width=1280,
        default_height=720,
        max_image_side=2048,
        min_side=64,
        sampler=SamplerConfig(shift=5.0, default_steps=40, max_steps=100, default_guidance_scale=5.0),
    ),
}


def get_config(variant: str) -> NativeConfig:
    """The registered config of a named variant."""
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown native variant {variant!r}; known: {sorted(VARIANTS)}") from None
