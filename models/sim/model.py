"""``SimVideoModel``: the simulated accelerator, a benchmarking instrument (never a default).

It stands in for a GPU running Wan 2.1 so that scheduling, batching and autoscaling can be
measured with 16-32 "GPU" replicas on a 2-core machine. Everything around it runs for real
(Ray, Serve, the scheduler, fusion of windows, decode tiles, H.264, S3); only the accelerator is
simulated:

* A denoiser call (:meth:`step`) and a VAE call (:meth:`decode_latents`, :meth:`encode_video`)
  *sleep* in the calling thread (the engines run model calls in a worker thread, ``ModelThread``)
  for the time the cost model (:mod:`tessera.models.sim.cost`, calibrated on published H100/H200
  figures of Wan 2.1 1.3B and 14B) predicts, times ``SimModelConfig.time_scale``. Sleeping uses
  no CPU, so many replicas share a few cores.
* Items with the same :meth:`batch_key` and number of noise levels run as **one** forward per
  sampler step, whose cost is that of the whole group (a fixed cost per forward plus each item's
  tokens, linear and quadratic, doubled under guidance): batching pays the fixed cost once.
  :meth:`max_batch_items` is the memory model's bound for such items on an ``gpu_memory_gb``
  GPU (capped by ``max_batch_items`` of the config); a batch beyond it raises
  :class:`SimulatedOutOfMemoryError`, as a GPU would.
* Outputs are deterministic and of the right shapes, made with a few cheap tensor ops (the CPU
  work must not dominate at 16 replicas on 2 cores). The denoiser is an exact rectified-flow
  model of a clean target ``x0`` that depends on the text conditioning and the frame index
  inside the window: ``v = (x - x0) / sigma``, so a step from ``sigma`` to ``sigma'`` is
  ``x0 + (sigma' / sigma) (x - x0)`` whatever the sampler and the number of steps, and the last
  step lands on ``x0``. Given frames come back exactly. The decoder maps latent channels 0-2 to
  RGB (nearest-neighbour upsampling x8, each latent frame repeated over its pixel frames); the
  encoder is its rough inverse. Text conditioning is a 4 x 8 tensor hashed from the prompt (no
  text encoder), and :meth:`expand` returns the prompt.

No weights, no downloads: the card's version is a hash of the sim config. The pictures are a
moving colour pattern per prompt; functional tests of what a video looks like use the real
tiny model, never this one.
"""

from __future__ import annotations

import collections
import hashlib
import math
import time
from collections import defaultdict

import torch

from tessera.models.config import SimModelConfig
from tessera.models.interface import (
    DenoiseWork,
    LatentGeometry,
    ModelCard,
    ModelLimits,
    PartNotLoadedError,
    TextConditioning,
    VideoModel,
    check_denoise_work,
)
from tessera.models.native import sampler
from tessera.models.sim.cost import VARIANTS, CostModel

IMPLEMENTATION = "sim-1"
"""Bumped when the fake math changes, so the card's version changes with the outputs."""
TEXT_TOKENS, TEXT_DIM = 4, 8
"""Shape of the hashed text conditioning: small, it crosses deployments with every window."""
SAMPLE_SHIFT = 5.0
"""Timestep shift of the noise schedule (Wan2.1's default ``sample_shift`` for text to video)."""
DECODE_CONTEXT = 2
"""Latent frames of context the Decoder sends before a time tile. The sim decoder is per frame,
so any context is exact; the context is decoded (and its cost paid) like a causal VAE's."""
TARGET_CACHE = 4
"""Clean targets kept per replica (by text and shape): the windows of one job share one."""


class SimulatedOutOfMemoryError(RuntimeError):
    """A batch that would not fit the simulated GPU's memory (see ``cost.CostModel.forward_bytes``)."""


class SimVideoModel(VideoModel):
    """Wan 2.1's geometry and limits, a calibrated cost model, no weights (see the module docstring)."""

    def __init__(self, config: SimModelConfig, parts: frozenset[str]) -> None:
        self.config = config
        self.parts = parts
        self.cost: CostModel = VARIANTS[config.variant]
        self.gpu_memory_bytes = config.gpu_memory_gb * 1e9
        self.busy_seconds = 0.0
        """Simulated GPU seconds spent so far in this process (before ``time_scale``)."""
        self._targets: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()
        g = self.cost.geometry
        geometry = LatentGeometry(
            latent_channels=g.latent_channels,
            spatial_factor=g.spatial_factor,
            temporal_factor=g.temporal_factor,
            patch_size=g.patch_size,
            native_window=g.native_window,
            decode_context=DECODE_CONTEXT,
        )
        # Wan 2.1 at 480p: 832x480 either way, 16 fps; generate.py's defaults: 50 steps, guidance 5.0.
        limits = ModelLimits(
            min_side=geometry.size_multiple,
            max_side=832,
            max_image_side=832,
            min_fps=1.0,
            max_fps=60.0,
            default_fps=16.0,
            default_width=832,
            default_height=480,
            default_steps=50,
            max_steps=100,
            default_guidance_scale=5.0,
            max_prompt_tokens=self.cost.dit.text_len,
        )
        digest = hashlib.sha256((IMPLEMENTATION + config.model_dump_json(exclude={"torch_threads"})).encode())
        self.card = ModelCard(family="sim", name=config.variant, version="sim-" + digest.hexdigest()[:12],
                              geometry=geometry, limits=limits)

    @classmethod
    def load(cls, config: SimModelConfig, parts: frozenset[str]) -> SimVideoModel:
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        return cls(config, parts)

    def _require(self, part: str) -> None:
        if part not in self.parts:
            raise PartNotLoadedError(f"part {part!r} was not loaded; load_model(..., parts={{{part!r}, ...}})")

    def _sleep(self, gpu_seconds: float, start: float) -> None:
        """Hold the calling thread until ``gpu_seconds x time_scale`` after ``start`` (no CPU used)."""
        self.busy_seconds += gpu_seconds
        deadline = start + gpu_seconds * self.config.time_scale
        while (remaining := deadline - time.perf_counter()) > 0:
            time.sleep(remaining)

    # -- text -----------------------------------------------------------------------------
    def expand(self, prompt: str, character: str = "") -> str:
        return f"{character.strip()}. {prompt}" if character.strip() else prompt

    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        self._require("text")
        out = []
        for prompt in prompts:
            raw = hashlib.sha256(prompt.encode()).digest()  # 32 bytes = TEXT_TOKENS x TEXT_DIM
            tokens = torch.tensor(list(raw), dtype=torch.float32).view(TEXT_TOKENS, TEXT_DIM) / 127.5 - 1.0
            out.append(TextConditioning(tokens=tokens, mask=torch.ones(TEXT_TOKENS, dtype=torch.bool)))
        return out

    # -- denoising ------------------------------------------------------------------------
    def sigmas(self, steps: int) -> list[float]:
        return sampler.flow_sigmas(steps, SAMPLE_SHIFT)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return sampler.add_noise(latents, noise, sigma)

    def tokens(self, shape: tuple[int, ...]) -> int:
        """Transformer tokens of one copy of latents ``(C, T, H, W)``."""
        pt, ph, pw = self.cost.geometry.patch_size
        _, t, h, w = shape
        return (t // pt) * (h // ph) * (w // pw)

    def _shape(self, item: DenoiseWork) -> tuple[int, int]:
        """``(tokens, copies)`` of an item: guidance doubles the batch."""
        return self.tokens(tuple(item.latents.shape)), 2 if self.batch_key(item)[2] else 1

    def forward_seconds(self, items: list[DenoiseWork]) -> float:
        """Simulated H100 seconds of one batched forward over ``items`` (the wall time is this
        times ``time_scale``). :meth:`step` runs one such forward per sampler step per group of
        equal :meth:`batch_key` (Heun: two, except into sigma 0)."""
        return self.cost.forward_seconds(self._shape(item) for item in items)

    def max_batch_items(self, work: DenoiseWork) -> int | None:
        """Items like ``work`` that fit one forward in ``gpu_memory_gb`` (0: not even one),
        capped by the config's ``max_batch_items``."""
        bound = self.cost.max_batch_items(*self._shape(work), self.gpu_memory_bytes)
        return bound if self.config.max_batch_items is None else min(bound, self.config.max_batch_items)

    def check_work(self, item: DenoiseWork) -> None:
        check_denoise_work(item, self.cost.geometry.latent_channels, self.cost.geometry.patch_size)

    @torch.no_grad()
    def step(self, work: list[DenoiseWork]) -> list[torch.Tensor]:
        self._require("denoiser")
        start = time.perf_counter()
        for item in work:
            self.check_work(item)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(work):
            groups[(self.batch_key(item), len(item.sigmas))].append(index)
        gpu_seconds = 0.0
        for indices in groups.values():
            items = [work[i] for i in indices]
            bound = self.max_batch_items(items[0])
            if bound == 0:
                need = self.cost.forward_bytes([self._shape(items[0])]) / 1e9
                raise SimulatedOutOfMemoryError(
                    f"simulated {self.config.gpu_memory_gb:g} GB GPU out of memory: one item of latents "
                    f"{tuple(items[0].latents.shape)} needs {need:.1f} GB ({self.card.name})")
            for first in range(0, len(items), bound):  # more than fit: several forwards, as a caller would split
                gpu_seconds += self._group_seconds(items[first:first + bound])
        results = [self._advance(item) for item in work]
        self._sleep(gpu_seconds, start)
        return results

    def _group_seconds(self, items: list[DenoiseWork]) -> float:
        """Simulated seconds to take a group of equal batch key through all its sampler steps."""
        seconds = 0.0
        for index in range(len(items[0].sigmas) - 1):
            seconds += self.forward_seconds(items)
            second = [item for item in items if item.sampler == "heun" and item.sigmas[index + 1] > 0]
            if second:  # Heun's corrector: a second forward except into sigma 0
                seconds += self.forward_seconds(second)
        return seconds

    def _advance(self, item: DenoiseWork) -> torch.Tensor:
        """Latents at ``sigmas[-1]``: exact rectified flow towards the target (one op)."""
        first, last = item.sigmas[0], item.sigmas[-1]
        x = item.latents.float()
        if first <= 0.0:
            out = x.clone()
        else:
            out = torch.lerp(x, self._target(item), 1.0 - last / first)  # x0 + (last/first) (x - x0)
        if item.frames is not None:
            out = item.frames.apply(out)
        return out.to(item.latents.dtype)

    def _target(self, item: DenoiseWork) -> torch.Tensor:
        """The clean latents the denoiser heads for: a colour wave per prompt drifting over the
        window's frames, ``(C, T, H, W)`` float32, cached by text and shape."""
        text = item.text.tokens.detach().float().contiguous().numpy().tobytes()
        key = (hashlib.sha256(text).digest(), tuple(item.latents.shape))
        target = self._targets.get(key)
        if target is not None:
            self._targets.move_to_end(key)
            return target
        c, t, h, w = item.latents.shape
        generator = torch.Generator().manual_seed(int.from_bytes(key[0][:8], "little") & 0x7FFFFFFFFFFFFFFF)
        base = torch.randn(c, 1, 1, 1, generator=generator) * 0.5
        fy, fx = (torch.rand(2, c, 1, 1, 1, generator=generator) * 2 + 0.5) * 2 * math.pi
        speed = 0.2 + 0.3 * torch.rand(c, 1, 1, 1, generator=generator)
        ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1) / h
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w) / w
        ts = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1)
        # sin(fy*y + fx*x - speed*t) = sin(fy*y) cos(fx*x - speed*t) + cos(fy*y) sin(fx*x - speed*t): separable, cheap
        phase = fx * xs - speed * ts  # (C, T, 1, W)
        target = base + torch.sin(fy * ys) * torch.cos(phase) + torch.cos(fy * ys) * torch.sin(phase)
        self._targets[key] = target
        while len(self._targets) > TARGET_CACHE:
            self._targets.popitem(last=False)
        return target

    # -- VAE ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames to latents: each latent frame's first pixel frame, subsampled x8, as channels 0-2."""
        self._require("vae")
        start = time.perf_counter()
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        s = self.geometry.spatial_factor
        if frames.shape[1] % s or frames.shape[2] % s:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be a multiple of {s}")
        grid = self.geometry.time_grid
        n = frames.shape[0]
        picks = [min(grid.pixel_start(k), n - 1) for k in range(grid.latent_frames(n))]
        small = frames[picks][:, ::s, ::s].permute(3, 0, 1, 2).float()  # (3, T', H/s, W/s)
        latents = torch.zeros(self.geometry.latent_channels, *small.shape[1:])
        latents[:3] = (small - 128.0) / 48.0
        padded = grid.ceil_start(n)
        self._sleep(self.cost.decode_seconds(padded, frames.shape[1], frames.shape[2]), start)
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """Channels 0-2 to RGB, upsampled x8 by repetition; every latent frame after the first
        covers ``temporal_factor`` pixel frames. The cost covers all frames, context included."""
        self._require("vae")
        start = time.perf_counter()
        c = self.geometry.latent_channels
        if latents.ndim != 4 or latents.shape[0] != c:
            raise ValueError(f"latents must be ({c}, T, H, W), got {tuple(latents.shape)}")
        total, h, w = latents.shape[1:]
        if not 0 <= context_frames < total:
            raise ValueError(f"context_frames must be in [0, {total}), got {context_frames}")
        grid = self.geometry.time_grid
        s = self.geometry.spatial_factor
        first, end = grid.pixel_range(context_frames, total)
        f = grid.temporal_factor
        owner = torch.tensor([0 if p == 0 else 1 + (p - 1) // f for p in range(first, end)], dtype=torch.long)  # latent frame of each pixel frame
        rgb = (latents[:3].float() * 48.0 + 128.0).clamp(0, 255).round().to(torch.uint8)  # (3, T, h, w)
        rgb = rgb.index_select(1, owner).permute(1, 2, 3, 0).reshape(-1, w * 3)  # (T_out * h, w * 3)
        # x8 along a row by a gather, then each row x8 (long contiguous copies: the cheap way to write the pixels)
        columns = torch.arange(w * s * 3)
        rows = rgb.index_select(1, columns // (s * 3) * 3 + columns % 3)
        frames = rows.view(end - first, h, 1, w * s * 3).expand(-1, -1, s, -1).reshape(end - first, h * s, w * s, 3)
        self._sleep(self.cost.decode_seconds(grid.pixel_frames(total), h * s, w * s), start)
        return frames
