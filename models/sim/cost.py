"""Cost and memory model of the simulated accelerator (``sim``), calibrated on published figures.

Pure Python (no torch), so benches can ask it for predictions without loading anything.

What is modelled
----------------
One batched denoiser forward over items ``i`` (each ``copies_i`` = 2 under classifier-free
guidance, which doubles the batch, else 1; ``N_i`` video tokens per copy) takes::

    t = t_fixed + sum_i copies_i * (F_text + F_lin * N_i + F_quad * N_i**2) / R

* ``F_lin``, ``F_quad``, ``F_text``: the FLOPs of the model per video token (projections, FFN,
  cross-attention scores against the 512 text tokens), per pair of tokens (self-attention's
  ``QK^T`` and ``AV``) and per copy (cross-attention's K/V projections of the text), counted from
  the model's config (:class:`DiTShape`). So the quadratic/linear split is the model's own FLOP
  split at each sequence length, not a fitted ratio.
* ``R``: the effective FLOP rate, solved so that the model reproduces the published seconds per
  sampler step at the published size (:class:`Measurement`, :func:`calibrate`).
* ``t_fixed``: what one forward costs whatever its batch (the part batching amortises): the
  weights streamed once from HBM (``weight_bytes / HBM bandwidth``) plus the kernels launched
  (``layers x KERNELS_PER_BLOCK x KERNEL_LAUNCH_S``). No published figure isolates it; it is
  derived from the H100's datasheet and the count of kernels in Wan's reference block, and the
  assumption is named below.

A VAE decode (and encode) costs ``VAE_S_PER_PIXEL_FRAME`` per decoded pixel of every frame.

Memory: bf16 weights plus, per video token of every copy in the batch, the activations alive at
the peak of one transformer block (the earlier blocks' activations are freed in inference), plus
``heads x N^2`` attention scores per copy if the attention is not a fused (flash) kernel. A batch
fits when that stays under ``USABLE_MEMORY_FRACTION`` of the GPU's memory.

Sources (numbers as published)
------------------------------
[W] Wan2.1 README, github.com/Wan-Video/Wan2.1 (commit 9737cba): the architecture table
    ("Dimension 1536 / 5120, Feedforward 8960 / 13824, Heads 12 / 40, Layers 30 / 40" for
    1.3B / 14B; ``wan/configs``: patch (1, 2, 2), VAE stride (4, 8, 8), text_len 512, 16 fps),
    and "Computational Efficiency on Different GPUs" (assets/comp_effic.png): H800/H100,
    T2V-14B, 720P, 1 GPU: **1837.9 s** total, peak 69.1 GB (50 steps, ``--offload_model True``).
[F] FastVideo team, "Introducing FastWan" (hao-ai-lab.github.io/blogs/fastvideo_post_training),
    Table 1, "DiT denoising time (without text encoder and vae) on a single H200", FlashAttention-2:
    Wan2.1 1.3B 480P **95.21 s**, Wan2.1 14B 720P **1746.5 s**; with DMD (3 steps, no guidance):
    2.88 s and 52 s. Sizes from its reproduction script (FastVideo
    scripts/inference/v1_inference_wan_VSA_DMD.sh): 480x848 and 720x1280, 81 frames. The TL;DR:
    FastWan2.1-1.3B "generates a 5-second 480P video in 5 seconds (denoising time 1 second) on a
    single H200".
[L] LightX2V benchmark (github.com/ModelTC/LightX2V, docs/EN/source/getting_started/
    benchmark_source.md): H200, Wan2.1-I2V-14B-480P, 40 steps, CFG, "Wan2.1 Official": **366 s**,
    71 GB. Used as a cross-check only (image-to-video, and it includes the encoders and the VAE).

How the figures become constants
--------------------------------
* [F]'s 50-step baselines ran with guidance: 95.21 / 2.88 = 33.1 and 1746.5 / 52 = 33.6, both
  within 2% of the 100 forwards (50 steps x 2 under guidance) per 3 forwards that this reading
  predicts. Like Wan's and diffusers' reference loops, they run the conditional and the
  unconditional branch as two forwards of batch 1, so one published step = 2 x (t_fixed + copy).
* H200 -> H100: factor 1.0. Both have 132 SMs at the same clocks (989 TFLOPS dense BF16); the
  H200 differs in HBM (141 GB, 4.8 TB/s), which a compute-bound DiT forward at >30k tokens does
  not use. Cross-check: [W]'s H100 run of the 14B at 720P (1837.9 s, including the T5 encoder,
  the VAE and weight offloading) is 5% slower than [F]'s H200 DiT alone (1746.5 s).
* 1.3B is calibrated at [F]'s 480P point: 95.21 s / 50 = 1.904 s per step at 848x480x81 frames,
  21 x 30 x 53 = 33390 tokens per copy. At Wan's own 832x480 (21 x 30 x 52 = 32760 tokens) the
  model then gives 1.83 s per step (both branches in one forward, as the sim runs them).
* 14B: [F] publishes the 720P point only, so it is calibrated there (1746.5 s / 50 = 34.93 s per
  step, 21 x 45 x 80 = 75600 tokens) and its 480P cost follows from the FLOP model: 9.0 s per
  step at 832x480, i.e. 360 s for [L]'s 40 steps, just under [L]'s 366 s for the whole pipeline.
* VAE: [F]'s TL;DR leaves about 4 s (5 s end to end minus 1 s denoising) for the text encoder
  and the VAE decode of 81 x 480 x 848; all of it is charged to the decode: 1.2e-7 s per pixel
  of every decoded frame. The encoder is taken to cost the same per pixel (no published figure).

Derived (``summary(variant)`` prints them): R = 311 / 374 TFLOPS (31% / 38% of the H100's dense
BF16 peak), t_fixed = 11.6 / 22.9 ms, self-attention = 70% / 52% of the FLOPs at 32760 tokens,
2.84 / 28.6 GB of weights and 48 / 154 KB of activations per token, so 21 / 4 guided 480p windows
per forward on 80 GB (1.3B / 14B). For 64 guided clips of 2 s at 256x256 (2304 tokens) one
forward per step gives 1.25x (1.3B) and 1.07x (14B) the throughput of one forward per clip: at
these figures the fixed cost is small next to the compute ("batching video generation requests
provides little benefit", Baseten, baseten.co/blog/wan-2-2-video-generation-in-less-than-60-seconds).

A benchmarking instrument, never a default: it makes no pictures worth looking at.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

# -- the hardware: NVIDIA H100 SXM datasheet ---------------------------------------------------
H100_HBM_BYTES_PER_S = 3.35e12
"""HBM3 bandwidth of the H100 SXM (datasheet)."""
H100_BF16_DENSE_FLOPS = 989e12
"""Dense BF16 tensor throughput of the H100 SXM (and H200; datasheets). Reported as MFU only."""
H200_TO_H100 = 1.0
"""Seconds on an H100 per second on an H200 for these DiT forwards (see the module docstring)."""

# -- assumptions (no published figure isolates them) -------------------------------------------
KERNELS_PER_BLOCK = 90
"""CUDA kernels one Wan block launches in eager PyTorch, counted in Wan2.1's ``WanAttentionBlock``
(wan/modules/model.py): 2 modulation, 3+3 norm and modulate, 4 linears + 2 RMSNorms (~8 each) +
RoPE on q and k (~8 each) + flash attention and o for self-attention, the same without RoPE for
cross-attention, FFN (2 linears, GELU), 3 gated residuals: about 90."""
KERNEL_LAUNCH_S = 4e-6
"""Host cost of launching one kernel (CUDA launch latency plus PyTorch dispatch), an assumption:
it is what a forward costs beyond its FLOPs when the kernels are short."""
USABLE_MEMORY_FRACTION = 0.9
"""Share of the GPU's memory a batch may fill (the rest: CUDA context, cuBLAS workspaces,
allocator fragmentation), an assumption."""
WEIGHT_BYTES_PER_PARAM = 2
"""bf16 weights, as a serving deployment loads them."""


@dataclasses.dataclass(frozen=True)
class DiTShape:
    """A Wan 2.1 text-to-video transformer, from [W]'s architecture table and ``wan/configs``."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    """T5 tokens the cross-attention attends to (``text_len`` in wan/configs/shared_config.py)."""
    text_dim: int = 4096
    """UMT5-XXL's width, projected to ``dim`` by the text embedding."""
    freq_dim: int = 256

    @property
    def params(self) -> int:
        """Parameters, counted from the modules of Wan2.1's ``WanModel``."""
        d, f = self.dim, self.ffn_dim
        attention = 4 * (d * d + d) + 2 * d  # q, k, v, o with biases; RMSNorm of q and k
        block = 2 * attention + 2 * d + (d * f + f + f * d + d) + 6 * d  # self, cross, norm3, FFN, modulation
        patch = math.prod(self.patch_size)
        embeddings = (self.in_channels * patch * d + d) + (self.text_dim * d + d + d * d + d) + (self.freq_dim * d + d + d * d + d) + (d * 6 * d + 6 * d)
        head = d * self.in_channels * patch + self.in_channels * patch + 2 * d
        return self.num_layers * block + embeddings + head

    @property
    def weight_bytes(self) -> int:
        return self.params * WEIGHT_BYTES_PER_PARAM

    @property
    def linear_flops_per_token(self) -> float:
        """FLOPs per video token of one copy that do not depend on the sequence length: q, k, v, o
        of self-attention, q and o of cross-attention, the FFN, and the cross-attention scores
        and values against ``text_len`` text tokens."""
        d, f = self.dim, self.ffn_dim
        per_layer = 2 * (4 * d * d) + 2 * (2 * d * d) + 2 * (2 * d * f) + 4 * self.text_len * d
        return self.num_layers * per_layer

    @property
    def quadratic_flops_per_token_pair(self) -> float:
        """FLOPs per (query, key) pair of self-attention: ``QK^T`` and ``AV``, 2 x 2 x dim per layer."""
        return self.num_layers * 4 * self.dim

    @property
    def text_flops_per_copy(self) -> float:
        """FLOPs per copy independent of the video: cross-attention's K and V of the text tokens."""
        return self.num_layers * 2 * (2 * self.dim * self.dim) * self.text_len

    def copy_flops(self, tokens: int) -> float:
        """FLOPs of one copy (one branch of guidance) of one item of ``tokens`` video tokens."""
        return self.text_flops_per_copy + self.linear_flops_per_token * tokens + self.quadratic_flops_per_token_pair * tokens * tokens

    def attention_share(self, tokens: int) -> float:
        """Share of a copy's FLOPs in self-attention's quadratic term at ``tokens`` tokens."""
        return self.quadratic_flops_per_token_pair * tokens * tokens / self.copy_flops(tokens)

    @property
    def fixed_seconds(self) -> float:
        """Cost of one forward whatever its batch: the weights read once, the kernels launched."""
        return self.weight_bytes / H100_HBM_BYTES_PER_S + self.num_layers * KERNELS_PER_BLOCK * KERNEL_LAUNCH_S

    def activation_bytes_per_token(self) -> int:
        """Bytes alive per video token of one copy at the peak of a block in Wan's reference code.

        Attention half: the float32 residual stream and modulated input (4 + 4 bytes x dim), q, k,
        v in bf16 (3 x 2 x dim), RoPE's float64 copies of q and k (2 x 8 x dim). FFN half: the
        same float32 residual and input, the hidden layer before and after GELU in bf16
        (2 x 2 x ffn_dim). The larger half bounds the batch."""
        d, f = self.dim, self.ffn_dim
        attention_half = 8 * d + 6 * d + 16 * d
        ffn_half = 8 * d + 4 * f
        return max(attention_half, ffn_half)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A published time for a whole sampling run of one video, and the conditions it was taken in."""

    source: str
    gpu: str
    seconds: float
    steps: int
    guided: bool
    width: int
    height: int
    frames: int
    to_h100: float = 1.0
    """Factor from this GPU's seconds to an H100's."""

    @property
    def seconds_per_step(self) -> float:
        """H100 seconds per sampler step."""
        return self.seconds * self.to_h100 / self.steps


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a video's pixels become tokens: Wan-VAE's strides and the DiT's patch."""

    latent_channels: int = 16
    spatial_factor: int = 8
    temporal_factor: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    native_window: int = 21
    """Latent frames of Wan's 81-frame clips (1 + 80 / 4)."""

    def latent_frames(self, frames: int) -> int:
        return 1 + math.ceil((frames - 1) / self.temporal_factor)

    def tokens(self, width: int, height: int, frames: int) -> int:
        """Video tokens of one copy: latent frames x latent cells / patch."""
        pt, ph, pw = self.patch_size
        s = self.spatial_factor
        return (self.latent_frames(frames) // pt) * (height // s // ph) * (width // s // pw)


WAN_GEOMETRY = Geometry()
VAE_S_PER_PIXEL_FRAME = 4.0 * H200_TO_H100 / (81 * 480 * 848)
"""H100 seconds per decoded pixel of one frame: [F]'s ~4 s outside denoising for 81 x 480 x 848."""


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The calibrated cost and memory model of one simulated variant (see the module docstring)."""

    name: str
    dit: DiTShape
    calibration: Measurement
    flops_per_s: float
    """Effective FLOP rate solved from ``calibration``."""
    flash_attention: bool = True
    vae_s_per_pixel_frame: float = VAE_S_PER_PIXEL_FRAME
    geometry: Geometry = WAN_GEOMETRY

    @property
    def fixed_seconds(self) -> float:
        return self.dit.fixed_seconds

    @property
    def mfu(self) -> float:
        """The calibrated FLOP rate as a share of the H100's dense BF16 peak."""
        return self.flops_per_s / H100_BF16_DENSE_FLOPS

    def copy_seconds(self, tokens: int) -> float:
        """Seconds one copy of one item of ``tokens`` tokens adds to a forward."""
        return self.dit.copy_flops(tokens) / self.flops_per_s

    def forward_seconds(self, items: Iterable[tuple[int, int]]) -> float:
        """H100 seconds of one batched forward over ``(tokens, copies)`` per item."""
        return self.fixed_seconds + sum(copies * self.copy_seconds(tokens) for tokens, copies in items)

    def step_seconds(self, width: int, height: int, frames: int, guided: bool = True, batch: int = 1) -> float:
        """H100 seconds of one sampler step of ``batch`` such videos in one forward."""
        tokens = self.geometry.tokens(width, height, frames)
        return self.forward_seconds([(tokens, 2 if guided else 1)] * batch)

    def decode_seconds(self, frames: int, height: int, width: int) -> float:
        """H100 seconds to decode (or encode) ``frames`` pixel frames of ``height x width``."""
        return self.vae_s_per_pixel_frame * frames * height * width

    # -- memory ----------------------------------------------------------------------------
    def item_bytes(self, tokens: int, copies: int) -> int:
        """Activation bytes one item adds to a forward."""
        per_copy = self.dit.activation_bytes_per_token() * tokens
        if not self.flash_attention:
            per_copy += self.dit.num_heads * tokens * tokens * 2  # materialised bf16 scores
        return copies * per_copy

    def free_bytes(self, gpu_memory_bytes: float) -> float:
        """Bytes left for activations on a GPU of that size once the weights are loaded."""
        return gpu_memory_bytes * USABLE_MEMORY_FRACTION - self.dit.weight_bytes

    def max_batch_items(self, tokens: int, copies: int, gpu_memory_bytes: float) -> int:
        """Most items of that size one forward holds (0: not even one fits)."""
        return max(0, int(self.free_bytes(gpu_memory_bytes) // self.item_bytes(tokens, copies)))

    def forward_bytes(self, items: Iterable[tuple[int, int]]) -> int:
        """Peak bytes of one batched forward: weights plus every item's activations."""
        return self.dit.weight_bytes + sum(self.item_bytes(tokens, copies) for tokens, copies in items)


def calibrate(name: str, dit: DiTShape, measurement: Measurement, flash_attention: bool = True) -> CostModel:
    """Solve the FLOP rate so one step at the measurement's size takes its published time.

    A published guided step is two forwards of batch 1 (the reference loops run the two branches
    one after the other): ``step = 2 x (t_fixed + copy)``, hence ``R = copy_flops / (step / 2 -
    t_fixed)``; an unguided step is one forward."""
    tokens = WAN_GEOMETRY.tokens(measurement.width, measurement.height, measurement.frames)
    forwards = 2 if measurement.guided else 1
    compute_s = measurement.seconds_per_step / forwards - dit.fixed_seconds
    if compute_s <= 0:
        raise ValueError(f"{name}: fixed cost {dit.fixed_seconds:.4f} s exceeds the measured forward")
    return CostModel(name, dit, measurement, dit.copy_flops(tokens) / compute_s, flash_attention)


WAN21_1_3B = DiTShape(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN21_14B = DiTShape(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

FASTWAN_1_3B_480P = Measurement(
    source="FastWan blog Table 1 (hao-ai-lab.github.io/blogs/fastvideo_post_training): Wan2.1 1.3B 480P, FA2, DiT only",
    gpu="H200", seconds=95.21, steps=50, guided=True, width=848, height=480, frames=81, to_h100=H200_TO_H100,
)
FASTWAN_14B_720P = Measurement(
    source="FastWan blog Table 1 (hao-ai-lab.github.io/blogs/fastvideo_post_training): Wan2.1 14B 720P, FA2, DiT only",
    gpu="H200", seconds=1746.5, steps=50, guided=True, width=1280, height=720, frames=81, to_h100=H200_TO_H100,
)
WAN_README_14B_720P_H100 = Measurement(
    source="Wan2.1 README, Computational Efficiency (assets/comp_effic.png): H800/H100, T2V-14B, 720P, 1 GPU, end to end",
    gpu="H100", seconds=1837.9, steps=50, guided=True, width=1280, height=720, frames=81,
)
LIGHTX2V_14B_480P_H200 = Measurement(
    source="LightX2V benchmark_source.md: H200, Wan2.1-I2V-14B-480P, Wan2.1 Official, whole pipeline",
    gpu="H200", seconds=366.0, steps=40, guided=True, width=832, height=480, frames=81, to_h100=H200_TO_H100,
)

VARIANTS: dict[str, CostModel] = {
    "wan2.1-1.3b-480p": calibrate("wan2.1-1.3b-480p", WAN21_1_3B, FASTWAN_1_3B_480P),
    "wan2.1-14b-480p": calibrate("wan2.1-14b-480p", WAN21_14B, FASTWAN_14B_720P),
}
"""The simulated variants by ``SimModelConfig.variant``."""


def summary(name: str, gpu_memory_gb: float = 80.0) -> dict:
    """The derived constants and a few predictions of a variant, for the README and benches."""
    model = VARIANTS[name]
    tokens_480p = WAN_GEOMETRY.tokens(832, 480, 81)
    return {
        "variant": name,
        "calibration": model.calibration.source,
        "calibration_seconds_per_step": model.calibration.seconds_per_step,
        "params": model.dit.params,
        "weight_gb": model.dit.weight_bytes / 1e9,
        "fixed_ms": model.fixed_seconds * 1e3,
        "effective_tflops": model.flops_per_s / 1e12,
        "mfu": model.mfu,
        "tokens_480p": tokens_480p,
        "attention_share_480p": model.dit.attention_share(tokens_480p),
        "step_s_480p_guided": model.step_seconds(832, 480, 81),
        "activation_kb_per_token": model.dit.activation_bytes_per_token() / 1e3,
        "max_batch_480p_guided": model.max_batch_items(tokens_480p, 2, gpu_memory_gb * 1e9),
    }
