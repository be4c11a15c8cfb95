"""Causal 3D convolutional video autoencoder.

Pixels ``(B, 3, T, H, W)`` in [-1, 1] with ``T = 1 + f*k`` (``f`` = temporal factor) become
latents ``(B, C, 1 + k, H/s, W/s)`` and back.

Time: the first frame is encoded alone (it is repeated ``f`` times, then the video is folded
into latent-frame groups of ``f`` pixel frames: space-and-time-to-depth, as LTX-Video does in
space). So an image is a one-frame video, and latent frame ``j > 0`` covers pixel frames
``f*(j-1)+1 .. f*j``. Every temporal convolution is causal (padded on the left only), so a
latent frame depends only on pixel frames up to its own, and a decoded frame only on latent
frames up to its own: the decoder's temporal receptive field is
``VAEConfig.decoder_context_frames`` latent frames, which is the context a time tile needs to
reproduce an untiled decode.

Space: the input is folded ``patch_size`` x ``patch_size`` into channels before any conv
(cheap at high resolution, exact for sharp edges), then each further stage halves height and
width with a 2x2 space-to-depth. Normalisation is a per-position RMS norm over channels, so no
statistic mixes frames (causality) or spatial tiles.

Where time is folded (v1 vs v2). v1 (``full_rate_*_stages = 0``) folds each group's ``f`` pixel
frames into channels at the very input and unfolds them from the output convolution: the
decoder's last stage holds a whole group (``f`` frames of a ``p`` x ``p`` patch, ``3*f*p*p`` = 192
values) in one ``channels[0]`` = 64-wide feature, and one linear 3x3 conv writes all ``f`` frames
from it. The frames of a group are near copies, so that bottleneck keeps their mean and squeezes
their differences: the object moves too little inside a group and catches up with a jump at
the next one (boundary/inside centroid jump ratio 4 to 5 on rendered clips,
``bench/vae_eval.py``). v2 (``full_rate_decoder_stages = 1``, variant ``tiny-v2``) unfolds time
at the decoder's last upsample instead, then gives every pixel frame its own features, causal
temporal convolutions across neighbouring frames (also across the group boundary) and an output
convolution per frame. ``full_rate_encoder_stages = 1`` does the same on the encoder side (time
folded at its first downsample, after one full-rate stage); measured no better, twice the
training cost, so v2 leaves it at 0. The latent (its shape, causality, first-frame-alone grid)
is unchanged either way; see ``models/train/README_v2.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.models.native.configs import VAEConfig


class CausalConv3d(nn.Module):
    """3D convolution padded on the left in time (zeros), 'same' in space."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
        return self.conv(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (t, h, w) position."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        scale = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * scale * self.weight.view(1, -1, 1, 1, 1)


class ResBlock(nn.Module):
    """Pre-norm residual block; ``time_kernel > 1`` makes its first conv mix (past) frames."""

    def __init__(self, channels: int, time_kernel: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(channels)
        self.conv1 = CausalConv3d(channels, channels, (time_kernel, 3, 3))
        self.norm2 = ChannelRMSNorm(channels)
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*f*f, T, H/f, W/f)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // factor, factor, w // factor, factor)
    x = x.permute(0, 1, 4, 6, 2, 3, 5)  # (B, C, f, f, T, H/f, W/f)
    return x.reshape(b, c * factor * factor, t, h // factor, w // factor)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C*f*f, T, H, W) -> (B, C, T, H*f, W*f)."""
    b, cff, t, h, w = x.shape
    c = cff // (factor * factor)
    x = x.reshape(b, c, factor, factor, t, h, w)
    x = x.permute(0, 1, 4, 5, 2, 6, 3)  # (B, C, T, H, f, W, f)
    return x.reshape(b, c, t, h * factor, w * factor)


def pad_first_frame(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, 1 + f*k, H, W) -> (B, C, f*(k+1), H, W): the first frame repeated to fill its group."""
    first = x[:, :, :1].expand(-1, -1, factor - 1, -1, -1)
    return torch.cat([first, x], dim=2)


def fold_groups(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, f*T', H, W) -> (B, C*f, T', H, W): each group of ``f`` frames into channels."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // factor, factor, h, w).permute(0, 1, 3, 2, 4, 5)  # (B, C, f, T', H, W)
    return x.reshape(b, c * factor, t // factor, h, w)


def fold_time(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, 1 + f*k, H, W) -> (B, C*f, 1 + k, H, W), the first frame repeated to fill its group."""
    x = pad_first_frame(x, factor)  # (B, C, f*(k+1), H, W)
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // factor, factor, h, w).permute(0, 1, 3, 2, 4, 5)  # (B, C, f, T', H, W)
    return x.reshape(b, c * factor, t // factor, h, w)


def unfold_time(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C*f, T', H, W) -> (B, C, f*T', H, W) (all groups complete; the caller drops padding)."""
    b, cf, t, h, w = x.shape
    c = cf // factor
    x = x.reshape(b, c, factor, t, h, w).permute(0, 1, 3, 2, 4, 5)  # (B, C, T', f, H, W)
    return x.reshape(b, c, t * factor, h, w)


class Encoder(nn.Module):
    """Pixels to posterior moments. The first ``full_rate_encoder_stages`` stages run on every
    pixel frame (v2); time is folded into channels before the next stage's downsample (v1: at
    the input)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        f, full = config.temporal_factor, config.full_rate_encoder_stages
        channels = config.channels
        self.conv_in = CausalConv3d(3 * (1 if full else f) * config.patch_size**2, channels[0], (1, 3, 3))
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for index, width in enumerate(channels):
            if index > 0:
                folded = f if index == full else 1  # time joins the channels at this downsample
                self.downsamples.append(CausalConv3d(channels[index - 1] * 4 * folded, width, (1, 1, 1)))
            blocks = [
                ResBlock(width, config.time_kernel if block == 0 else 1) for block in range(config.blocks_per_stage)
            ]
            self.stages.append(nn.Sequential(*blocks))
        self.norm_out = ChannelRMSNorm(channels[-1])
        self.conv_out = CausalConv3d(channels[-1], 2 * config.latent_channels, (1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 1 + f*k, H, W)
        f, full = self.config.temporal_factor, self.config.full_rate_encoder_stages
        if full:
            x = pad_first_frame(x, f)  # (B, 3, f*(1 + k), H, W): full frame rate
        else:
            x = fold_time(x, f)  # (B, 3f, 1 + k, H, W)
        x = space_to_depth(x, self.config.patch_size)  # (B, 3[f]*p*p, T, H/p, W/p)
        x = self.conv_in(x)
        for index, stage in enumerate(self.stages):
            if index > 0:
                if index == full:
                    x = fold_groups(x, f)  # (B, C*f, 1 + k, H', W'): latent frame rate from here
                x = self.downsamples[index - 1](space_to_depth(x, 2))
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 2C, 1 + k, H/s, W/s)


class Decoder(nn.Module):
    """Latents to pixel frames. The last ``full_rate_decoder_stages`` stages run on every pixel
    frame (v2): time is unfolded from channels at the upsample before them (v1: at the output)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        f, full = config.temporal_factor, config.full_rate_decoder_stages
        channels = config.channels[::-1]
        self.unfold_at = len(channels) - full if full else None  # stage index whose upsample unfolds time
        self.conv_in = CausalConv3d(config.latent_channels, channels[0], (1, 3, 3))
        self.stages = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for index, width in enumerate(channels):
            if index > 0:
                unfolded = f if index == self.unfold_at else 1
                self.upsamples.append(CausalConv3d(channels[index - 1], width * 4 * unfolded, (1, 1, 1)))
            blocks = [
                ResBlock(width, config.time_kernel if block == 0 else 1) for block in range(config.blocks_per_stage)
            ]
            self.stages.append(nn.Sequential(*blocks))
        self.norm_out = ChannelRMSNorm(channels[-1])
        self.conv_out = CausalConv3d(channels[-1], 3 * (1 if full else f) * config.patch_size**2, (1, 3, 3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, T', H', W')
        f = self.config.temporal_factor
        x = self.conv_in(z)
        for index, stage in enumerate(self.stages):
            if index > 0:
                x = self.upsamples[index - 1](x)
                if index == self.unfold_at:
                    x = unfold_time(x, f)  # (B, 4*width, f*T', H', W'): pixel frame rate from here
                x = depth_to_space(x, 2)
            x = stage(x)
        x = self.conv_out(F.silu(self.norm_out(x)))  # (B, 3[f]*p*p, T, H/p, W/p)
        x = depth_to_space(x, self.config.patch_size)  # (B, 3[f], T, H, W)
        if self.unfold_at is None:
            x = unfold_time(x, f)  # (B, 3, f*T', H, W)
        return x  # (B, 3, f*T', H, W), first f-1 frames are padding


class VideoVAE(nn.Module):
    """Encoder + decoder with latent normalisation (latents leave ``encode`` with ~unit scale)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def decoder_context_frames(self) -> int:
        return self.config.decoder_context_frames

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = self.config.latent_channels
        mean = self.config.latent_mean or (0.0,) * channels
        std = self.config.latent_std or (1.0,) * channels
        shape = (1, channels, 1, 1, 1)
        return (
            torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
            torch.tensor(std, dtype=like.dtype, device=like.device).view(shape),
        )

    def check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected pixels (B, 3, T, H, W), got shape {tuple(x.shape)}")
        f, s = self.config.temporal_factor, self.config.spatial_factor
        if (x.shape[2] - 1) % f != 0:
            raise ValueError(f"frame count must be 1 + {f}*k, got {x.shape[2]}")
        if x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"height and width must be multiples of {s}, got {x.shape[3]}x{x.shape[4]}")

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) posterior mean and log-variance, each ``(B, C, T', H', W')``."""
        self.check_pixels(x)
        moments = self.encoder(x)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] ``(B, 3, 1+f*k, H, W)`` to normalised latents (posterior mean)."""
        mean, _ = self.encode_distribution(x)
        shift, scale = self._stats(mean)
        return (mean - shift) / scale

    def decode_raw(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents to all ``f*T'`` decoded frames (the first ``f-1`` are padding)."""
        return self.decoder(z_raw)

    def decode(self, z: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """Normalised latents ``(B, C, T', H', W')`` to pixels ``(B, 3, T_out, H, W)`` in about [-1, 1].

        ``context_frames == 0``: the latents start the video, ``T_out = 1 + f*(T'-1)``.
        ``context_frames > 0``: the first latent frames are context only, ``T_out = f*(T'-context)``.
        """
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, {self.config.latent_channels}, T, H, W), got {tuple(z.shape)}")
        if not 0 <= context_frames < z.shape[2]:
            raise ValueError(f"context_frames must be in [0, {z.shape[2]}), got {context_frames}")
        shift, scale = self._stats(z)
        frames = self.decoder(z * scale + shift)
        f = self.config.temporal_factor
        drop = f - 1 if context_frames == 0 else f * context_frames
        return frames[:, :, drop:]
