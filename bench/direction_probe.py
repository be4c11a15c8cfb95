"""Where in the noise schedule does the DiT use the prompted direction? (diagnostic of issue 3)

The tiny checkpoint follows colour but not direction. This probe separates "the model does not
know the direction" from "the sampler does not use what the model knows":

1. Loss gap by noise level. Real clips of objects moving left/right/up/down are encoded with
   the model's VAE; at each noise level sigma the flow-matching loss is computed with the true
   caption, with the caption naming the opposite direction, and with the true caption on the
   time-reversed clip (same noise). A model that uses the direction has a lower loss for the
   true pairing: the reported figure is how often it does (0.5 = no preference).
2. Sampler sweep. Direction accuracy of generated clips under other guidance scales, schedule
   shifts, step counts and the Heun sampler: whether sampling alone can recover the direction.

    python bench/direction_probe.py [--weights DIR] [--clips 48] [--sweep-clips 40]

Writes ``bench/results/direction_probe.json`` and ``.png``. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_tiny import full_prompt, specs_for  # noqa: E402
from harness import machine, plot, write_results  # noqa: E402

from tessera.models import NativeModelConfig, load_model  # noqa: E402
from tessera.models.interface import DenoiseWork, frame_noise  # noqa: E402
from tessera.models.native.pipeline import pad_tokens  # noqa: E402
from tessera.models.native.sampler import flow_sigmas  # noqa: E402
from tessera.models.shapes.captions import detailed_caption  # noqa: E402
from tessera.models.shapes.evaluate import score_clip, summarize  # noqa: E402
from tessera.models.shapes.world import render  # noqa: E402

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SIGMAS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
SWEEP = (
    {"name": "default (euler 25, guidance 4, shift 3)"},
    {"name": "guidance 7", "guidance": 7.0},
    {"name": "guidance 12", "guidance": 12.0},
    {"name": "shift 1", "shift": 1.0},
    {"name": "shift 6", "shift": 6.0},
    {"name": "euler 50 steps", "steps": 50},
    {"name": "heun 25 steps", "sampler": "heun"},
)


@torch.no_grad()
def loss_gap(model, clips: int, seed: int) -> list[dict]:
    """Per noise level: mean losses and how often the true pairing has the lower loss."""
    rng = np.random.default_rng(seed)
    specs = specs_for(rng, clips, split="train", width=64, height=64)
    x0 = torch.stack([model.encode_video(torch.from_numpy(render(spec))) for spec in specs])  # (B, C, T, h, w)
    true_text = model.encode_text([detailed_caption(spec.attributes()) for spec in specs])
    wrong_text = model.encode_text([detailed_caption({**spec.attributes(), "motion": OPPOSITE[spec.motion]}) for spec in specs])
    fps = torch.tensor([spec.fps for spec in specs])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    reversed_x0 = x0.flip(2)
    rows = []
    for sigma in SIGMAS:
        s = torch.full((len(specs),), sigma)

        def loss(clean: torch.Tensor, text) -> torch.Tensor:
            tokens, mask = pad_tokens(text)
            velocity = model.dit((1 - sigma) * clean + sigma * noise, s, tokens, mask, fps)
            return (velocity - (noise - clean)).pow(2).mean(dim=(1, 2, 3, 4))  # (B,)

        true, wrong, backwards = loss(x0, true_text), loss(x0, wrong_text), loss(reversed_x0, true_text)
        rows.append({
            "sigma": sigma,
            "loss_true": true.mean().item(),
            "loss_opposite_caption": wrong.mean().item(),
            "loss_reversed_clip": backwards.mean().item(),
            "prefers_true_over_opposite_caption": (true < wrong).float().mean().item(),
            "prefers_true_over_reversed_clip": (true < backwards).float().mean().item(),
        })
        print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def sampler_sweep(model, clips: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 1])
    specs = specs_for(rng, clips, split="train", width=64, height=64)
    prompt_of = full_prompt(seed)
    rows = []
    for setting in SWEEP:
        steps, shift = setting.get("steps", 25), setting.get("shift", model.native.sampler.shift)
        scores = []
        for index, spec in enumerate(specs):
            text, negative = model.encode_text([model.expand(prompt_of(spec, index)), ""])
            c, t, h, w = model.geometry.latent_shape(spec.num_frames, spec.height, spec.width)
            work = DenoiseWork(latents=frame_noise(index, 0, t, (c, h, w)), sigmas=tuple(flow_sigmas(steps, shift)),
                               text=text, negative_text=negative, guidance_scale=setting.get("guidance", 4.0),
                               fps=spec.fps, frames=None, sampler=setting.get("sampler", "euler"))
            video = model.decode_latents(model.step([work])[0])[: spec.num_frames]
            scores.append(score_clip(video.numpy(), expected=spec.attributes(), true_speed=spec.speed_px_per_frame, group="sweep"))
        summary = summarize(scores)
        rows.append({**setting, "clips": len(scores), "direction_accuracy": summary["direction_accuracy"],
                     "colour_accuracy": summary["colour_accuracy"], "mean_jump_ratio": summary["mean_jump_ratio"]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped tiny model)")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--sweep-clips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(NativeModelConfig(weights_dir=args.weights, torch_threads=2))
    started = time.monotonic()
    gap = loss_gap(model, args.clips, args.seed)
    sweep = sampler_sweep(model, args.sweep_clips, args.seed)
    write_results("direction_probe", {
        "benchmark": "direction_probe", "machine": machine(), "model": model.card.version,
        "loss_gap": gap, "sampler_sweep": sweep, "seconds": round(time.monotonic() - started, 1),
    })

    def draw(plt):
        _, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        sigmas = [row["sigma"] for row in gap]
        left.plot(sigmas, [row["prefers_true_over_opposite_caption"] for row in gap], "o-", label="true caption beats opposite direction")
        left.plot(sigmas, [row["prefers_true_over_reversed_clip"] for row in gap], "s-", label="clip beats its time reversal")
        left.axhline(0.5, color="grey", linestyle=":", label="no preference")
        left.set(xlabel="noise level sigma", ylabel="fraction of clips", title="Does the DiT use the direction?", ylim=(0, 1))
        left.legend(fontsize=7)
        names = [row["name"] for row in sweep]
        right.barh(names, [row["direction_accuracy"] for row in sweep])
        right.axvline(0.25, color="grey", linestyle=":", label="chance")
        right.axvline(0.8, color="red", linestyle="--", label="bar")
        right.set(xlabel="direction accuracy", title="Sampler settings", xlim=(0, 1))
        right.tick_params(axis="y", labelsize=7)
        right.legend(fontsize=7)

    plot("direction_probe", draw)


if __name__ == "__main__":
    main()
