"""Precomputed training data for the DiT: VAE latents of rendered clips and encoded captions.

The DiT trains on random time windows of these cached latent clips, so neither the VAE nor
the text encoder runs in the training loop (on 2 CPU cores they would cost as much as the DiT
itself). Clips are longer than the native window so a window can start at the video's first
(image-like) latent frame or in the middle of a video, as time tiles do when serving.

Captions: every training-split attribute combination gets a few captions (short phrasings,
expanded short prompts, the full detailed caption); a clip draws one of its combination's
captions at each step.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from tessera.models.interface import TimeGrid

from tessera.models.native.text_encoder import TextEncoder
from tessera.models.native.vae import VideoVAE
from tessera.models.shapes.captions import all_attribute_tuples, training_captions
from tessera.models.shapes.world import HELD_OUT, TRAIN_FPS, TRAIN_SIZES, render, sample_spec

ATTRIBUTE_KEYS = ("colour", "shape", "size", "speed", "motion", "background")


def attribute_key(attributes: dict[str, str]) -> tuple[str, ...]:
    return tuple(attributes[key] for key in ATTRIBUTE_KEYS)


@dataclasses.dataclass
class CaptionBank:
    tokens: torch.Tensor  # (K, N, D) float16, zero padded
    lengths: torch.Tensor  # (K,) int64 real tokens per caption
    texts: list[str]
    by_attributes: dict[tuple[str, ...], list[int]]
    """Caption indices describing each full attribute combination (train split only)."""
    empty: int
    """Index of the empty caption (the unconditional branch)."""


def build_caption_bank(
    encoder: TextEncoder,
    seed: int,
    combinations: set[tuple[str, ...]] | None = None,
    per_combination: int = 5,
    batch_size: int = 128,
) -> CaptionBank:
    """Captions for every training combination (or only ``combinations``), encoded once."""
    rng = np.random.default_rng([seed, 11])
    texts: list[str] = [""]
    index_of: dict[str, int] = {"": 0}
    by_attributes: dict[tuple[str, ...], list[int]] = {}
    for attributes in all_attribute_tuples():
        if (attributes["colour"], attributes["shape"], attributes["motion"]) in HELD_OUT:
            continue
        if combinations is not None and attribute_key(attributes) not in combinations:
            continue
        ids = []
        for caption in training_captions(attributes, rng, per_combination):
            if caption not in index_of:
                index_of[caption] = len(texts)
                texts.append(caption)
            ids.append(index_of[caption])
        by_attributes[attribute_key(attributes)] = sorted(set(ids))
    # Encode shortest first so padding inside a batch stays small.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    encoded: list[torch.Tensor | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        tokens, mask = encoder.encode_batch([texts[i] for i in chunk])
        for row, index in enumerate(chunk):
            encoded[index] = tokens[row, : int(mask[row].sum())].half()
    longest = max(t.shape[0] for t in encoded)  # type: ignore[union-attr]
    tokens = torch.zeros(len(texts), longest, encoder.dim, dtype=torch.float16)
    lengths = torch.zeros(len(texts), dtype=torch.int64)
    for index, value in enumerate(encoded):
        tokens[index, : value.shape[0]] = value  # type: ignore[union-attr]
        lengths[index] = value.shape[0]  # type: ignore[union-attr]
    return CaptionBank(tokens, lengths, texts, by_attributes, empty=0)


@dataclasses.dataclass
class LatentBucket:
    """Cached clips of one frame size."""

    width: int
    height: int
    latents: torch.Tensor  # (N, C, T, h, w) float16, normalised
    fps: torch.Tensor  # (N,) float32
    attributes: list[tuple[str, ...]]
    entering: torch.Tensor | None = None
    """(N,) bool: the clip's object starts on the side opposite its motion (``start_policy
    "entering"``); None in caches built before start policies existed (all uniform)."""


@torch.no_grad()
def build_latent_buckets(
    vae: VideoVAE, seed: int, clips: int, latent_frames: int, batch_size: int = 16, log=print, entering_share: float = 0.0
) -> list[LatentBucket]:
    """Render ``clips`` training-split clips spread over the training sizes and encode them;
    ``entering_share`` of them start with the object on the side opposite its motion."""
    geometry_frames = TimeGrid(vae.config.temporal_factor).pixel_frames(latent_frames)
    buckets = []
    per_bucket = [clips // len(TRAIN_SIZES)] * len(TRAIN_SIZES)
    started = time.monotonic()
    for bucket_index, (width, height) in enumerate(TRAIN_SIZES):
        rng = np.random.default_rng([seed, 21, bucket_index])
        latents, fps_values, attributes, entering = [], [], [], []
        for start in range(0, per_bucket[bucket_index], batch_size):
            count = min(batch_size, per_bucket[bucket_index] - start)
            policies = ["entering" if rng.random() < entering_share else "uniform" for _ in range(count)]
            specs = [
                sample_spec(rng, split="train", width=width, height=height, num_frames=geometry_frames,
                            fps=float(TRAIN_FPS[int(rng.integers(len(TRAIN_FPS)))]), start_policy=policy)
                for policy in policies
            ]
            entering += [policy == "entering" for policy in policies]
            pixels = np.stack([render(spec) for spec in specs]).astype(np.float32) / 127.5 - 1.0
            x = torch.from_numpy(pixels).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
            latents.append(vae.encode(x).half())
            fps_values += [spec.fps for spec in specs]
            attributes += [attribute_key(spec.attributes()) for spec in specs]
        bucket = LatentBucket(width, height, torch.cat(latents), torch.tensor(fps_values), attributes, torch.tensor(entering))
        log(f"cached {len(attributes)} clips at {width}x{height}: latents {tuple(bucket.latents.shape)} "
            f"({time.monotonic() - started:.0f} s)")
        buckets.append(bucket)
    return buckets


def save_cache(path: Path, bank: CaptionBank, buckets: list[LatentBucket], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"bank": dataclasses.asdict(bank), "buckets": [dataclasses.asdict(b) for b in buckets], "meta": meta}, path)


def load_cache(path: Path) -> tuple[CaptionBank, list[LatentBucket], dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return CaptionBank(**state["bank"]), [LatentBucket(**b) for b in state["buckets"]], state["meta"]
