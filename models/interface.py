"""The stage interface every model family implements.

Tessera splits generation into stages that run in different Ray Serve
deployments: text conditioning (PromptExpander), denoising (Denoiser) and the
video autoencoder (Decoder). A deployment loads only the parts of a model its
stage needs (``load_model(config, parts={"denoiser"})``), so a 14B transformer
never sits in the decoder's memory and the VAE never sits in the denoiser's.

Everything that crosses a deployment boundary is plain data defined here:
tensors on the CPU, floats, strings. Shapes are written ``(C, T, H, W)`` for
one video's latents (no batch axis): channels, latent frames, latent height,
latent width.

Conventions shared by all families:

* Noise levels ``sigma`` run from 1.0 (pure noise) down to 0.0 (clean), and a
  family's ``sigmas(steps)`` returns ``steps + 1`` descending values ending at
  0.0. Rectified-flow families interpolate ``x = (1 - sigma) * x0 + sigma * noise``.
* Frames are ``uint8`` tensors ``(T, H, W, 3)`` in RGB. The VAE is causal in time: latent
  frame 0 is pixel frame 0 alone, every later latent frame a group of ``temporal_factor``
  frames; :class:`TimeGrid` is the one place that arithmetic is written.
* Given (conditioning) frames are put back into latents with :func:`keep_given`
  (:meth:`FrameCondition.apply`), bit-exact, wherever that is done.
* Initial noise comes from :func:`frame_noise`, seeded per latent frame, so any
  time window of a long video can draw its own noise without materialising
  the whole video's noise, and the result does not depend on how the video
  is tiled.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Literal

import torch

Part = Literal["text", "denoiser", "vae"]
ALL_PARTS: frozenset[str] = frozenset({"text", "denoiser", "vae"})


@dataclasses.dataclass(frozen=True)
class TimeGrid:
    """Pixel frames <-> latent frames of a causal video VAE with temporal factor ``f``.

    Latent frame 0 encodes pixel frame 0 alone; latent frame ``k >= 1`` encodes the *group* of
    pixel frames ``1 + f*(k-1) .. f*k``. So ``L`` latent frames decode to ``1 + f*(L-1)`` pixel
    frames. Two lengths land on this grid:

    * a *start*: ``1 + f*k`` frames from the beginning of a video, ending on a latent boundary
      (a whole video, an input that starts it, the first shot);
    * *groups*: ``f*k`` frames placed after latent frame 0 (a bridge, later shots, a
      group-aligned input, a loop's circle).

    The one home of this arithmetic (the planner, the mode layout and rules, and model code ask
    it). Plain integers in and out.
    """

    temporal_factor: int

    def __post_init__(self) -> None:
        if self.temporal_factor < 1:
            raise ValueError(f"temporal_factor must be >= 1, got {self.temporal_factor}")

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames needed to produce at least ``num_frames`` pixel frames: ``1 + ceil((n-1)/f)``."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        return 1 + math.ceil((num_frames - 1) / self.temporal_factor)

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames the VAE decodes from ``latent_frames`` latent frames: ``1 + f*(L-1)``."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        return 1 + self.temporal_factor * (latent_frames - 1)

    def pixel_start(self, latent: int) -> int:
        """First pixel frame of latent frame ``latent`` (equally: the pixel frames that latent
        frames ``[0, latent)`` decode to; 0 for 0)."""
        if latent < 0:
            raise ValueError(f"latent frame must be >= 0, got {latent}")
        return 0 if latent == 0 else 1 + self.temporal_factor * (latent - 1)

    def pixel_range(self, start: int, stop: int | None = None) -> tuple[int, int]:
        """Pixel frames ``[first, end)`` of latent frames ``[start, stop)`` (default: latent frame ``start`` alone)."""
        stop = start + 1 if stop is None else stop
        if stop < start:
            raise ValueError(f"need start <= stop, got {start}, {stop}")
        return self.pixel_start(start), self.pixel_start(stop)

    def floor_start(self, frames: int) -> int:
        """Largest start ``1 + f*k <= frames`` (``frames >= 1``): a video's head cut to its last whole group."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        return 1 + self.temporal_factor * ((frames - 1) // self.temporal_factor)

    def ceil_start(self, frames: int) -> int:
        """Smallest start ``1 + f*k >= frames`` (at least 1): ``frames`` padded to a latent boundary."""
        return 1 + self.temporal_factor * math.ceil(max(frames - 1, 0) / self.temporal_factor)

    def round_start(self, frames: int, min_groups: int = 1) -> int:
        """The start ``1 + f*k`` nearest ``frames``, with ``k >= min_groups``."""
        return 1 + self.round_groups(frames - 1, min_groups)

    def groups(self, frames: int) -> int:
        """Latent frames that encode ``frames`` pixel frames as whole groups: ``ceil(frames / f)``."""
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        return math.ceil(frames / self.temporal_factor)

    def round_groups(self, frames: int, min_groups: int = 1) -> int:
        """Whole groups ``f*k`` nearest ``frames``, with ``k >= min_groups``."""
        return self.temporal_factor * max(min_groups, round(frames / self.temporal_factor))


@dataclasses.dataclass(frozen=True)
class LatentGeometry:
    """How pixels map to latents and latents to transformer tokens."""

    latent_channels: int
    spatial_factor: int
    """Pixels per latent cell along height and width (the VAE's downsampling)."""
    temporal_factor: int
    """Pixel frames per latent frame after the first (causal VAE: the first frame is encoded alone)."""
    patch_size: tuple[int, int, int]
    """Latent cells per transformer token along (t, h, w)."""
    native_window: int
    """Latent frames the denoiser was trained on; long videos are tiled in windows of this length."""
    decode_context: int
    """Latent frames of causal context the VAE decoder needs before a time tile so that decoding
    the tile reproduces the untiled decode (its temporal receptive field, in latent frames)."""

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this many pixels."""
        return self.spatial_factor * max(self.patch_size[1], self.patch_size[2])

    @property
    def time_grid(self) -> TimeGrid:
        """The causal VAE's pixel <-> latent frame arithmetic (see :class:`TimeGrid`)."""
        return TimeGrid(self.temporal_factor)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames needed to produce at least ``num_frames`` pixel frames."""
        return self.time_grid.latent_frames(num_frames)

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames the VAE decodes from ``latent_frames`` latent frames."""
        return self.time_grid.pixel_frames(latent_frames)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of the latents for a video of the given pixel size."""
        return (
            self.latent_channels,
            self.latent_frames(num_frames),
            height // self.spatial_factor,
            width // self.spatial_factor,
        )


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """What a deployed model accepts; the gateway validates requests against these."""

    min_side: int
    max_side: int
    """Largest width or height of a video, in pixels."""
    max_image_side: int
    """Largest width or height of a single image (one-frame video), in pixels."""
    min_fps: float
    max_fps: float
    default_fps: float
    default_width: int
    default_height: int
    default_steps: int
    max_steps: int
    default_guidance_scale: float
    max_prompt_tokens: int
    """Longest text the text encoder reads; longer captions are truncated by the encoder."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Identity of a loaded model, recorded in every job's manifest."""

    family: str
    name: str
    version: str
    """Content hash of the weights, so two manifests name the same model only if the weights match."""
    geometry: LatentGeometry
    limits: ModelLimits
    capabilities: ModelCapabilities = dataclasses.field(default_factory=lambda: ModelCapabilities())
    """What the family can serve (modes, time tiling); the gateway checks requests against it."""

    def require_mode(self, mode: str) -> None:
        """Raise :class:`UnsupportedModeError` naming this model and ``mode`` unless the card lists it."""
        if mode not in self.capabilities.modes:
            supported = ", ".join(m for m in MODES if m in self.capabilities.modes)
            raise UnsupportedModeError(f"model {self.name} does not support {mode} (it supports {supported})")

    def require_option(self, option: str, mode: str) -> None:
        """Raise :class:`UnsupportedModeError` when the card refuses ``option`` (a request field of ``mode``)."""
        if option in self.capabilities.refused_options:
            raise UnsupportedModeError(f"model {self.name} does not support {option} with {mode}")


MODES: tuple[str, ...] = (
    "text_to_video", "image", "image_to_video", "extend", "edit", "transition", "loop", "multi_shot",
)
"""Every generation mode, by the name the job spec uses (``serving.jobs.spec.Mode`` values)."""


@dataclasses.dataclass(frozen=True)
class ModelCapabilities:
    """What a family can serve beyond its geometry and limits. The frame-count rule is the
    geometry's :class:`TimeGrid` (``1 + temporal_factor * k`` frames: Wan 4k+1, LTX 8k+1)."""

    modes: frozenset[str] = frozenset(MODES)
    """Generation modes it serves. Modes that keep given frames (image to video, extend,
    transition) need a denoiser trained with frame-mask conditioning."""
    time_tiling: bool = True
    """Whether a video longer than ``geometry.native_window`` latent frames may be denoised in
    fused overlapping windows; False: one window, at most ``max_latent_frames`` long."""
    max_latent_frames: int | None = None
    """Longest video in latent frames the family renders (None: no limit of its own)."""
    conditioned_modes: frozenset[str] = frozenset()
    """Modes whose given images condition the model through the family's own payload
    (:meth:`VideoModel.encode_conditioning`, computed once per job by the stage that holds the
    VAE) instead of frame masks alone; e.g. Wan image to video: CLIP image tokens and the VAE
    latents of the image followed by black frames, as extra input channels."""
    refused_options: frozenset[str] = frozenset()
    """Request options of modes it serves that it cannot honour (e.g. ``image_is_last_frame``
    where the pipeline conditions on the first frame only); refused like an unlisted mode."""


class UnsupportedModeError(ValueError):
    """A request asks for a mode the model's card does not list (gRPC ``FAILED_PRECONDITION``)."""


@dataclasses.dataclass
class TextConditioning:
    """A prompt encoded for cross-attention."""

    tokens: torch.Tensor  # (N, D) float
    mask: torch.Tensor  # (N,) bool, True where a token is real
    extra: dict[str, TextConditioning] = dataclasses.field(default_factory=dict)
    """The same prompt through the family's other text encoders, by names the family chooses, for
    families that condition on several (HunyuanVideo 1.5: ByT5's glyph embeddings beside the
    MLLM's); empty with one encoder. Serving hashes, ships and caches them with ``tokens``."""


@dataclasses.dataclass
class FrameCondition:
    """Latent frames given by the user (image, video to extend, loop ends...), kept clean.

    ``mask[t] == 1`` marks latent frame ``t`` as given: its content is ``latents[:, t]``
    and the sampler never changes it. Other frames of ``latents`` are ignored.
    """

    latents: torch.Tensor  # (C, T, H, W)
    mask: torch.Tensor  # (T,) float in {0, 1}

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` ``(C, T, H, W)`` with the given frames put back exactly (see :func:`keep_given`)."""
        return keep_given(latents, self.latents, self.mask)


def keep_given(latents: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``latents`` with every frame where ``mask == 1`` replaced by the same frame of ``known``.

    The one home of "put the given frames back" (frame-mask conditioning): bit-exact, in
    ``latents``' dtype and on its device. ``latents`` and ``known`` are ``(..., C, T, H, W)``
    (one video, or a batch ``(B, C, T, H, W)``) and ``mask`` is ``(..., T)`` in {0, 1} (or
    bool); the time axis is the third from the end. Returns a new tensor.
    """
    if known.shape[-4:] != latents.shape[-4:]:
        raise ValueError(f"given latents {tuple(known.shape)} do not match latents {tuple(latents.shape)}")
    if mask.shape[-1] != latents.shape[-3]:
        raise ValueError(f"mask of {mask.shape[-1]} frames for latents of {latents.shape[-3]} frames")
    frame_mask = mask.to(latents.device).bool()[..., None, :, None, None]  # (..., 1, T, 1, 1)
    return torch.where(frame_mask, known.to(latents.device, latents.dtype), latents)


@dataclasses.dataclass
class ConditioningRequest:
    """What a family's own conditioning is computed from (:meth:`VideoModel.encode_conditioning`):
    the job's given images by the pixel frame each stands at, and the video they condition."""

    images: dict[int, torch.Tensor]
    """Pixel frame index -> ``uint8 (H, W, 3)`` image at the video's size (0: the first frame)."""
    num_frames: int
    height: int
    width: int
    seed: int
    """The job's seed, for a family whose pipeline draws from its generator while conditioning
    (LTX-Video samples the image's latent distribution)."""


@dataclasses.dataclass
class ModelConditioning:
    """A family's own conditioning of one job beyond text, made once per job by the stage that
    holds the VAE (:meth:`VideoModel.encode_conditioning`) and carried to the Denoiser by
    reference, like the text. The family chooses the names and what they mean; serving only
    slices it per time window (:meth:`window`), hashes, ships and caches it.

    * ``frames``: latent frames kept clean (frame-mask conditioning), whole video; the sampler
      starts from them and keeps them, and the family's step may treat them specially (LTX-Video
      and Wan 2.2 TI2V give their tokens timestep 0);
    * ``per_frame``: tensors laid out ``(C', T, H, W)`` along the video's latent frames, sliced
      with the latents (Wan's VAE latents of the image and black frames, with their mask);
    * ``shared``: tensors of the whole job, sent to every window as they are (Wan's CLIP image tokens).
    """

    frames: FrameCondition | None = None
    per_frame: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    shared: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def window(self, start: int, stop: int) -> ModelConditioning:
        """The conditioning of latent frames ``[start, stop)`` (frames none when none is given there)."""
        frames = None
        if self.frames is not None and bool(self.frames.mask[start:stop].any()):
            frames = FrameCondition(self.frames.latents[:, start:stop].contiguous(), self.frames.mask[start:stop].contiguous())
        per_frame = {name: tensor[..., start:stop, :, :].contiguous() for name, tensor in self.per_frame.items()}
        return ModelConditioning(frames=frames, per_frame=per_frame, shared=dict(self.shared))


@dataclasses.dataclass
class DenoiseWork:
    """One time window of one video to advance through one or more noise levels.

    The denoiser is stateless: everything it needs travels in this record, so any
    replica can advance any window of any job at any step.
    """

    latents: torch.Tensor  # (C, T, H, W) at noise level sigmas[0]
    sigmas: tuple[float, ...]
    """Noise levels to pass through, descending; advances ``len(sigmas) - 1`` sampler steps."""
    text: TextConditioning
    negative_text: TextConditioning | None
    """Unconditional branch of classifier-free guidance (the encoded negative prompt, or empty prompt)."""
    guidance_scale: float
    fps: float
    frames: FrameCondition | None = None
    sampler: Literal["euler", "heun"] = "euler"
    solver_state: dict[str, Any] | None = None
    """A multistep solver's history at ``sigmas[0]`` (UniPC, DPM-Solver keep past model outputs),
    exactly as :meth:`VideoModel.step_with_state` returned it for the previous step of this item:
    plain data (CPU tensors, numbers, lists). None: no history (the first step, a family whose
    sampler has none, or a resumed job). Its tensors are ``(C, T, H, W)`` like the latents, so
    windows that are fused can fuse them with the same weights."""
    conditioning: ModelConditioning | None = None
    """The family's own conditioning of this window (:meth:`ModelConditioning.window`), for modes
    the card lists in ``conditioned_modes``; None otherwise."""
    starts_video: bool = True
    """The window's first latent frame is the video's first (False: a time tile that starts
    mid-video). A family may condition on it (the native tiny model: where objects enter)."""


@dataclasses.dataclass
class StepResult:
    """One work item advanced: its new latents and the solver state to send with its next step."""

    latents: torch.Tensor  # (C, T, H, W) at sigmas[-1]
    solver_state: dict[str, Any] | None = None


class VideoModel(abc.ABC):
    """One model family, split into the stages Tessera's deployments run.

    Methods of a part that was not loaded raise :class:`PartNotLoadedError`.
    """

    card: ModelCard

    @property
    def geometry(self) -> LatentGeometry:
        return self.card.geometry

    # -- prompt expansion and text conditioning (part "text") -------------------------
    @abc.abstractmethod
    def expand(self, prompt: str, character: str = "") -> str:
        """Deterministic built-in re-captioning: a short prompt to the detailed caption style
        this family was trained on, carrying a shared ``character`` description (multi-shot)
        when one is given. Needs no weights."""

    @abc.abstractmethod
    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        """Encode captions for cross-attention (part "text")."""

    # -- denoising (part "denoiser") ---------------------------------------------------
    @abc.abstractmethod
    def sigmas(self, steps: int) -> list[float]:
        """The sampler's noise schedule: ``steps + 1`` descending levels from 1.0 to 0.0. Needs no weights."""

    def sigmas_for(self, steps: int, latent_shape: tuple[int, int, int, int]) -> list[float]:
        """:meth:`sigmas` for a video whose latents are ``latent_shape`` ``(C, T, H, W)``: a family
        whose schedule depends on the video's size (dynamic shifting, as LTX-Video's pipeline
        computes it from the token count) overrides this. Needs no weights."""
        return self.sigmas(steps)

    @abc.abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Noise clean latents to level ``sigma`` (SDEdit, training). Needs no weights."""

    @abc.abstractmethod
    def step(self, work: list[DenoiseWork]) -> list[torch.Tensor]:
        """Advance each work item from ``sigmas[0]`` to ``sigmas[-1]`` (part "denoiser").

        Returns the new latents ``(C, T, H, W)`` of each item, in order. Given frames
        (``work.frames``) come back exactly as given.

        Items may come from different jobs: each has its own noise levels and guidance scale.
        Items with equal :meth:`batch_key` and the same number of noise levels run as one
        batched forward per sampler step (the Denoiser's step batcher relies on this), and each
        item's result equals its result alone up to the floating-point effects of batching.
        """

    def batch_key(self, work: DenoiseWork) -> tuple:
        """Items with equal keys can share one batched forward: same latent shape, sampler, and
        whether classifier-free guidance runs (it doubles the batch). Needs no weights."""
        guided = work.negative_text is not None and work.guidance_scale != 1.0
        return (tuple(work.latents.shape), work.sampler, guided)

    def max_batch_items(self, work: DenoiseWork) -> int | None:
        """How many items with ``work``'s batch key fit in one forward on this replica (the
        family's memory model); None: no bound of the model's own (the config's limit applies)."""
        return None

    def step_with_state(self, work: list[DenoiseWork]) -> list[StepResult]:
        """:meth:`step`, also returning each item's solver state after its last level.

        A family with a multistep solver overrides this; the caller sends ``solver_state`` with
        the item's next step (on any replica) so the trajectory is the one the family's own
        sampler takes. The default (stateless samplers) returns no state."""
        return [StepResult(latents) for latents in self.step(work)]

    # -- video autoencoder (part "vae") ------------------------------------------------
    def encode_conditioning(self, request: ConditioningRequest) -> ModelConditioning:
        """The family's own conditioning of a job from its given images (part "vae"), for the modes
        its card lists in ``capabilities.conditioned_modes``. Families that condition by frame
        masks alone (the given frames encoded with :meth:`encode_video`) list none."""
        raise NotImplementedError(f"model {self.card.name} conditions on given frames by frame masks only")

    @abc.abstractmethod
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 frames to latents ``(C, T', H', W')`` (part "vae")."""

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """Latents ``(C, T, H, W)`` to uint8 frames ``(T_out, H*s, W*s, 3)`` (part "vae").

        The first ``context_frames`` latent frames are temporal context only (the tail of
        the previous tile when decoding in time tiles): their pixels are not returned, and
        the frames that are returned match an untiled decode of the whole video within
        the family's documented tolerance.
        """


class PartNotLoadedError(RuntimeError):
    """A stage method was called on a model loaded without that part."""


def check_denoise_work(item: DenoiseWork, latent_channels: int, patch_size: tuple[int, int, int]) -> None:
    """Raise ``ValueError`` naming the first problem of a work item, for a family with this many
    latent channels and this patch: latents ``(C, T, H, W)`` on the patch grid, at least two
    non-increasing noise levels in [0, 1], guidance >= 0, fps > 0, a known sampler, and a frame
    condition of the latents' shape. (Text conditioning is checked by each family.)"""
    pt, ph, pw = patch_size
    if item.latents.ndim != 4 or item.latents.shape[0] != latent_channels:
        raise ValueError(f"latents must be ({latent_channels}, T, H, W), got {tuple(item.latents.shape)}")
    _, t, h, w = item.latents.shape
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent grid {(t, h, w)} must be divisible by the patch size {(pt, ph, pw)}")
    if len(item.sigmas) < 2 or any(b > a for a, b in zip(item.sigmas, item.sigmas[1:])):
        raise ValueError(f"sigmas must be at least two non-increasing levels, got {item.sigmas}")
    if not all(0.0 <= s <= 1.0 for s in item.sigmas):
        raise ValueError(f"sigmas must lie in [0, 1], got {item.sigmas}")
    if item.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {item.guidance_scale}")
    if item.fps <= 0:
        raise ValueError(f"fps must be > 0, got {item.fps}")
    if item.sampler not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {item.sampler!r}")
    if item.frames is not None:
        if tuple(item.frames.latents.shape) != tuple(item.latents.shape):
            raise ValueError(f"frame condition latents {tuple(item.frames.latents.shape)} differ from {tuple(item.latents.shape)}")
        if tuple(item.frames.mask.shape) != (t,):
            raise ValueError(f"frame condition mask must be ({t},), got {tuple(item.frames.mask.shape)}")


def splitmix64(value: int) -> int:
    """A well-mixed 64-bit hash of an integer (SplitMix64), to derive per-frame seeds."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def frame_noise(seed: int, start: int, stop: int, frame_shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal noise for latent frames ``start .. stop - 1`` of a video.

    Each latent frame draws from its own generator seeded by ``(seed, frame index)``,
    so the noise of a frame is the same whichever window asks for it.

    Returns ``(C, stop - start, H, W)`` float32 on the CPU, for ``frame_shape = (C, H, W)``.
    """
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got start={start} stop={stop}")
    frames = []
    for index in range(start, stop):
        generator = torch.Generator().manual_seed(splitmix64(splitmix64(seed) ^ index) & 0x7FFFFFFFFFFFFFFF)
        frames.append(torch.randn(frame_shape, generator=generator, dtype=torch.float32))
    return torch.stack(frames, dim=1)
