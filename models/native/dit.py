"""Spacetime-patch diffusion transformer (DiT) with 3D RoPE, adaLN-Zero and cross-attention.

Input: noisy latents ``(B, C, T, H, W)``, the frame condition (known latents and their frame
mask, concatenated on the channel axis as in Wan image-to-video), the noise level ``sigma``,
text tokens and the frame rate. Output: the flow-matching velocity ``noise - clean``,
``(B, C, T, H, W)``.

Tokens are non-overlapping ``(pt, ph, pw)`` patches of the latent video. Positions enter only
through rotary embeddings over the (t, h, w) token grid, applied inside every attention, so
there is no learned grid: any frame count, size and aspect ratio is a valid input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tessera.models.native.configs import DiTConfig


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) floats -> (B, dim) sin/cos features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rope_split(config: DiTConfig) -> tuple[int, int, int]:
    """Head channels per rotary axis (t, h, w); each even."""
    head_dim = config.hidden_size // config.num_heads
    if config.rope_split is not None:
        return config.rope_split
    spatial = (head_dim // 3) // 2 * 2
    return (head_dim - 2 * spatial, spatial, spatial)


def rope_angles(grid: tuple[int, int, int], split: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    """Rotation angles ``(T*H*W, head_dim/2)`` for a token grid, axes in (t, h, w) order."""
    axes = []
    for size, channels in zip(grid, split, strict=True):
        positions = torch.arange(size, dtype=torch.float32, device=device)
        freqs = theta ** (-torch.arange(0, channels, 2, dtype=torch.float32, device=device) / channels)
        axes.append(positions[:, None] * freqs[None, :])  # (size, channels/2)
    t, h, w = grid
    angles_t = axes[0][:, None, None, :].expand(t, h, w, -1)
    angles_h = axes[1][None, :, None, :].expand(t, h, w, -1)
    angles_w = axes[2][None, None, :, :].expand(t, h, w, -1)
    return torch.cat([angles_t, angles_h, angles_w], dim=-1).reshape(t * h * w, -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, heads, N, head_dim) by per-token angles (N, head_dim/2)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads)
        self.k_norm = nn.RMSNorm(hidden // heads)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, N, hd) each
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads)
        self.k_norm = nn.RMSNorm(hidden // heads)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # x (B, N, D), context (B, M, D), context_mask (B, M) bool
        m = context.shape[1]
        hd = d // self.heads
        q = self.q_norm(self.q(x).view(b, n, self.heads, hd).transpose(1, 2))  # (B, heads, N, hd)
        k, v = self.kv(context).view(b, m, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, heads, M, hd)
        k = self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated self-attention and MLP, plain cross-attention to the text."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads)
        self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
        self.cross = CrossAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c, context, context_mask, cos, sin):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin)
        x = x + self.cross(self.norm_cross(x), context, context_mask)
        x = x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class DiT(nn.Module):
    """The denoiser: ``forward(latents, sigma, text, text_mask, fps, known, mask) -> velocity``."""

    def __init__(self, config: DiTConfig, latent_channels: int) -> None:
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}")
        head_dim = config.hidden_size // config.num_heads
        split = rope_split(config)
        if sum(split) != head_dim or any(part % 2 for part in split):
            raise ValueError(f"rope_split {split} must be even parts summing to the head size {head_dim}")
        self.config = config
        self.latent_channels = latent_channels
        hidden = config.hidden_size
        in_channels = 2 * latent_channels + 1  # noisy latents, known latents * mask, mask
        self.patch_embed = nn.Conv3d(in_channels, hidden, kernel_size=config.patch_size, stride=config.patch_size)
        self.time_embed = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.fps_embed = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # 0: the window starts mid-video, 1: at the video's first latent frame.
        self.start_embed = nn.Embedding(2, hidden) if config.video_start_embedding else None
        self.text_proj = nn.Sequential(nn.LayerNorm(config.text_dim), nn.Linear(config.text_dim, hidden))
        self.pooled_text = nn.Linear(hidden, hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.proj_out = nn.Linear(hidden, math.prod(config.patch_size) * latent_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.modulation_out[-1], self.proj_out, self.fps_embed[-1], self.pooled_text):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.start_embed is not None:  # zero: a model initialised from one without it behaves the same
            nn.init.zeros_(self.start_embed.weight)

    def check_inputs(self, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, T, H, W), got {tuple(latents.shape)}")
        pt, ph, pw = self.config.patch_size
        _, _, t, h, w = latents.shape
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent grid {(t, h, w)} is not divisible by the patch size {(pt, ph, pw)}")
        if text.ndim != 3 or text.shape[-1] != self.config.text_dim:
            raise ValueError(f"expected text tokens (B, N, {self.config.text_dim}), got {tuple(text.shape)}")
        if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got {text_mask.dtype} {tuple(text_mask.shape)}")
        if not text_mask.any(dim=1).all():
            raise ValueError("every caption needs at least one real token")

    def forward(
        self,
        latents: torch.Tensor,  # (B, C, T, H, W) noisy
        sigma: torch.Tensor,  # (B,)
        text: torch.Tensor,  # (B, N, text_dim)
        text_mask: torch.Tensor,  # (B, N) bool
        fps: torch.Tensor,  # (B,)
        known: torch.Tensor | None = None,  # (B, C, T, H, W) clean latents of given frames
        mask: torch.Tensor | None = None,  # (B, T) 1 where a frame is given
        starts_video: torch.Tensor | None = None,  # (B,) bool: latent frame 0 is the video's first; None: all do
    ) -> torch.Tensor:
        self.check_inputs(latents, text, text_mask)
        b, c, t, h, w = latents.shape
        if mask is None:
            mask = latents.new_zeros(b, t)
            known = torch.zeros_like(latents)
        mask_volume = mask[:, None, :, None, None].to(latents.dtype).expand(b, 1, t, h, w)
        x = torch.cat([latents, known * mask_volume, mask_volume], dim=1)  # (B, 2C+1, T, H, W)

        x = self.patch_embed(x)  # (B, D, T/pt, H/ph, W/pw)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)

        context = self.text_proj(text.to(x.dtype))  # (B, M, D)
        weights = text_mask.to(x.dtype)[..., None]
        pooled = (context * weights).sum(dim=1) / weights.sum(dim=1)  # (B, D)
        cond = (
            self.time_embed(sinusoidal_embedding(sigma * 1000.0, 256).to(x.dtype))
            + self.fps_embed(sinusoidal_embedding(fps * 10.0, 256).to(x.dtype))
            + self.pooled_text(pooled)
        )  # (B, D)
        if self.start_embed is not None:
            flags = torch.ones(b, dtype=torch.long, device=x.device) if starts_video is None else starts_video.to(x.device).long()
            cond = cond + self.start_embed(flags).to(x.dtype)

        angles = rope_angles(grid, rope_split(self.config), self.config.rope_theta, x.device)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (N, head_dim/2)
        for block in self.blocks:
            x = block(x, cond, context, text_mask, cos, sin)

        shift, scale = self.modulation_out(cond).chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, N, pt*ph*pw*C)
        return self.unpatchify(x, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, pt*ph*pw*C) -> (B, C, T, H, W)."""
        pt, ph, pw = self.config.patch_size
        gt, gh, gw = grid
        b = x.shape[0]
        x = x.view(b, gt, gh, gw, pt, ph, pw, self.latent_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, gt, pt, gh, ph, gw, pw)
        return x.reshape(b, self.latent_channels, gt * pt, gh * ph, gw * pw)
