"""Train the tiny causal video VAE on the shapes world.

    python -m tessera.models.train.train_vae --out runs/vae --steps 4000 --max-minutes 50
    python -m tessera.models.train.train_vae --out runs/vae --resume      # continue
    python -m tessera.models.train.train_vae --out runs/smoke --smoke     # ~30 s check
    python -m tessera.models.train.train_vae --out runs/vae_v2 --variant tiny-v2 --threads 1 \
        --steps 6000 --eval-every 500                                     # VAE v2 (see README_v2.md)

Clips are rendered on the fly (cheap) with a per-step seed, so a resumed run sees the same
data as an uninterrupted one. The loss is L1 + MSE with object pixels weighted up (the object
is a small part of the frame and its colour is what the evaluator reads), an L1 term on
frame-to-frame differences (``--temporal-loss-weight``, alias ``--motion-weight``: motion
inside each latent frame's group of pixel frames and across group boundaries), optionally an
extra weight on the differences across group boundaries (``--boundary-loss-weight``), and a
small KL.
The EMA weights are exported with per-channel latent statistics that normalise latents for
the DiT. ``--eval-every`` scores the EMA weights on the quick fixed VAE evaluation set
(``vae_eval.py``: PSNR, latent-group boundary/inside jump ratio, direction) in the log.
Checkpoints (model, EMA, optimizer, step, config) go to ``OUT/checkpoint.pt`` every
``--checkpoint-every`` steps and at least every ``--checkpoint-minutes``; ``--resume`` takes
the architecture from the checkpoint, so only ``--out`` (and the same ``--steps``, which sets
the learning-rate schedule) need repeating.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tessera.models.native.configs import VAEConfig, get_config
from tessera.models.native.vae import VideoVAE
from tessera.models.shapes.world import BACKGROUNDS, render, sample_spec
from tessera.models.train.common import (
    EMA,
    RunLog,
    export_safetensors,
    load_checkpoint,
    lr_at,
    resume_or_start,
    save_checkpoint,
    step_generator,
    step_rng,
)
from tessera.models.train.vae_eval import evaluate_vae, headline, load_vae

# (width, height, weight): the DiT's buckets most often, plus other sizes so the conv net
# generalises over scale (the world's objects scale with the frame).
VAE_SIZES = ((64, 64, 4), (96, 64, 3), (64, 96, 3), (48, 48, 1), (32, 32, 1), (80, 64, 1), (128, 64, 1), (96, 96, 1))
VAE_FRAMES = ((17, 6), (9, 2), (1, 1))


def _choice(rng: np.random.Generator, options: tuple[tuple, ...]):
    weights = np.array([o[-1] for o in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][:-1]


def make_batch(rng: np.random.Generator, batch_size: int, max_side: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(B, 3, T, H, W)`` in [-1, 1] and per-pixel loss weights ``(B, 1, T, H, W)``."""
    while True:
        width, height = _choice(rng, VAE_SIZES)
        if max(width, height) <= max_side:
            break
    (frames,) = _choice(rng, VAE_FRAMES)
    clips, weights = [], []
    for _ in range(batch_size):
        spec = sample_spec(rng, split="train", width=width, height=height, num_frames=frames)
        video = render(spec).astype(np.float32)  # (T, H, W, 3)
        background = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
        foreground = (np.abs(video - background).max(axis=-1) > 8).astype(np.float32)  # (T, H, W)
        clips.append(video / 127.5 - 1.0)
        weights.append(1.0 + 4.0 * foreground)
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
    w = torch.from_numpy(np.stack(weights))[:, None]  # (B, 1, T, H, W)
    return x, w


def vae_loss(
    vae: VideoVAE,
    x: torch.Tensor,
    w: torch.Tensor,
    generator: torch.Generator,
    kl_weight: float,
    motion_weight: float,
    boundary_weight: float = 0.0,
):
    mean, logvar = vae.encode_distribution(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    f = vae.config.temporal_factor
    recon = vae.decode_raw(z)[:, :, f - 1 :]
    error = recon - x
    l1 = (w * error.abs()).mean() / w.mean()
    mse = (w * error.pow(2)).mean() / w.mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + mse + kl_weight * kl
    parts = {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}
    if x.shape[2] > 1:
        # Frame-to-frame differences: without this term the decoder settles on the average of
        # each latent frame's pixel frames (a still, blurred object that jumps every f frames).
        w_motion = torch.maximum(w[:, :, 1:], w[:, :, :-1])
        difference_error = (recon.diff(dim=2) - x.diff(dim=2)).abs()  # (B, 3, T-1, H, W)
        motion = (w_motion * difference_error).mean() / w_motion.mean()
        loss = loss + motion_weight * motion
        parts["motion"] = motion.item()
        if boundary_weight and x.shape[2] > f:
            # Pairs (f*k, f*k + 1): the last frame of a latent group and the first of the next.
            pairs = slice(0, None, f)
            wb = w_motion[:, :, pairs]
            boundary = (wb * difference_error[:, :, pairs]).mean() / wb.mean()
            loss = loss + boundary_weight * boundary
            parts["boundary"] = boundary.item()
    return loss, parts


@torch.no_grad()
def latent_statistics(vae: VideoVAE, seed: int, batches: int = 24) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of raw posterior means over fresh training clips."""
    sums, squares, count = 0.0, 0.0, 0
    for index in range(batches):
        x, _ = make_batch(step_rng(seed, index, stream=7), 8)
        mean, _ = vae.encode_distribution(x)
        flat = mean.transpose(0, 1).reshape(mean.shape[1], -1).double()
        sums = sums + flat.sum(dim=1)
        squares = squares + flat.pow(2).sum(dim=1)
        count += flat.shape[1]
    mu = sums / count
    std = (squares / count - mu.pow(2)).clamp_min(1e-8).sqrt()
    return [round(v, 6) for v in mu.tolist()], [round(v, 6) for v in std.tolist()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, exported weights)")
    parser.add_argument("--variant", default="tiny", help="registry variant whose VAE config to train")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=3e-5)
    parser.add_argument("--temporal-loss-weight", "--motion-weight", dest="motion_weight", type=float, default=4.0,
                        help="weight of the frame-difference L1 term")
    parser.add_argument("--boundary-loss-weight", type=float, default=0.0,
                        help="extra weight of the frame-difference L1 at latent-group boundaries")
    parser.add_argument("--latent-channels", type=int, default=None, help="override the variant's latent channels")
    parser.add_argument("--full-rate-encoder-stages", type=int, default=None, help="override (v2: 1)")
    parser.add_argument("--full-rate-decoder-stages", type=int, default=None, help="override (v2: 1)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from a VAE (weights folder, run or checkpoint): every tensor whose name and shape match")
    parser.add_argument("--eval-every", type=int, default=0, help="score the EMA on the quick fixed set every N steps")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, help="also checkpoint at least this often")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this long")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--smoke", action="store_true", help="a tiny fast run proving the script works")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    checkpoint_path = args.out / "checkpoint.pt"
    config: VAEConfig = get_config(args.variant).vae
    overrides = {
        key: getattr(args, key)
        for key in ("latent_channels", "full_rate_encoder_stages", "full_rate_decoder_stages")
        if getattr(args, key) is not None
    }
    if args.smoke:
        overrides.update(channels=(16, 32), blocks_per_stage=1)
        args.steps, args.batch_size, args.checkpoint_every, args.log_every = 6, 2, 3, 2
    config = VAEConfig(**{**config.model_dump(), **overrides})
    if args.resume and checkpoint_path.exists():
        config = VAEConfig(**load_checkpoint(checkpoint_path)["config"])  # the run's own architecture
    device = torch.device(args.device)
    vae = VideoVAE(config).to(device)
    if args.init_from is not None and not (args.resume and checkpoint_path.exists()):
        source, _ = load_vae(args.init_from)
        own = vae.state_dict()
        matched = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        vae.load_state_dict(matched, strict=False)
        print(f"init from {args.init_from}: {len(matched)}/{len(own)} tensors", flush=True)
    ema = EMA(vae, args.ema_decay)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    log = RunLog(args.out / "log.jsonl")
    step = resume_or_start(
        checkpoint_path, args.resume, vae, ema, optimizer, log,
        {"config": config.model_dump(), "args": {k: str(v) for k, v in vars(args).items()}},
    )

    def checkpoint() -> None:
        nonlocal last_checkpoint
        save_checkpoint(
            checkpoint_path, model=vae.state_dict(), ema=ema.model.state_dict(), optimizer=optimizer.state_dict(),
            step=step, config=config.model_dump(),
        )
        last_checkpoint = time.monotonic()

    def evaluate() -> None:
        result = evaluate_vae(ema.model, quick=True, keep_clips=False)
        log.write({"event": "eval", "step": step, **headline(result), "eval_seconds": result["eval_seconds"]})

    started = last_checkpoint = time.monotonic()
    max_side = 64 if args.smoke else 128
    while step < args.steps:
        rng = step_rng(args.seed, step)
        x, w = make_batch(rng, args.batch_size, max_side=max_side)
        if args.smoke:
            x, w = x[:, :, :9, :32, :32], w[:, :, :9, :32, :32]
        lr = lr_at(step, base_lr=args.lr, warmup=100, total=args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        vae.train()
        loss, parts = vae_loss(vae, x.to(device), w.to(device), step_generator(args.seed, step), args.kl_weight,
                                args.motion_weight, args.boundary_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0).item()
        optimizer.step()
        ema.update(vae, step)
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.monotonic() - started
            log.write({"step": step, "loss": loss.item(), **parts, "lr": lr, "grad_norm": grad_norm,
                       "shape": list(x.shape), "elapsed_s": round(elapsed, 1)})
        if step % args.checkpoint_every == 0 or time.monotonic() - last_checkpoint > args.checkpoint_minutes * 60:
            checkpoint()
        if args.eval_every and step % args.eval_every == 0:
            evaluate()
        if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
            log.write({"event": "time_limit", "step": step})
            break
    checkpoint()

    ema_vae = ema.model.cpu()
    mean, std = latent_statistics(ema_vae, args.seed, batches=2 if args.smoke else 24)
    final_config = config.model_copy(update={"latent_mean": tuple(mean), "latent_std": tuple(std)})
    export_safetensors(ema_vae, args.out / "vae.safetensors")
    (args.out / "vae_config.json").write_text(json.dumps({**final_config.model_dump(), "trained_steps": step}, indent=2))
    log.write({"event": "export", "step": step, "latent_mean": mean, "latent_std": std})


if __name__ == "__main__":
    main()
