"""A fixed evaluation set for the video VAE alone (no DiT): reconstruct rendered clips, score motion.

The set (``vae_eval_specs``) is fully determined by its seed: every trained frame size
(64x64, 96x64, 64x96) x speed (slow, medium, fast) x object size (small, medium, large) x
direction (left, right, up, down), 29 frames (one native window), colour, shape, background,
fps (6 to 12) and start drawn at random; plus bouncing clips, one in-between size (80x64), and
the issue's probe (a large red square moving right on black at 8 fps, at each speed). ``quick``
keeps one direction per (size, speed, object size) cell: 27 directional clips.

Per clip it measures PSNR of the reconstruction, the latent-group boundary/inside jump ratio
(``evaluate.group_jumps``) of the reconstruction and of the rendered clip, stillness, and
whether the reconstruction's path goes the way the rendered clip's does. Ratios of a set are
*pooled*: the mean jump over all its boundary pairs over the mean jump over all its inside
pairs (a per-clip ratio of a slow small object is noisy). The issue's bars, per trained frame
size x speed cell: pooled ratio <= 1.2 and mean PSNR >= 30 dB; direction preserved on every clip.

Used by ``bench/vae_eval.py`` (full set, JSON in ``bench/results``) and by ``train_vae
--eval-every`` (quick set, in the training log).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tessera.models.native.configs import VAEConfig
from tessera.models.native.vae import VideoVAE
from tessera.models.shapes.evaluate import STILL_JUMP, latent_boundary_pairs, psnr, track_object
from tessera.models.shapes.world import SIZES, SPEEDS, TRAIN_SIZES, ClipSpec, render, sample_spec

DIRECTIONS = ("left", "right", "up", "down")
EVAL_SEED = 2026
NUM_FRAMES = 29
RATIO_BAR = 1.2
PSNR_BAR = 30.0


@dataclasses.dataclass(frozen=True)
class EvalClip:
    spec: ClipSpec
    group: str
    """'cell' (trained size, directional: the bars), 'bounce', 'between' (80x64) or 'probe'."""


def vae_eval_specs(quick: bool = False, seed: int = EVAL_SEED) -> list[EvalClip]:
    rng = np.random.default_rng(seed)
    clips: list[EvalClip] = []
    index = 0
    for width, height in TRAIN_SIZES:
        for speed in SPEEDS:
            for size in SIZES:
                directions = DIRECTIONS if not quick else (DIRECTIONS[index % 4],)
                index += 1
                for direction in directions:
                    spec = sample_spec(rng, split="all", width=width, height=height, num_frames=NUM_FRAMES,
                                       overrides={"motion": direction, "speed": speed, "size": size})
                    clips.append(EvalClip(spec, "cell"))
    for number in range(3 if quick else 12):
        width, height = TRAIN_SIZES[number % 3]
        clips.append(EvalClip(sample_spec(rng, split="all", width=width, height=height, num_frames=NUM_FRAMES,
                                          overrides={"motion": "bounce"}), "bounce"))
    for number in range(4 if quick else 12):
        clips.append(EvalClip(sample_spec(rng, split="all", width=80, height=64, num_frames=NUM_FRAMES,
                                          overrides={"motion": DIRECTIONS[number % 4]}), "between"))
    for speed in SPEEDS:
        clips.append(EvalClip(ClipSpec("red", "square", "large", speed, "right", "black", width=64, height=64, fps=8.0,
                                       num_frames=NUM_FRAMES, start=(0.3, 0.5)), "probe"))
    return clips


def load_vae(source: Path | None, *, raw: bool = False) -> tuple[VideoVAE, dict[str, Any]]:
    """A VAE from a weights folder (``config.json`` + ``vae.safetensors``; default the shipped
    tiny), a training run folder (``vae_config.json`` + ``vae.safetensors``, or only
    ``checkpoint.pt``) or a ``checkpoint.pt`` (its EMA weights; ``raw``: the raw ones)."""
    if source is None:
        source = Path(__file__).resolve().parents[1] / "weights" / "tiny"
    source = Path(source)
    info: dict[str, Any] = {"source": str(source)}
    if source.is_dir() and (source / "vae.safetensors").exists() and not raw:
        if (source / "vae_config.json").exists():
            config_data = json.loads((source / "vae_config.json").read_text())
            info["step"] = config_data.pop("trained_steps", None)
        else:
            config_data = json.loads((source / "config.json").read_text())["vae"]
        config = VAEConfig(**config_data)
        state = {k: v.float() for k, v in load_file(str(source / "vae.safetensors")).items()}
        info["weights"] = "vae.safetensors"
    else:
        path = source / "checkpoint.pt" if source.is_dir() else source
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        config = VAEConfig(**checkpoint["config"])
        state = checkpoint["model" if raw else "ema"]
        info.update(step=checkpoint["step"], weights="raw" if raw else "ema")
    vae = VideoVAE(config)
    vae.load_state_dict(state)
    info["config"] = config.model_dump(exclude={"latent_mean", "latent_std"})
    info["parameters"] = sum(p.numel() for p in vae.parameters())
    return vae.eval(), info


@torch.no_grad()
def reconstruct(vae: VideoVAE, videos: np.ndarray) -> np.ndarray:
    """uint8 ``(N, T, H, W, 3)`` clips (``T = 1 + f*k``) through encode (posterior mean) and decode."""
    device = next(vae.parameters()).device
    x = torch.from_numpy(videos).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, 3, T, H, W)
    mean, _ = vae.encode_distribution(x)
    f = vae.config.temporal_factor
    y = vae.decode_raw(mean)[:, :, f - 1 :]  # (B, 3, T, H, W)
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def _clip_record(clip: EvalClip, truth: np.ndarray, recon: np.ndarray, factor: int) -> dict[str, Any]:
    spec = clip.spec
    true_track, track = track_object(truth), track_object(recon)
    boundary = np.zeros(NUM_FRAMES - 1, dtype=bool)
    boundary[latent_boundary_pairs(NUM_FRAMES, factor)] = True

    def jumps(tr):
        j = tr.jumps()
        return j[boundary & np.isfinite(j)].tolist(), j[~boundary & np.isfinite(j)].tolist()

    rb, ri = jumps(track)
    tb, ti = jumps(true_track)
    return {
        "group": clip.group, "size": f"{spec.width}x{spec.height}", "speed": spec.speed, "object": spec.size,
        "motion": spec.motion, "colour": spec.colour, "shape": spec.shape, "background": spec.background,
        "fps": spec.fps, "psnr": psnr(recon, truth),
        "true_direction": true_track.path_direction(), "direction": track.path_direction(),
        "visibility": float(track.visible.mean()), "stillness": track.stillness(),
        "recon_boundary_jumps": rb, "recon_inside_jumps": ri, "true_boundary_jumps": tb, "true_inside_jumps": ti,
        "ratio": (np.mean(rb) / np.mean(ri)) if rb and ri and np.mean(ri) > 0 else None,
    }


def _pooled(records: list[dict], prefix: str) -> float | None:
    boundary = [j for r in records for j in r[f"{prefix}_boundary_jumps"]]
    inside = [j for r in records for j in r[f"{prefix}_inside_jumps"]]
    if not boundary or not inside or np.mean(inside) == 0:
        return None
    return float(np.mean(boundary) / np.mean(inside))


def summarize_records(records: list[dict]) -> dict[str, Any]:
    if not records:
        return {"clips": 0}
    values = [r["psnr"] for r in records]
    directional = [r for r in records if r["motion"] != "bounce"]
    inside = [j for r in records for j in r["recon_inside_jumps"]]
    return {
        "clips": len(records),
        "psnr_mean": float(np.mean(values)),
        "psnr_min": float(np.min(values)),
        "ratio": _pooled(records, "recon"),
        "true_ratio": _pooled(records, "true"),
        "median_clip_ratio": float(np.median([r["ratio"] for r in records if r["ratio"] is not None]))
        if any(r["ratio"] is not None for r in records) else None,
        "inside_stillness": float(np.mean(np.asarray(inside) < STILL_JUMP)) if inside else None,
        "direction_preserved": float(np.mean([r["direction"] == r["true_direction"] for r in directional]))
        if directional else None,
        "visibility": float(np.mean([r["visibility"] for r in records])),
    }


def evaluate_vae(vae: VideoVAE, *, quick: bool = False, seed: int = EVAL_SEED, keep_clips: bool = True) -> dict[str, Any]:
    """Reconstruct the fixed set and score it (see the module docstring)."""
    started = time.monotonic()
    clips = vae_eval_specs(quick, seed)
    factor = vae.config.temporal_factor
    records: list[dict] = [None] * len(clips)  # type: ignore[list-item]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, clip in enumerate(clips):
        by_size.setdefault((clip.spec.width, clip.spec.height), []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), 12):
            batch = indices[start : start + 12]
            truth = np.stack([render(clips[i].spec) for i in batch])
            recon = reconstruct(vae, truth)
            for i, t, r in zip(batch, truth, recon):
                records[i] = _clip_record(clips[i], t, r, factor)
    cells = [r for r in records if r["group"] == "cell"]
    out: dict[str, Any] = {"set": {"quick": quick, "seed": seed, "clips": len(records), "frames": NUM_FRAMES}}
    out["cells_all"] = summarize_records(cells)
    out["all_clips"] = summarize_records(records)
    out["by_cell"] = {
        f"{w}x{h}/{speed}": summarize_records([r for r in cells if r["size"] == f"{w}x{h}" and r["speed"] == speed])
        for w, h in TRAIN_SIZES for speed in SPEEDS
    }
    out["by_speed"] = {s: summarize_records([r for r in cells if r["speed"] == s]) for s in SPEEDS}
    out["by_size"] = {f"{w}x{h}": summarize_records([r for r in cells if r["size"] == f"{w}x{h}"]) for w, h in TRAIN_SIZES}
    out["by_object_size"] = {s: summarize_records([r for r in cells if r["object"] == s]) for s in SIZES}
    for group in ("bounce", "between"):
        out[group] = summarize_records([r for r in records if r["group"] == group])
    out["probe_large_red_square_right"] = {
        r["speed"]: {"psnr": r["psnr"], "ratio": r["ratio"], "stillness": r["stillness"], "direction": r["direction"]}
        for r in records if r["group"] == "probe"
    }
    worst_ratio = max((c["ratio"] for c in out["by_cell"].values() if c.get("ratio") is not None), default=None)
    worst_psnr = min(c["psnr_mean"] for c in out["by_cell"].values())
    direction = summarize_records([r for r in records if r["group"] != "bounce"])["direction_preserved"]
    out["bars"] = {
        "worst_cell_ratio": worst_ratio, "ratio_bar": RATIO_BAR,
        "worst_cell_psnr_mean": worst_psnr, "psnr_bar": PSNR_BAR,
        "direction_preserved": direction,
        "met": bool(worst_ratio is not None and worst_ratio <= RATIO_BAR and worst_psnr >= PSNR_BAR and direction == 1.0),
    }
    out["eval_seconds"] = round(time.monotonic() - started, 1)
    if keep_clips:
        out["clips"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                         if not k.endswith("_jumps")} for r in records]
    return out


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few figures a training log line or a README table needs."""
    cells, bars = result["cells_all"], result["bars"]
    return {
        "psnr_mean": round(cells["psnr_mean"], 2), "psnr_min": round(cells["psnr_min"], 2),
        "ratio": None if cells["ratio"] is None else round(cells["ratio"], 3),
        "worst_cell_ratio": None if bars["worst_cell_ratio"] is None else round(bars["worst_cell_ratio"], 3),
        "worst_cell_psnr": round(bars["worst_cell_psnr_mean"], 2),
        "ratio_by_speed": {k: None if v["ratio"] is None else round(v["ratio"], 2) for k, v in result["by_speed"].items()},
        "direction_preserved": bars["direction_preserved"], "inside_stillness": cells["inside_stillness"],
        "bars_met": bars["met"],
    }
