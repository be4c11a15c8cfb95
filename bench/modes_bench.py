"""Quality of every generation mode, measured on the output with the shapes evaluator.

    python bench/modes_bench.py --seeds 8            # writes bench/results/modes.json

Renders in this process (LocalTessera: the same engines, job manager and S3 storage as the
Serve app, without the hops) at 64x64, 8 fps, with the shipped tiny model. Inputs are
shapes-world clips of random colour, shape and direction; per mode it reports what the
integration tests check once, over several seeds:

* image to video: PSNR of the first (or last) frame against the image; prompt following;
* extend: PSNR of the kept frames; direction of the new part; the jump where it starts;
* edit (SDEdit): PSNR to the input and the colour shown, per strength (input red, prompt green);
* transition: PSNR of the start against A and of the end against B;
* loop: the jump from the last frame to the first against the median jump inside;
* multi-shot: each shot's direction (left, then right, with a cut or a blend);
* the VAE's own round trip of the inputs, the ceiling of every "kept frames" PSNR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, embedded_store, plot, write_results  # noqa: E402

SIZE, FPS, STEPS = 64, 8, 20
MOTIONS = ("left", "right", "up", "down")
STRENGTHS = (0.2, 0.4, 0.6, 0.7, 0.8, 1.0)


def _clip(rng: np.random.Generator, frames: int, **overrides):
    from tessera.models.shapes.world import render, sample_spec

    spec = sample_spec(rng, width=SIZE, height=SIZE, fps=FPS, num_frames=frames, motions=MOTIONS, overrides=overrides)
    return spec, render(spec)


def _prompt(spec) -> str:
    return f"a {spec.size} {spec.colour} {spec.shape} moving {spec.motion} on a {spec.background} background"


async def _measure(config: dict, seeds: int) -> dict:
    from tessera.models import load_model, parse_model_config
    from tessera.models.shapes.evaluate import psnr, score_clip, track_object
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest, MediaInput, ShotRequest
    from tessera.serving.local import LocalTessera
    from tessera.serving.video import VideoEncodingConfig, decode_frames, encode_mp4, encode_png

    import torch

    local = LocalTessera(TesseraConfig.model_validate(config))
    vae = load_model(parse_model_config(config.get("model", {})), parts={"vae"})
    await local.start()
    rows: dict[str, list] = {}

    def add(mode: str, **values) -> None:
        rows.setdefault(mode, []).append(values)

    async def render(**fields):
        record, wall = await local.render(GenerationRequest(width=SIZE, height=SIZE, fps=FPS, steps=STEPS, **fields))
        frames = decode_frames(local.store.get_bytes(record.video_key or record.image_key))
        return frames, json.loads(local.store.get_bytes(record.manifest_key)), wall

    def mp4(frames) -> MediaInput:
        return MediaInput(data=encode_mp4(frames, FPS, VideoEncodingConfig()))

    def direction_ok(frames, spec) -> bool:
        return bool(score_clip(frames, expected={"motion": spec.motion}).direction_correct)

    def boundary_jump(frames, index: int) -> float:
        """Centroid jump (px) from frame ``index`` to the next: where given and generated frames meet."""
        return float(track_object(frames).jumps()[index])

    try:
        for seed in range(seeds):
            rng = np.random.default_rng([seed, 7])
            spec, clip = _clip(rng, 17)
            other_spec, other = _clip(rng, 17)
            prompt = _prompt(spec)
            recon = vae.decode_latents(vae.encode_video(torch.from_numpy(clip)))[:17].numpy()
            add("vae_round_trip", psnr=psnr(recon, clip), first_frame_psnr=psnr(recon[0], clip[0]),
                group_boundary_jump_px=float(np.nanmedian(track_object(recon).jumps()[4::4])),
                true_speed_px=float(spec.speed_px_per_frame))

            frames, _, wall = await render(prompt=prompt, from_image=MediaInput(data=encode_png(clip[0])), duration_s=2, seed=seed)
            score = score_clip(frames, expected={"colour": spec.colour, "motion": spec.motion})
            add("image_to_video", first_frame_psnr=psnr(frames[0], clip[0]), colour=score.colour_correct,
                direction=score.direction_correct, wall_s=wall)
            frames, _, wall = await render(prompt=prompt, from_image=MediaInput(data=encode_png(clip[-1])), image_is_last_frame=True,
                                           duration_s=2, seed=seed)
            add("image_to_video_last", last_frame_psnr=psnr(frames[-1], clip[-1]), first_frame_psnr=psnr(frames[0], clip[-1]),
                direction=direction_ok(frames, spec), wall_s=wall)

            frames, _, wall = await render(prompt=prompt, extend_video=mp4(clip), extend_seconds=2, seed=seed)
            add("extend_forward", kept_psnr=psnr(frames[:17], clip), new_direction=direction_ok(frames[17:], spec),
                boundary_jump_px=boundary_jump(frames, 16), wall_s=wall)
            frames, manifest, wall = await render(prompt=prompt, extend_video=mp4(clip), extend_seconds=2, backward=True, seed=seed)
            new = manifest["extend"]["new_frames"]
            add("extend_backward", kept_psnr=psnr(frames[new:], clip), new_direction=direction_ok(frames[:new], spec),
                boundary_jump_px=boundary_jump(frames, new - 1), wall_s=wall)

            red, red_clip = _clip(rng, 17, colour="red")
            for strength in STRENGTHS:
                edited, _, wall = await render(prompt=_prompt(red).replace("red", "green"), edit_video=mp4(red_clip),
                                               strength=strength, seed=seed)
                add(f"edit_{strength}", psnr_to_input=psnr(edited, red_clip), colour=score_clip(edited).colour,
                    direction_kept=direction_ok(edited, red), wall_s=wall)

            frames, _, wall = await render(prompt=f"a shape moving on a {spec.background} background", transition_from=mp4(clip),
                                           transition_to=mp4(other), transition_seconds=2, seed=seed)
            add("transition", start_psnr=psnr(frames[:17], clip), end_psnr=psnr(frames[-17:], other),
                start_vs_other=psnr(frames[:17], other), visibility=float(track_object(frames).visible.mean()), wall_s=wall)

            frames, _, wall = await render(prompt=prompt, loop=True, duration_s=3, seed=seed)
            looped = track_object(np.concatenate([frames, frames[:1]])).jumps()
            boundaries = looped[3:-1:4]  # jumps across the latent group boundaries inside the loop
            add("loop", seam_jump_px=float(looped[-1]), boundary_jump_median_px=float(np.nanmedian(boundaries)),
                boundary_jump_max_px=float(np.nanmax(boundaries)), seam_within_inside_max=bool(looped[-1] <= np.nanmax(boundaries)),
                seam_psnr=psnr(frames[-1], frames[0]),
                boundary_psnr_min=min(psnr(frames[i], frames[i + 1]) for i in range(3, len(frames) - 1, 4)),
                first_middle_psnr=psnr(frames[len(frames) // 2], frames[0]), wall_s=wall)

            for transition in ("CUT", "BLEND"):
                shots = (ShotRequest(prompt="moving to the left", duration_s=3),
                         ShotRequest(prompt="moving to the right", duration_s=3, transition=transition))
                frames, manifest, wall = await render(prompt="", character=f"a {spec.size} {spec.colour} {spec.shape}",
                                                      shots=shots, seed=seed)
                ranges = [(s["first_frame"], s["first_frame"] + s["num_frames"]) for s in manifest["shots"]]
                directions = [score_clip(frames[a:b]).direction for a, b in ranges]
                colours = [score_clip(frames[a:b]).colour for a, b in ranges]
                add(f"multi_shot_{transition.lower()}", directions_correct=directions == ["left", "right"],
                    first_shot=directions[0] == "left", second_shot=directions[1] == "right",
                    same_colour=colours[0] == colours[1] == spec.colour, wall_s=wall)
            print(f"seed {seed} done")
    finally:
        await local.stop()

    def summary(values: list) -> dict:
        out = {}
        for key in values[0]:
            column = [v[key] for v in values]
            if all(isinstance(x, bool) or x is None for x in column):
                out[key] = float(np.mean([bool(x) for x in column]))
            elif all(isinstance(x, (int, float)) for x in column):
                out[key] = float(np.median(column))
            else:
                out[key] = {str(x): column.count(x) for x in set(column)}
        return out

    return {mode: {"runs": len(values), **summary(values)} for mode, values in rows.items()}


def draw_modes(results: dict) -> None:
    """Left: PSNR of kept frames per mode against the VAE's own round trip. Right: SDEdit's trade."""

    def draw(plt) -> None:
        fig, (kept, edit) = plt.subplots(1, 2, figsize=(11, 4))
        bars = [
            ("i2v first", results["image_to_video"]["first_frame_psnr"]),
            ("i2v last", results["image_to_video_last"]["last_frame_psnr"]),
            ("extend fwd", results["extend_forward"]["kept_psnr"]),
            ("extend back", results["extend_backward"]["kept_psnr"]),
            ("transition A", results["transition"]["start_psnr"]),
            ("transition B", results["transition"]["end_psnr"]),
            ("A vs B", results["transition"]["start_vs_other"]),
        ]
        kept.bar([name for name, _ in bars], [value for _, value in bars], color=["C0"] * 6 + ["C7"])
        kept.axhline(results["vae_round_trip"]["psnr"], color="C3", linestyle="--", label="VAE round trip of the input")
        kept.set_ylabel("PSNR of kept frames (dB)")
        kept.set_title("given frames kept (unrelated clips in grey)")
        kept.tick_params(axis="x", rotation=35)
        kept.legend(loc="lower left")
        strengths = sorted(float(key.split("_")[1]) for key in results if key.startswith("edit_"))
        rows = [results[f"edit_{s}"] for s in strengths]
        edit.plot(strengths, [r["psnr_to_input"] for r in rows], "o-", label="PSNR to the input (dB)")
        edit.set_xlabel("strength")
        edit.set_ylabel("PSNR to the input (dB)")
        share = edit.twinx()
        green = [r["colour"].get("green", 0) / r["runs"] for r in rows]
        share.plot(strengths, green, "s--", color="C2", label="share in the prompt's colour")
        share.set_ylim(-0.05, 1.05)
        share.set_ylabel("share in the prompt's colour")
        edit.set_title("SDEdit: input red, prompt green")
        handles = edit.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
        edit.legend(handles, [h.get_label() for h in handles], loc="center left")

    plot("modes", draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--weights", help="weights folder (default: the shipped tiny model)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from bench/results/modes.json")
    args = parser.parse_args()
    if args.plot_only:
        draw_modes(json.loads((RESULTS / "modes.json").read_text())["modes"])
        return
    with tempfile.TemporaryDirectory() as home, embedded_store(Path(home)) as storage:
        config = {"storage": storage}
        if args.weights:
            config["model"] = {"weights_dir": args.weights}
        started = time.monotonic()
        results = asyncio.run(_measure(config, args.seeds))
    for mode, values in results.items():
        print(mode, json.dumps(values))
    write_results("modes", {"seeds": args.seeds, "size": SIZE, "fps": FPS, "steps": STEPS,
                            "wall_s": time.monotonic() - started, "modes": results})
    draw_modes(results)


if __name__ == "__main__":
    main()
