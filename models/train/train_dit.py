"""Train the tiny DiT in latent space on cached shapes-world clips.

    python -m tessera.models.train.train_dit --out runs/dit --vae runs/vae --steps 6000 --max-minutes 100
    python -m tessera.models.train.train_dit --out runs/dit --vae runs/vae --resume
    python -m tessera.models.train.train_dit --out runs/smoke --vae runs/vae --smoke

The first run builds ``OUT/cache.pt`` (VAE latents of rendered clips, MiniLM tokens of the
caption bank, see ``latent_cache.py``). Each step draws one size bucket and one window length,
random windows of cached clips (half of them starting at the video's first latent frame), one
caption per clip (10% empty, for classifier-free guidance) and a random frame mask (none,
first, last, first+last, prefix, suffix). Loss: flow-matching velocity MSE on the frames that
are not given, noise levels from a logit-normal. Every batch is a pure function of
(seed, step), so ``--resume`` continues exactly.

``--entering-share`` of the cached clips start with the object on the side opposite its motion
(``world.sample_spec(start_policy="entering")``): the v2 recipe's answer to direction (see
``README_v2.md``). Every ``--eval-every`` steps the run exports, generates ``--eval-clips``
clips and runs the direction probe (``direction_probe``), the cheap early signal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tessera.models.interface import ModelCard
from tessera.models.native.configs import DiTConfig, NativeConfig, VAEConfig, get_config
from tessera.models.native.dit import DiT
from tessera.models.native.pipeline import NativeVideoModel
from tessera.models.native.text_encoder import TextEncoder
from tessera.models.native.vae import VideoVAE
from tessera.models.shapes.captions import expand
from tessera.models.shapes.evaluate import score_clip, summarize
from tessera.models.shapes.world import NATIVE_FPS, sample_spec
from tessera.models.native.generate import generate_video
from tessera.models.train.common import (
    EMA,
    RunLog,
    export_safetensors,
    lr_at,
    resume_or_start,
    save_checkpoint,
    step_generator,
    step_rng,
)
from tessera.models.train.latent_cache import ATTRIBUTE_KEYS, build_caption_bank, build_latent_buckets, load_cache, save_cache

BUCKET_WEIGHTS = (0.4, 0.3, 0.3)  # square, landscape, portrait
WINDOWS = ((8, 0.55), (6, 0.1), (4, 0.1), (2, 0.1), (1, 0.15))
"""(latent frames, probability): mostly the native window, also shorter ones and images."""
TOKENS_PER_BATCH = 24 * 8 * 16
"""Batch size shrinks with window length and frame size so each step costs about the same."""
MASKS = (("none", 0.5), ("first", 0.15), ("last", 0.075), ("first_last", 0.075), ("prefix", 0.1), ("suffix", 0.1))
CAPTION_DROPOUT = 0.1


def load_vae(folder: Path) -> VideoVAE:
    raw = json.loads((folder / "vae_config.json").read_text())
    raw.pop("trained_steps", None)
    vae = VideoVAE(VAEConfig.model_validate(raw))
    vae.load_state_dict({k: v.float() for k, v in load_file(str(folder / "vae.safetensors")).items()})
    return vae.eval().requires_grad_(False)


def _weighted(rng: np.random.Generator, options):
    weights = np.array([o[1] for o in options])
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def frame_mask(rng: np.random.Generator, length: int) -> np.ndarray:
    """A random frame-conditioning mask over ``length`` latent frames (1 = given)."""
    mask = np.zeros(length, dtype=np.float32)
    if length < 2:
        return mask
    kind = _weighted(rng, MASKS)
    if kind == "first":
        mask[0] = 1
    elif kind == "last":
        mask[-1] = 1
    elif kind == "first_last":
        mask[[0, -1]] = 1
    elif kind == "prefix":
        mask[: int(rng.integers(1, length))] = 1
    elif kind == "suffix":
        mask[-int(rng.integers(1, length)) :] = 1
    return mask


def make_batch(rng: np.random.Generator, buckets, bank, batch_scale: float = 1.0):
    bucket = buckets[int(rng.choice(len(buckets), p=np.array(BUCKET_WEIGHTS[: len(buckets)]) / sum(BUCKET_WEIGHTS[: len(buckets)])))]
    total_frames = bucket.latents.shape[2]
    length = min(_weighted(rng, WINDOWS), total_frames)
    tokens_per_clip = length * bucket.latents.shape[3] * bucket.latents.shape[4] / 4
    batch = max(2, min(96, int(TOKENS_PER_BATCH * batch_scale / tokens_per_clip)))
    clips = rng.integers(bucket.latents.shape[0], size=batch)
    starts = np.where(rng.random(batch) < 0.5, 0, rng.integers(0, total_frames - length + 1, size=batch))
    x0 = torch.stack([bucket.latents[c, :, s : s + length] for c, s in zip(clips, starts)]).float()
    caption_ids = [
        bank.empty if rng.random() < CAPTION_DROPOUT else int(rng.choice(bank.by_attributes[bucket.attributes[c]]))
        for c in clips
    ]
    longest = int(bank.lengths[caption_ids].max())
    tokens = bank.tokens[caption_ids, :longest].float()
    token_mask = torch.arange(longest)[None, :] < bank.lengths[caption_ids][:, None]
    mask = torch.from_numpy(np.stack([frame_mask(rng, length) for _ in range(batch)]))
    return x0, tokens, token_mask, bucket.fps[clips].float(), mask, torch.from_numpy(starts == 0)


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@torch.no_grad()
def direction_probe(dit: DiT, buckets, bank, seed: int, clips: int = 48, sigma_range=(0.9, 0.99), entering: bool = True,
                    length: int = 8) -> dict[str, float]:
    """Does the caption's direction word lower the loss? For cached 64x64 clips (windows from the
    first latent frame), the flow loss with the clip's own caption against the same caption
    with the opposite direction word, at the same noise and noise level: the share of clips
    where the true caption wins (0.5 = the model ignores direction) and the mean relative gap.
    At high noise this can beat 0.5 only when clips' first frames differ by direction
    (``entering`` starts); ``entering=False`` and middle noise probe the frame-to-frame relation."""
    bucket = buckets[0]
    rng = np.random.default_rng([seed, 7, int(entering)])
    motion_index = ATTRIBUTE_KEYS.index("motion")
    flags = bucket.entering if bucket.entering is not None else torch.zeros(len(bucket.attributes), dtype=torch.bool)
    candidates = []
    for index, key in enumerate(bucket.attributes):
        if key[motion_index] not in OPPOSITE or bool(flags[index]) != entering:
            continue
        flipped = key[:motion_index] + (OPPOSITE[key[motion_index]],) + key[motion_index + 1 :]
        if key in bank.by_attributes and flipped in bank.by_attributes:
            candidates.append((index, key, flipped))
    if not candidates:
        return {}
    picks = [candidates[int(i)] for i in rng.choice(len(candidates), size=min(clips, len(candidates)), replace=False)]
    length = min(length, bucket.latents.shape[2])
    x0 = torch.stack([bucket.latents[i, :, :length] for i, _, _ in picks]).float()  # (B, C, T, h, w)
    b = x0.shape[0]
    generator = torch.Generator().manual_seed(seed + 17)
    sigma = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * torch.rand(b, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    xt = (1 - sigma.view(b, 1, 1, 1, 1)) * x0 + sigma.view(b, 1, 1, 1, 1) * noise
    fps = bucket.fps[[i for i, _, _ in picks]].float()
    losses = []
    for keys in ([key for _, key, _ in picks], [flipped for _, _, flipped in picks]):
        ids = [int(bank.by_attributes[key][0]) for key in keys]
        longest = int(bank.lengths[ids].max())
        tokens = bank.tokens[ids, :longest].float()
        token_mask = torch.arange(longest)[None, :] < bank.lengths[ids][:, None]
        velocity = dit(xt, sigma, tokens, token_mask, fps)
        losses.append((velocity - (noise - x0)).pow(2).flatten(1).mean(dim=1))
    true_loss, wrong_loss = losses
    return {"true_wins": float((true_loss < wrong_loss).float().mean()),
            "relative_gap": float(((wrong_loss - true_loss) / wrong_loss).mean()), "clips": b}


def flow_loss(dit: DiT, batch, generator: torch.Generator, sigma_shift: float = 1.0) -> torch.Tensor:
    x0, tokens, token_mask, fps, mask, starts_video = batch
    b = x0.shape[0]
    # Logit-normal noise levels, shifted towards high noise: where the object's place and path
    # are decided. Unshifted, sigma > 0.9 is drawn 1.4% of the time and the sampler's first
    # steps are barely trained (frames came out coherent in colour but not in motion).
    u = torch.sigmoid(torch.randn(b, generator=generator))
    sigma = sigma_shift * u / (1 + (sigma_shift - 1) * u)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma.view(b, 1, 1, 1, 1)
    given = mask[:, None, :, None, None].bool()
    xt = torch.where(given, x0, (1 - s) * x0 + s * noise)
    velocity = dit(xt, sigma, tokens, token_mask, fps, known=x0, mask=mask, starts_video=starts_video)
    free = (~given).float().expand_as(x0)
    return ((velocity - (noise - x0)).pow(2) * free).sum() / free.sum().clamp_min(1.0)


@torch.no_grad()
def quick_eval(native: NativeConfig, dit: DiT, vae: VideoVAE, encoder: TextEncoder, seed: int, clips: int, steps: int = 15):
    """Generate a few 64x64 clips (seen and held-out prompts) and score them."""
    card = ModelCard("native", native.name, "training", native.geometry(), native.limits())
    model = NativeVideoModel(native, card, device=torch.device("cpu"), dtype=torch.float32, dit=dit.eval(), vae=vae, text_encoder=encoder)
    rng = np.random.default_rng([seed, 99])
    scores = []
    for index in range(clips):
        split = "heldout" if index % 4 == 3 else "train"
        spec = sample_spec(rng, split=split, width=64, height=64, fps=NATIVE_FPS, num_frames=29, motions=("left", "right", "up", "down"))
        prompt = f"a {spec.colour} {spec.shape} moving {spec.motion}"
        video = generate_video(model, prompt, width=64, height=64, num_frames=29, fps=NATIVE_FPS, seed=index, steps=steps,
                               guidance_scale=native.sampler.default_guidance_scale)
        scores.append(score_clip(video, expected=spec.attributes(), true_speed=None, group=split))
    return summarize(scores)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vae", type=Path, required=True, help="VAE run folder (vae.safetensors, vae_config.json)")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this folder's dit.safetensors (same architecture) instead of random weights")
    parser.add_argument("--entering-share", type=float, default=0.0,
                        help="share of cached clips whose object starts on the side opposite its motion")
    parser.add_argument("--cache", type=Path, default=None, help="latent cache file (default OUT/cache.pt)")
    parser.add_argument("--clips", type=int, default=15000, help="clips in the latent cache")
    parser.add_argument("--cache-frames", type=int, default=12, help="latent frames per cached clip")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-scale", type=float, default=1.0, help="multiplies the tokens per batch")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--sigma-shift", type=float, default=3.0, help="shift of the training noise levels towards 1")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-clips", type=int, default=16)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = RunLog(args.out / "log.jsonl")
    device = torch.device(args.device)
    vae = load_vae(args.vae)
    native = get_config(args.variant).model_copy(update={"vae": vae.config})
    dit_config: DiTConfig = native.dit
    if args.smoke:
        dit_config = dit_config.model_copy(update={"hidden_size": 32, "depth": 1, "num_heads": 2})
        native = native.model_copy(update={"dit": dit_config})
        args.clips, args.cache_frames, args.steps = 6, 3, 4
        args.checkpoint_every, args.log_every, args.eval_every, args.eval_clips = 2, 2, 4, 1
        args.batch_scale = 0.02

    encoder = TextEncoder(max_tokens=native.text.max_tokens)
    cache_path = args.cache or args.out / "cache.pt"
    if cache_path.exists():
        bank, buckets, meta = load_cache(cache_path)
        log.write({"event": "cache_loaded", "captions": len(bank.texts), "clips": sum(len(b.attributes) for b in buckets)})
    else:
        started = time.monotonic()
        buckets = build_latent_buckets(vae, args.seed, args.clips, args.cache_frames, log=lambda m: log.write({"event": m}),
                                       entering_share=args.entering_share)
        combinations = {key for bucket in buckets for key in bucket.attributes}
        bank = build_caption_bank(encoder, args.seed, combinations, per_combination=2 if args.smoke else 5)
        log.write({"event": "captions_encoded", "captions": len(bank.texts), "seconds": round(time.monotonic() - started, 1)})
        meta = {"clips": args.clips, "cache_frames": args.cache_frames, "seed": args.seed, "entering_share": args.entering_share}
        save_cache(cache_path, bank, buckets, meta)
        log.write({"event": "cache_built", "seconds": round(time.monotonic() - started, 1)})

    dit = DiT(dit_config, native.vae.latent_channels)
    if args.init_from is not None and not (args.resume and (args.out / "checkpoint.pt").exists()):
        missing, unexpected = dit.load_state_dict(
            {k: v.float() for k, v in load_file(str(args.init_from / "dit.safetensors")).items()}, strict=False)
        # Only parameters the source lacks by design may stay at their (zero) initialisation.
        if unexpected or any(not name.startswith("start_embed.") for name in missing):
            raise ValueError(f"{args.init_from} does not match the DiT: missing {missing}, unexpected {unexpected}")
        log.write({"event": "init_from", "folder": str(args.init_from), "new_parameters": missing})
    dit = dit.to(device)
    log.write({"event": "model", "dit_params": sum(p.numel() for p in dit.parameters()),
               "vae_params": sum(p.numel() for p in vae.parameters())})
    ema = EMA(dit, args.ema_decay)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    checkpoint_path = args.out / "checkpoint.pt"
    step = resume_or_start(
        checkpoint_path, args.resume, dit, ema, optimizer, log,
        {"config": native.model_dump(mode="json"), "args": {k: str(v) for k, v in vars(args).items()}},
    )

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, model=dit.state_dict(), ema=ema.model.state_dict(),
                        optimizer=optimizer.state_dict(), step=step, config=native.model_dump(mode="json"))

    def export() -> None:
        export_safetensors(ema.model, args.out / "dit.safetensors")
        (args.out / "config.json").write_text(native.model_dump_json(indent=2))
        (args.out / "training.json").write_text(json.dumps({"dit_steps": step, "cache": meta, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))

    started = time.monotonic()
    seen = 0
    while step < args.steps:
        batch = make_batch(step_rng(args.seed, step), buckets, bank, args.batch_scale)
        batch = tuple(t.to(device) for t in batch)
        lr = lr_at(step, base_lr=args.lr, warmup=200, total=args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dit.train()
        loss = flow_loss(dit, batch, step_generator(args.seed, step), args.sigma_shift)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0).item()
        optimizer.step()
        ema.update(dit, step)
        step += 1
        seen += batch[0].shape[0]
        if step % args.log_every == 0 or step == args.steps:
            log.write({"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm, "shape": list(batch[0].shape),
                       "samples": seen, "elapsed_s": round(time.monotonic() - started, 1)})
        if step % args.checkpoint_every == 0:
            checkpoint()
        if step % args.eval_every == 0:
            export()
            summary = quick_eval(native, ema.model, vae, encoder, args.seed, args.eval_clips, steps=4 if args.smoke else 15)
            probes = {
                "probe_entering_high_noise": direction_probe(ema.model, buckets, bank, args.seed, entering=True),
                "probe_uniform_high_noise": direction_probe(ema.model, buckets, bank, args.seed, entering=False),
                "probe_uniform_mid_noise": direction_probe(ema.model, buckets, bank, args.seed, entering=False,
                                                           sigma_range=(0.4, 0.7)),
            }
            log.write({"event": "eval", "step": step, **summary, **probes})
        if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
            log.write({"event": "time_limit", "step": step})
            break
    checkpoint()
    export()
    log.write({"event": "export", "step": step})


if __name__ == "__main__":
    main()
