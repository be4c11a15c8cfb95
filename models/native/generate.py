"""Generate a clip through the stage interface alone (the path serving takes, in one process).

Used by the evaluator, the benches and the tests, so what they measure is what a deployment
built from ``encode_text`` / ``step`` / ``decode_latents`` produces, noise included
(:func:`tessera.models.interface.frame_noise`).
"""

from __future__ import annotations

import torch

from tessera.models.interface import DenoiseWork, FrameCondition, VideoModel, frame_noise


def image_latent(model: VideoModel, image: torch.Tensor, *, first: bool) -> torch.Tensor:
    """Latent frame ``(C, H, W)`` of a still image ``(H, W, 3)`` uint8.

    The first latent frame of a video encodes one pixel frame, every later one encodes a group
    of ``temporal_factor`` frames, so an image placed anywhere but first is encoded as a still
    group (the image repeated), which is what the model saw in training at those positions.
    """
    if first:
        return model.encode_video(image[None])[:, 0]
    repeated = image[None].expand(model.geometry.pixel_frames(2), -1, -1, -1)
    return model.encode_video(repeated)[:, 1]


def generate_latents(
    model: VideoModel,
    caption: str,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 4.0,
    sampler: str = "euler",
    frames: FrameCondition | None = None,
    negative_caption: str = "",
) -> torch.Tensor:
    """Latents ``(C, T, h, w)`` for an already expanded caption, in one window."""
    geometry = model.geometry
    c, t, h, w = geometry.latent_shape(num_frames, height, width)
    text, negative = model.encode_text([caption, negative_caption])
    sigmas = model.sigmas(steps)
    noise = frame_noise(seed, 0, t, (c, h, w))
    work = DenoiseWork(
        latents=noise,
        sigmas=tuple(sigmas),
        text=text,
        negative_text=negative,
        guidance_scale=guidance_scale,
        fps=fps,
        frames=frames,
        sampler=sampler,  # type: ignore[arg-type]
    )
    return model.step([work])[0]


def generate_video(
    model: VideoModel,
    prompt: str,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    expand: bool = True,
    **kwargs,
) -> torch.Tensor:
    """uint8 frames ``(num_frames, height, width, 3)`` for a prompt (expanded by default)."""
    caption = model.expand(prompt) if expand else prompt
    latents = generate_latents(model, caption, width=width, height=height, num_frames=num_frames, fps=fps, **kwargs)
    return model.decode_latents(latents)[:num_frames]
