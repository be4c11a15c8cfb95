"""``NativeVideoModel``: the native family behind Tessera's stage interface.

Loading (``NativeVideoModel.load(config, parts)``) builds only the requested parts: the DiT
and VAE are constructed on the meta device with ``accelerate.init_empty_weights`` and their
safetensors are materialised straight onto the configured device and dtype, so a stage never
allocates weights it does not use.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from tessera.models.config import NativeModelConfig
from tessera.models.interface import (
    DenoiseWork,
    ModelCard,
    PartNotLoadedError,
    TextConditioning,
    VideoModel,
    check_denoise_work,
)
from tessera.models.native import sampler
from tessera.models.native.configs import NativeConfig, get_config
from tessera.models.native.dit import DiT
from tessera.models.native.vae import VideoVAE
from tessera.models.shapes import captions

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
WEIGHT_FILES = {"denoiser": "dit.safetensors", "vae": "vae.safetensors"}
TIME_TILE = 16
"""Latent frames decoded per time tile inside ``decode_latents`` (memory stays flat in duration)."""
SPATIAL_TILE = 48
SPATIAL_OVERLAP = 16
"""Latent cells per spatial decode tile and their overlap (larger latents are decoded in blended tiles)."""


def _resolve_device(config: NativeModelConfig) -> tuple[torch.device, torch.dtype]:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu")
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return device, dtype


def weights_version(folder: Path | None, native: NativeConfig) -> str:
    """Short sha256 over the weights files (all of them, so every stage reports the same version)."""
    digest = hashlib.sha256()
    files = [folder / name for name in sorted(WEIGHT_FILES.values())] if folder else []
    if not files or not all(path.is_file() for path in files):
        digest.update(b"random:" + native.model_dump_json().encode())
        return "random-" + digest.hexdigest()[:12]
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def _materialise(module: torch.nn.Module, path: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Fill a meta-device module from safetensors with accelerate, checking names match exactly."""
    from accelerate.utils import set_module_tensor_to_device

    state = load_file(str(path))
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for name, tensor in state.items():
        set_module_tensor_to_device(module, name, device, value=tensor, dtype=dtype)
    return module.eval().requires_grad_(False)


def pad_tokens(items: list[TextConditioning]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length captions into ``(B, N, D)`` tokens and a ``(B, N)`` mask."""
    length = max(item.tokens.shape[0] for item in items)
    dim = items[0].tokens.shape[1]
    tokens = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for index, item in enumerate(items):
        n = item.tokens.shape[0]
        tokens[index, :n] = item.tokens.float()
        mask[index, :n] = item.mask.bool()
    return tokens, mask


class NativeVideoModel(VideoModel):
    """Causal video VAE + spacetime-patch DiT + MiniLM text encoder, flow-matching sampler."""

    def __init__(
        self,
        native: NativeConfig,
        card: ModelCard,
        *,
        device: torch.device,
        dtype: torch.dtype,
        dit: DiT | None = None,
        vae: VideoVAE | None = None,
        text_encoder=None,
    ) -> None:
        self.native = native
        self.card = card
        self.device = device
        self.dtype = dtype
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, config: NativeModelConfig, parts: frozenset[str]) -> NativeVideoModel:
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        device, dtype = _resolve_device(config)
        folder = config.weights_dir if config.weights_dir is not None else SHIPPED_WEIGHTS / config.variant
        config_file = folder / "config.json"
        native = NativeConfig.model_validate_json(config_file.read_text()) if config_file.is_file() else get_config(config.variant)
        if native.name != config.variant:
            raise ValueError(f"weights in {folder} are variant {native.name!r}, config asks for {config.variant!r}")
        has_weights = all((folder / name).is_file() for name in WEIGHT_FILES.values())
        if not has_weights and not config.allow_random_weights:
            raise FileNotFoundError(
                f"no weights for native variant {config.variant!r} in {folder} (expected {sorted(WEIGHT_FILES.values())}); "
                "give NativeModelConfig.weights_dir, or allow_random_weights=True for tests and benchmarks"
            )
        card = ModelCard(
            family="native",
            name=native.name,
            version=weights_version(folder if has_weights else None, native),
            geometry=native.geometry(),
            limits=native.limits(),
        )
        dit = vae = text_encoder = None
        if "denoiser" in parts:
            dit = cls._build(lambda: DiT(native.dit, native.vae.latent_channels), folder / WEIGHT_FILES["denoiser"], has_weights, device, dtype)
        if "vae" in parts:
            # The VAE decodes in float32 on CPU; bf16 convs are fine on GPU.
            vae = cls._build(lambda: VideoVAE(native.vae), folder / WEIGHT_FILES["vae"], has_weights, device, dtype)
        if "text" in parts:
            from tessera.models.native.text_encoder import TextEncoder

            text_encoder = TextEncoder(config.text_encoder_path, max_tokens=native.text.max_tokens, device=device)
            if text_encoder.dim != native.dit.text_dim:
                raise ValueError(f"text encoder width {text_encoder.dim} does not match the DiT's text_dim {native.dit.text_dim}")
        return cls(native, card, device=device, dtype=dtype, dit=dit, vae=vae, text_encoder=text_encoder)

    @staticmethod
    def _build(factory, path: Path, has_weights: bool, device: torch.device, dtype: torch.dtype):
        if not has_weights:
            return factory().to(device=device, dtype=dtype).eval().requires_grad_(False)
        from accelerate import init_empty_weights

        with init_empty_weights():
            module = factory()
        return _materialise(module, path, device, dtype)

    @property
    def decoder_context_frames(self) -> int:
        """Latent frames of context a time tile needs for its decode to match an untiled decode."""
        return self.native.vae.decoder_context_frames

    def _require(self, part: str, value):
        if value is None:
            raise PartNotLoadedError(f"part {part!r} was not loaded; load_model(..., parts={{{part!r}, ...}})")
        return value

    # -- text -----------------------------------------------------------------------------
    def expand(self, prompt: str, character: str = "") -> str:
        return captions.expand(prompt, character)

    def encode_text(self, prompts: list[str]) -> list[TextConditioning]:
        return self._require("text", self.text_encoder).encode(prompts)

    # -- denoising ------------------------------------------------------------------------
    def sigmas(self, steps: int) -> list[float]:
        return sampler.flow_sigmas(steps, self.native.sampler.shift)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return sampler.add_noise(latents, noise, sigma)

    def check_work(self, item: DenoiseWork) -> None:
        check_denoise_work(item, self.native.vae.latent_channels, self.native.dit.patch_size)
        for text in (item.text, item.negative_text):
            if text is not None and (text.tokens.ndim != 2 or text.tokens.shape[1] != self.native.dit.text_dim):
                raise ValueError(f"text tokens must be (N, {self.native.dit.text_dim}), got {tuple(text.tokens.shape)}")

    @staticmethod
    def _uses_guidance(item: DenoiseWork) -> bool:
        return item.negative_text is not None and item.guidance_scale != 1.0

    @torch.no_grad()
    def step(self, work: list[DenoiseWork]) -> list[torch.Tensor]:
        dit = self._require("denoiser", self.dit)
        for item in work:
            self.check_work(item)
        # Items of one batch key (shape, sampler, guidance mode) and schedule length run as one
        # batch, each at its own noise levels.
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(work):
            groups[(self.batch_key(item), len(item.sigmas))].append(index)
        results: list[torch.Tensor | None] = [None] * len(work)
        for ((_, method, use_guidance), _), indices in groups.items():
            items = [work[i] for i in indices]
            out = self._step_batch(dit, items, method, use_guidance)
            for slot, index in enumerate(indices):
                results[index] = out[slot]
        return results  # type: ignore[return-value]

    def _step_batch(self, dit: DiT, items: list[DenoiseWork], method: str, use_guidance: bool) -> list[torch.Tensor]:
        device, dtype = self.device, self.dtype
        b = len(items)
        x = torch.stack([item.latents.float() for item in items]).to(device)  # (B, C, T, H, W) float32
        sigmas = torch.tensor([item.sigmas for item in items], dtype=torch.float32)  # (B, S)
        t = x.shape[2]
        known = torch.stack(
            [item.frames.latents.float() if item.frames is not None else torch.zeros_like(item.latents, dtype=torch.float32) for item in items]
        ).to(device)
        mask = torch.stack(
            [item.frames.mask.float() if item.frames is not None else torch.zeros(t) for item in items]
        ).to(device)  # (B, T)
        texts = [item.text for item in items] + ([item.negative_text for item in items] if use_guidance else [])
        tokens, token_mask = pad_tokens(texts)  # type: ignore[arg-type]
        tokens, token_mask = tokens.to(device, dtype), token_mask.to(device)
        fps = torch.tensor([item.fps for item in items], dtype=torch.float32, device=device)
        scale = torch.tensor([item.guidance_scale for item in items], dtype=torch.float32, device=device)
        starts_video = torch.tensor([item.starts_video for item in items], dtype=torch.bool, device=device)
        copies = 2 if use_guidance else 1

        def velocity(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # sigma (B,)
            batch = latents.repeat(copies, 1, 1, 1, 1).to(dtype)
            v = dit(
                batch,
                sigma.repeat(copies).to(device, dtype),
                tokens,
                token_mask,
                fps.repeat(copies).to(dtype),
                known.repeat(copies, 1, 1, 1, 1).to(dtype),
                mask.repeat(copies, 1).to(dtype),
                starts_video.repeat(copies),
            ).float()
            if not use_guidance:
                return v
            v_cond, v_uncond = v[:b], v[b:]
            return sampler.guided(v_cond, v_uncond, scale)

        out = sampler.sample(velocity, x, sigmas, method=method, known=known, mask=mask)
        # Given frames come back exactly as given (bitwise, in the caller's dtype).
        results = []
        for index, item in enumerate(items):
            latents = out[index].cpu().to(item.latents.dtype)
            if item.frames is not None:
                latents = item.frames.apply(latents)
            results.append(latents)
        return results

    # -- VAE ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        vae = self._require("vae", self.vae)
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        s = self.native.vae.spatial_factor
        if frames.shape[1] % s or frames.shape[2] % s:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be a multiple of {s}")
        # Pad to 1 + f*k frames by repeating the last frame (the extra latent tail is harmless).
        missing = self.geometry.time_grid.ceil_start(frames.shape[0]) - frames.shape[0]
        if missing:
            frames = torch.cat([frames, frames[-1:].expand(missing, -1, -1, -1)])
        x = frames.permute(3, 0, 1, 2)[None].to(self.device, self.dtype) / 127.5 - 1.0  # (1, 3, T, H, W)
        return vae.encode(x)[0].float().cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, context_frames: int = 0) -> torch.Tensor:
        """Decoded in time tiles of ``TIME_TILE`` latent frames with ``decoder_context_frames`` of
        context each (exact up to float rounding: the decoder is causal with that receptive field),
        and in blended spatial tiles when larger than ``SPATIAL_TILE`` latent cells."""
        vae = self._require("vae", self.vae)
        c = self.native.vae.latent_channels
        if latents.ndim != 4 or latents.shape[0] != c:
            raise ValueError(f"latents must be ({c}, T, H, W), got {tuple(latents.shape)}")
        total = latents.shape[1]
        if not 0 <= context_frames < total:
            raise ValueError(f"context_frames must be in [0, {total}), got {context_frames}")
        z = latents[None].to(self.device, self.dtype)
        context = self.decoder_context_frames
        pieces = []
        for start in range(context_frames, total, TIME_TILE):
            stop = min(total, start + TIME_TILE)
            first = max(0, start - context)
            tile_context = start - first
            if start == 0:
                pieces.append(self._decode_spatial(vae, z[:, :, :stop], 0))
            else:
                pieces.append(self._decode_spatial(vae, z[:, :, first:stop], tile_context))
        video = torch.cat(pieces, dim=2)[0]  # (3, T_out, H, W)
        return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()

    def _decode_spatial(self, vae: VideoVAE, z: torch.Tensor, context_frames: int) -> torch.Tensor:
        _, _, _, h, w = z.shape
        if h <= SPATIAL_TILE and w <= SPATIAL_TILE:
            return vae.decode(z, context_frames)
        s = self.native.vae.spatial_factor
        stride = SPATIAL_TILE - SPATIAL_OVERLAP
        out = weight = None
        for top in range(0, max(h - SPATIAL_OVERLAP, 1), stride):
            for left in range(0, max(w - SPATIAL_OVERLAP, 1), stride):
                bottom, right = min(h, top + SPATIAL_TILE), min(w, left + SPATIAL_TILE)
                top0, left0 = max(0, bottom - SPATIAL_TILE), max(0, right - SPATIAL_TILE)
                tile = vae.decode(z[:, :, :, top0:bottom, left0:right], context_frames).float()
                ramp = self._ramp(bottom - top0, top0 > 0, bottom < h, s)[:, None] * self._ramp(right - left0, left0 > 0, right < w, s)[None, :]
                if out is None:
                    out = torch.zeros(*tile.shape[:3], h * s, w * s, device=tile.device)
                    weight = torch.zeros(h * s, w * s, device=tile.device)
                out[..., top0 * s : bottom * s, left0 * s : right * s] += tile * ramp.to(tile.device)
                weight[top0 * s : bottom * s, left0 * s : right * s] += ramp.to(tile.device)
        return out / weight

    @staticmethod
    def _ramp(cells: int, fade_in: bool, fade_out: bool, factor: int) -> torch.Tensor:
        """Blend weights along one axis of a tile: linear ramps over the overlap on inner edges."""
        n = cells * factor
        ramp = torch.ones(n)
        width = SPATIAL_OVERLAP * factor
        edge = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        if fade_in:
            ramp[:width] = edge
        if fade_out:
            ramp[-width:] = torch.minimum(ramp[-width:], edge.flip(0))
        return ramp

