"""Regression guard for the committed tiny checkpoint: a loose version of its quality bars on a
small sample (the full evaluation is bench/eval_tiny.py, figures in MODEL_CARD.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.models import FrameCondition, NativeModelConfig, load_model
from tessera.models.native.generate import generate_latents, generate_video, image_latent
from tessera.models.shapes.evaluate import psnr, score_clip, summarize
from tessera.models.shapes.world import render, sample_spec

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "tiny"
DIRECTIONS = ("left", "right", "up", "down")


@pytest.fixture(scope="module")
def model():
    return load_model(NativeModelConfig(torch_threads=2))


def _specs(split: str, count: int, seed: int, width: int = 64, height: int = 64):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split=split, width=width, height=height, fps=8.0, num_frames=29,
                        overrides={"motion": DIRECTIONS[i % 4]}) for i in range(count)]


def _generate(model, specs):
    scores = []
    for index, spec in enumerate(specs):
        prompt = f"a {spec.size} {spec.colour} {spec.shape} moving {spec.motion} {spec.speed if spec.speed != 'medium' else 'steadily'}"
        video = generate_video(model, prompt, width=spec.width, height=spec.height, num_frames=spec.num_frames,
                               fps=spec.fps, seed=index, steps=25)
        scores.append(score_clip(video, expected=spec.attributes(), true_speed=spec.speed_px_per_frame))
    return summarize(scores)


def test_committed_weights_are_small_and_versioned(model):
    files = sorted(WEIGHTS.glob("*.safetensors"))
    assert {f.name for f in files} == {"dit.safetensors", "vae.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 50 * 2**20
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    assert model.card.version == digest
    assert (WEIGHTS / "MODEL_CARD.md").is_file()


def test_vae_reconstructs_colour_and_motion(model):
    rng = np.random.default_rng(3)
    scores, values = [], []
    for width, height in ((64, 64), (96, 64), (64, 96), (80, 64)):
        spec = sample_spec(rng, split="all", width=width, height=height, num_frames=21, overrides={"motion": "right"})
        truth = render(spec)
        video = model.decode_latents(model.encode_video(torch.from_numpy(truth)))[: spec.num_frames]
        values.append(psnr(video, truth))
        scores.append(score_clip(video, expected=spec.attributes(), true_speed=spec.speed_px_per_frame))
    summary = summarize(scores)
    assert min(values) > 22.0
    assert summary["colour_accuracy"] == 1.0 and summary["direction_accuracy"] == 1.0


def test_follows_prompts_on_seen_combinations(model):
    summary = _generate(model, _specs("train", 8, seed=11))
    assert summary["colour_accuracy"] >= 0.75
    # Direction is not guarded: the shipped checkpoint does not follow it yet (29% on the full
    # evaluation, chance 25%; see MODEL_CARD.md). Object and speed are.
    assert summary["visibility"] >= 0.8
    assert 0.5 < summary["mean_jump_ratio"] < 2.0


def test_follows_prompts_on_held_out_combinations_and_other_aspect(model):
    summary = _generate(model, _specs("heldout", 4, seed=12, width=96, height=64))
    assert summary["colour_accuracy"] >= 0.5
    assert summary["visibility"] >= 0.7


def test_first_frame_condition_is_kept_and_motion_continues(model):
    spec = _specs("train", 1, seed=13)[0]
    truth = torch.from_numpy(render(spec))
    c, t, h, w = model.geometry.latent_shape(spec.num_frames, spec.height, spec.width)
    known, mask = torch.zeros(c, t, h, w), torch.zeros(t)
    known[:, 0] = image_latent(model, truth[0], first=True)
    mask[0] = 1
    caption = model.expand(f"a {spec.colour} {spec.shape} moving {spec.motion}")
    latents = generate_latents(model, caption, width=64, height=64, num_frames=29, fps=8.0, seed=5, steps=25,
                               frames=FrameCondition(known, mask))
    assert torch.equal(latents[:, 0], known[:, 0])
    video = model.decode_latents(latents)
    assert psnr(video[0], truth[0]) > 22.0
    score = score_clip(video, expected=spec.attributes())
    assert score.visibility >= 0.8 and score.colour_correct
