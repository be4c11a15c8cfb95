"""Seams of time tiling on the open families (issue 14), measured on tiny random diffusers folders.

    OMP_NUM_THREADS=1 python bench/open_tiling_bench.py            # Wan 2.1, LTX-Video, HunyuanVideo 1.5
    OMP_NUM_THREADS=1 python bench/open_tiling_bench.py --families wan --overlaps 2

For each family the same request (same seed, so the same initial noise: every latent frame is
drawn from its own generator) is rendered in process (LocalTessera, embedded S3) twice or more:

* **tiled**: windows of ``WINDOW`` latent frames (``tiling.window_frames``: the tiny folders have
  the released pipelines' default lengths, 21-31 latent frames, so a video of several windows
  would be long at any size; a short window stands for the trained length), fused over
  ``tiling.min_overlap_frames`` = each of ``--overlaps``, decoded in tiles of ``WINDOW`` latent
  frames with the family's default decode context;
* **single**: one window and one decode tile over the whole video (tiling_bench's NAIVE).

Random weights make no objects to track, so the seam metric is a comparison with the single
window, which has no seams: per output frame the mean absolute difference (8-bit levels) of
tiled against single, at the frames of the manifest's ``plan.seam_frame_pairs`` against the
frames inside windows; the frame-to-frame change of each render across seam pairs against inside
pairs (a seam shows as an extra jump in the tiled render only); the same per latent frame, on
the latents the Decoder received (captured in this process), at window boundaries and in
overlaps. The decode tiles' own effect is isolated by decoding the tiled render's latents once,
whole, and in tiles with several contexts (Wan's decoder is causal with a feature cache through
the whole video; LTX's is not causal). Frames are compared as the VAE decoded them, before
H.264, so the codec's noise is not in the figures.

Results: ``bench/results/open_tiling.json`` and ``.png``.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import embedded_store, plot, write_results  # noqa: E402

WINDOW = 8
"""Latent frames per window and per decode tile of the tiled renders."""
LATENT_FRAMES = 22
"""Latent frames of the video: evenly spread fitted windows of at most 8 overlap by 1 (3 windows), 2
(4 windows of 7) and 4-5 (5 windows) at minimum overlaps 1, 2 and 4 (at 20 frames, 1 and 2 would
give the same plan)."""
STEPS = 8
SEED = 3
PROMPT = "a red circle moving to the right"
SINGLE = {"window_frames": 10_000, "decode_tile_frames": 10_000}
"""Tiling options that make one window and one decode tile of the whole video."""

FAMILIES = {
    # family: (tiny_open builder, frame side, temporal factor of the tiny VAE, extra model config fields)
    "wan": ("wan_t2v", 32, 4, {"max_sequence_length": 16}),
    "ltx": ("ltx_t2v", 32, 4, {"max_sequence_length": 16}),
    "hunyuanvideo15": ("hunyuan15_t2v", 16, 2, {}),
}
DECODE_CONTEXTS = (1, 2, 4, 8, 32)
"""Contexts (latent frames) of the isolated decode-tile measurement (at least 1: a causal VAE decodes
a tile's first latent frame alone to one pixel frame, not to its group of ``temporal`` frames)."""


# -- capturing what the Decoder decodes ------------------------------------------------------------
class DecodeCapture:
    """Records every decode tile's request and the uint8 frames the VAE gave for it, in this
    process (LocalStages call the DecoderEngine directly), so frames are compared before H.264."""

    def __init__(self):
        self.engines = []
        self.tiles: dict[int, tuple] = {}

    def install(self):
        from tessera.serving import decoder

        capture, original_init, original_decode = self, decoder.DecoderEngine.__init__, decoder.DecoderEngine._decode

        def init(engine, *args, **kwargs):
            original_init(engine, *args, **kwargs)
            capture.engines.append(engine)
            decode = engine.model.decode_latents

            def recording(latents, context_frames=0):
                frames = decode(latents, context_frames=context_frames)
                engine._last_frames = frames  # the engine's model thread decodes one tile at a time
                return frames

            engine.model.decode_latents = recording

        def decode_tile(engine, request):
            tile = original_decode(engine, request)
            capture.tiles[request.index] = (request, engine._last_frames[: request.num_frames].numpy())
            return tile

        decoder.DecoderEngine.__init__, decoder.DecoderEngine._decode = init, decode_tile

    def take(self, plan: dict) -> tuple[np.ndarray, torch.Tensor]:
        """The video's frames ``(T, H, W, 3)`` uint8 and latents ``(C, T, h, w)`` from the tiles."""
        tiles, self.tiles = self.tiles, {}
        frames = np.concatenate([tiles[i][1] for i in sorted(tiles)])
        latents = torch.cat([tiles[i][0].latents[:, tiles[i][0].context_frames:] for i in sorted(tiles)], dim=1)
        assert frames.shape[0] == plan["num_frames"] and latents.shape[1] == plan["latent_shape"][1]
        return frames, latents.float()


def render(config_document: dict, request: dict, capture: DecodeCapture) -> dict:
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest
    from tessera.serving.local import LocalTessera

    async def run():
        local = LocalTessera(TesseraConfig.model_validate(config_document))
        await local.start()
        try:
            record, wall = await local.render(GenerationRequest(**request))
            return json.loads(local.store.get_bytes(record.manifest_key)), wall
        finally:
            await local.stop()

    manifest, wall = asyncio.run(run())
    frames, latents = capture.take(manifest["plan"])
    return {"plan": manifest["plan"], "frames": frames, "latents": latents, "wall_s": wall, "vae": capture.engines[-1].model}


# -- metrics ---------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def frame_mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per frame (leading axis), in the arrays' units."""
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(a.shape[0], -1).mean(axis=1)


def jumps(video: np.ndarray) -> np.ndarray:
    """Mean absolute change from each frame to the next (index i: pair (i, i+1))."""
    return frame_mad(video[1:], video[:-1])


NEIGHBOURS = 4
"""Frames either side of a seam that make its local baseline."""


def local_ratio(values: np.ndarray, seams: list[int], width: int = 2) -> float | None:
    """Mean of ``values`` at the seam positions (``width`` entries from each seam index) over their
    mean at the non-seam positions within :data:`NEIGHBOURS` of a seam. Against a global inside
    mean this is not fooled by a drift along the video (Wan's causal decoder carries a difference
    in the latents on through the frames after it, so later frames differ more everywhere)."""
    marked = {i + j for i in seams for j in range(width)}
    near = {i for s in seams for i in range(s - NEIGHBOURS, s + width + NEIGHBOURS)} - marked
    near = sorted(i for i in near if 0 <= i < len(values))
    return _ratio(_mean(values[sorted(marked)]), _mean(values[near]))


def seam_stats(tiled: np.ndarray, single: np.ndarray, seam_pairs: list[int]) -> dict:
    """Difference from the single window at seam frames against inside frames, and the
    frame-to-frame change across seam pairs against inside pairs, for both renders."""
    seam_frames = sorted({i for p in seam_pairs for i in (p, p + 1)})
    inside_frames = [i for i in range(tiled.shape[0]) if i not in set(seam_frames)]
    inside_pairs = [i for i in range(tiled.shape[0] - 1) if i not in set(seam_pairs)]
    mad = frame_mad(tiled, single)
    jump_tiled, jump_single = jumps(tiled), jumps(single)
    stats = {
        "diff_seam": _mean(mad[seam_frames]), "diff_inside": _mean(mad[inside_frames]),
        "jump_tiled_seam": _mean(jump_tiled[seam_pairs]), "jump_tiled_inside": _mean(jump_tiled[inside_pairs]),
        "jump_single_seam": _mean(jump_single[seam_pairs]), "jump_single_inside": _mean(jump_single[inside_pairs]),
        "extra_jump_seam": _mean((jump_tiled - jump_single)[seam_pairs]),
        "extra_jump_inside": _mean((jump_tiled - jump_single)[inside_pairs]),
    }
    stats["diff_ratio"] = _ratio(stats["diff_seam"], stats["diff_inside"])
    stats["diff_local_ratio"] = local_ratio(mad, seam_pairs)
    stats["extra_jump_local"] = _mean((jump_tiled - jump_single)[[i for i in range(len(jump_tiled)) if i not in set(seam_pairs)
                                                                   and min(abs(i - p) for p in seam_pairs) <= NEIGHBOURS]])
    stats["jump_ratio_tiled"] = _ratio(stats["jump_tiled_seam"], stats["jump_tiled_inside"])
    stats["jump_ratio_single"] = _ratio(stats["jump_single_seam"], stats["jump_single_inside"])
    # A seam is an extra jump of the tiled render where the single window has none: this ratio
    # is 1 when the tiled render jumps across seams no more (relative to inside) than the single one.
    stats["seam_jump_excess"] = _ratio(stats["jump_ratio_tiled"], stats["jump_ratio_single"])
    return stats


def pixel_pairs(latent_boundaries, temporal: int, num_frames: int) -> list[int]:
    """The frame pairs straddling latent boundaries (as RenderPlan.seam_frame_pairs computes them)."""
    from tessera.models.interface import TimeGrid

    grid = TimeGrid(temporal)
    return sorted({grid.pixel_start(k) - 1 for k in latent_boundaries if k >= 1} & set(range(num_frames - 1)))


def latent_stats(tiled: torch.Tensor, single: torch.Tensor, windows: list[list[int]]) -> dict:
    """Per latent frame: |tiled - single| at window boundaries (a window's first or last frame
    inside the video), in overlaps and elsewhere; the change across window-boundary pairs."""
    count = tiled.shape[1]
    boundary = sorted({w[0] for w in windows[1:]} | {w[1] - 1 for w in windows[:-1]})
    covered = np.zeros(count, dtype=int)
    for start, stop in windows:
        covered[start:stop] += 1
    overlap = [k for k in range(count) if covered[k] > 1]
    alone = [k for k in range(count) if covered[k] == 1]
    a, b = tiled.permute(1, 0, 2, 3).numpy(), single.permute(1, 0, 2, 3).numpy()
    mad = frame_mad(a, b)
    edge_pairs = sorted({w[0] - 1 for w in windows[1:]} | {w[1] - 1 for w in windows[:-1]})  # pair (k, k+1) entering/leaving a window
    inner_pairs = [k for k in range(count - 1) if k not in set(edge_pairs)]
    ja, jb = jumps(a), jumps(b)
    stats = {
        "diff_boundary": _mean(mad[boundary]), "diff_overlap": _mean(mad[overlap]), "diff_alone": _mean(mad[alone]),
        "jump_ratio_tiled": _ratio(_mean(ja[edge_pairs]), _mean(ja[inner_pairs])),
        "jump_ratio_single": _ratio(_mean(jb[edge_pairs]), _mean(jb[inner_pairs])),
        "single_latent_abs_mean": _mean(np.abs(b).reshape(count, -1).mean(axis=1)),
        "per_frame_diff": [round(float(x), 4) for x in mad],
    }
    stats["diff_boundary_ratio"] = _ratio(stats["diff_boundary"], stats["diff_alone"])
    stats["diff_boundary_local_ratio"] = local_ratio(mad, boundary, width=1)
    stats["seam_jump_excess"] = _ratio(stats["jump_ratio_tiled"], stats["jump_ratio_single"])
    return stats


def decode_isolated(vae, latents: torch.Tensor, num_frames: int, contexts) -> dict:
    """The tiled render's own latents decoded once, whole, against decode tiles of ``WINDOW``
    latent frames with each context: difference at tile-boundary frames and elsewhere."""
    from tessera.serving.jobs.planner import plan_decode_tiles

    geometry = vae.card.geometry
    with torch.no_grad():
        whole = vae.decode_latents(latents, context_frames=0)[:num_frames].numpy()
        rows = {}
        for context in contexts:
            tiles = plan_decode_tiles(latents.shape[1], num_frames, geometry, WINDOW, context)
            frames = np.concatenate([
                vae.decode_latents(latents[:, t.input_start:t.stop], context_frames=t.context)[: t.num_frames].numpy()
                for t in tiles
            ])
            assert frames.shape == whole.shape, (frames.shape, whole.shape)
            seams = pixel_pairs([t.start for t in tiles[1:]], geometry.temporal_factor, num_frames)
            row = seam_stats(frames, whole, seams)
            row["max_diff"] = int(np.abs(frames.astype(int) - whole.astype(int)).max())
            rows[str(context)] = row
    return rows


# -- the bench -------------------------------------------------------------------------------------
def family_rows(family: str, overlaps: list[int], tmp: Path, storage: dict, capture: DecodeCapture) -> dict:
    from tests.models import tiny_open

    builder, side, temporal, extra = FAMILIES[family]
    folder = getattr(tiny_open, builder)(tmp / f"tiny-{family}")
    num_frames = 1 + temporal * (LATENT_FRAMES - 1)
    model = {"family": family, "path": str(folder), "name": f"{family}-tiny", "device": "cpu", "dtype": "float32",
             "torch_threads": 1, **extra}
    threads = {"torch_threads": 1, "num_cpus": 1}
    base = {"storage": storage, "model": model,
            "deployments": {"prompt_expander": threads, "denoiser": threads, "decoder": threads}}
    request = {"prompt": PROMPT, "num_frames": num_frames, "width": side, "height": side, "steps": STEPS, "seed": SEED,
               "skip_prompt_expansion": True}
    single = render({**base, "tiling": SINGLE}, request, capture)
    assert len(single["plan"]["windows"]) == 1 and len(single["plan"]["decode_tiles"]) == 1
    result = {"request": request, "single_wall_s": round(single["wall_s"], 2), "overlaps": {}}
    for overlap in overlaps:
        tiling = {"window_frames": WINDOW, "decode_tile_frames": WINDOW, "min_overlap_frames": overlap}
        tiled = render({**base, "tiling": tiling}, request, capture)
        plan = tiled["plan"]
        windows = plan["windows"]
        window_pairs = pixel_pairs({w[0] for w in windows[1:]} | {w[1] for w in windows[:-1]}, temporal, num_frames)
        tile_pairs = pixel_pairs([t["latent"][0] for t in plan["decode_tiles"][1:]], temporal, num_frames)
        # Denoising alone: the tiled latents decoded whole, against the single window's frames.
        with torch.no_grad():
            tiled_whole = tiled["vae"].decode_latents(tiled["latents"], context_frames=0)[:num_frames].numpy()
        result["overlaps"][str(overlap)] = {
            "windows": windows,
            "overlaps": [a[1] - b[0] for a, b in zip(windows, windows[1:])],
            "decode_tiles": [t["latent"] for t in plan["decode_tiles"]],
            "decode_contexts": [t["context"] for t in plan["decode_tiles"]],
            "seam_frame_pairs": plan["seam_frame_pairs"],
            "wall_s": round(tiled["wall_s"], 2),
            "frames": seam_stats(tiled["frames"], single["frames"], plan["seam_frame_pairs"]),
            "frames_window_seams_only": seam_stats(tiled_whole, single["frames"], window_pairs),
            "frames_per_frame_diff": [round(float(x), 3) for x in frame_mad(tiled["frames"], single["frames"])],
            "latents": latent_stats(tiled["latents"], single["latents"], windows),
            "decode_tile_pairs": tile_pairs,
        }
        if overlap == overlaps[0]:
            result["decode_tiles_isolated"] = decode_isolated(tiled["vae"], tiled["latents"], num_frames, DECODE_CONTEXTS)
        print(f"{family} overlap {overlap}: {json.dumps(result['overlaps'][str(overlap)]['frames'])}", flush=True)
    return result


def draw(results: dict):
    def figure(plt):
        families = list(results)
        fig, axes = plt.subplots(2, len(families), figsize=(5 * len(families), 6.6), squeeze=False)
        for top, bottom, family in zip(axes[0], axes[1], families):
            rows = results[family]["overlaps"]
            for overlap, row in rows.items():
                top.plot(row["frames_per_frame_diff"], label=f"min overlap {overlap}: {len(row['windows'])} windows", lw=1)
            first = next(iter(rows.values()))
            for pair in first["seam_frame_pairs"]:
                dashed = pair in first["decode_tile_pairs"]
                top.axvline(pair + 0.5, color="black" if dashed else "grey", lw=0.6, ls="--" if dashed else ":")
            top.set_title(f"{family}: |tiled - single window| per frame\n(dashed: decode tile starts; dotted: window "
                          f"seams at min overlap {next(iter(rows))})", fontsize=9)
            top.set_xlabel("frame")
            top.set_ylabel("mean abs diff (8-bit levels)")
            top.legend(fontsize=7)
            isolated = results[family]["decode_tiles_isolated"]
            contexts = list(isolated)
            positions = np.arange(len(contexts))
            bottom.bar(positions - 0.2, [isolated[c]["diff_seam"] for c in contexts], 0.4, label="seam frames")
            bottom.bar(positions + 0.2, [isolated[c]["diff_inside"] for c in contexts], 0.4, label="other frames")
            bottom.set_xticks(positions, contexts)
            bottom.set_xlabel("decode context (latent frames before each tile)")
            bottom.set_ylabel("mean abs diff (8-bit levels)")
            bottom.set_title(f"{family}: the same latents in tiles of {WINDOW} vs one decode", fontsize=9)
            bottom.legend(fontsize=7)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--overlaps", nargs="+", type=int, default=[1, 2, 4], help="tiling.min_overlap_frames of the tiled renders")
    args = parser.parse_args()
    torch.set_num_threads(1)
    capture = DecodeCapture()
    capture.install()
    started = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp)) as storage:
        for family in args.families:
            results[family] = family_rows(family, args.overlaps, Path(tmp), storage, capture)
    write_results("open_tiling", {
        "settings": {"window": WINDOW, "latent_frames": LATENT_FRAMES, "steps": STEPS, "seed": SEED, "prompt": PROMPT,
                     "decode_contexts": list(DECODE_CONTEXTS), "torch_threads": 1},
        "wall_s": round(time.monotonic() - started, 1),
        "families": results,
    })
    plot("open_tiling", draw(results))


if __name__ == "__main__":
    main()
