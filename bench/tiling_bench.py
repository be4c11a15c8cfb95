"""Time tiling benchmarks (issue: long videos tiled by time segments).

    python bench/tiling_bench.py length     # 2..60 s: wall and peak RSS, tiled vs naive single window
    python bench/tiling_bench.py fit        # fitted vs native-length windows, alternated (2 s, 5 s, 10 s, 20 s)
    python bench/tiling_bench.py replicas   # one long video on 1 and 2 Denoiser replicas
    python bench/tiling_bench.py seams      # seam jump / in-window jump over 20 long videos
    python bench/tiling_bench.py overhead   # Serve + gRPC vs the same stage calls in one process
    python bench/tiling_bench.py all

Every render uses the shipped tiny model at 8 fps, 64x64 unless ``--size`` says otherwise (length
and overhead at another size write ``tiling_<experiment>_<size>.json``: the per-hop and per-job
costs are fixed, so a heavier frame shows how they amortise). ``--native-windows`` turns window
fitting off (``tiling.fit_windows: false``) for an A/B; such results are named ``*_native_windows``. In-process renders run in a fresh
subprocess each (``_local``) so their peak RSS (``ru_maxrss``) is their own. Results:
``bench/results/tiling_<experiment>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RssSampler, embedded_store, median, plot, serve_stack, write_results  # noqa: E402

SIZE = 64
"""Default frame side of the length and overhead experiments."""


def _name(experiment: str, size: int, step_progress_s: float | None = None) -> str:
    name = experiment if size == SIZE else f"{experiment}_{size}"
    if TILING.get("fit_windows") is False:
        name += "_native_windows"
    return name if step_progress_s is None else f"{name}_step_progress_{step_progress_s:g}s"
FPS = 8
TILING: dict = {}
"""The ``tiling`` config section of every tiled render (``--native-windows``: no window fitting)."""
NAIVE = {"window_frames": 10_000, "decode_tile_frames": 10_000}
"""Tiling options that make one window and one decode tile of any video (the naive baseline)."""


def _request(prompt: str, duration: float, steps: int, seed: int, size: int = SIZE) -> dict:
    return {"prompt": prompt, "duration_s": duration, "width": size, "height": size, "fps": FPS, "steps": steps, "seed": seed}


# -- in-process renders (one subprocess per batch) ----------------------------------------


def _local_main(args: argparse.Namespace) -> None:
    """Render ``args.requests`` in this process with LocalTessera; print one JSON line of results."""
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest
    from tessera.serving.local import LocalTessera
    from tessera.serving.video import decode_frames

    document = json.loads(args.config)
    requests = json.loads(args.requests)

    async def run() -> list[dict]:
        local = LocalTessera(TesseraConfig.model_validate(document))
        await local.start()
        try:
            if args.warmup:
                await local.render(GenerationRequest(**_request("a red circle moving left", 1.0, 2, 0)))
            results = []
            for request in requests:
                record, wall = await local.render(GenerationRequest(**request))
                item = {"request": request, "wall_s": wall, "timings": record.timings.model_dump(), "job_id": record.job_id}
                if args.keep_frames:
                    manifest = json.loads(local.store.get_bytes(record.manifest_key))
                    frames = decode_frames(local.store.get_bytes(record.video_key))
                    item["seam_frame_pairs"] = manifest["plan"]["seam_frame_pairs"]
                    item["frames_file"] = str(Path(args.keep_frames) / f"{record.job_id}.npy")
                    np.save(item["frames_file"], frames)
                results.append(item)
            return results
        finally:
            await local.stop()

    results = asyncio.run(run())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"results": results, "peak_rss_mib": round(peak_mib, 1)}), flush=True)


def run_local(config: dict, requests: list[dict], *, warmup: bool = True, keep_frames: str | None = None) -> dict:
    command = [sys.executable, __file__, "_local", "--config", json.dumps(config), "--requests", json.dumps(requests)]
    if warmup:
        command.append("--warmup")
    if keep_frames:
        command += ["--keep-frames", keep_frames]
    output = subprocess.run(command, capture_output=True, text=True)
    for line in output.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"local render failed:\n{output.stdout[-2000:]}\n{output.stderr[-4000:]}")


MODEL: dict = {}
"""The ``model`` config section of every render (``--random-weights`` for a dry run of the bench itself)."""


def _deployments(denoiser_replicas: int = 1, denoiser_threads: int = 2) -> dict:
    return {
        "gateway": {"num_cpus": 0.1, "max_ongoing_requests": 64},
        "prompt_expander": {"num_cpus": 0.1, "torch_threads": 1},
        "denoiser": {"num_cpus": 0.5, "num_replicas": denoiser_replicas, "torch_threads": denoiser_threads,
                     "max_ongoing_requests": 32},
        "decoder": {"num_cpus": 0.5, "torch_threads": 2},
    }


def _serve_render(client, request: dict) -> tuple[dict, float]:
    started = time.monotonic()
    job = client.generate(**request)
    wall = time.monotonic() - started
    timings = {f.name: getattr(job.timings, f.name) for f in job.timings.DESCRIPTOR.fields}
    return {"request": request, "wall_s": wall, "timings": timings, "job_id": job.job_id}, wall


# -- experiments ---------------------------------------------------------------------------


def length(args: argparse.Namespace) -> dict:
    durations = args.durations
    # Videos past the embedded default's 60 s need the limit raised (it is config: limits.max_duration_s).
    base = {"model": MODEL, "deployments": _deployments(), "tiling": TILING, "limits": {"max_duration_s": max(60.0, *durations)}}
    rows: dict[str, list[dict]] = {"tiled": [], "naive": []}
    modes = (("tiled", TILING),) if args.skip_naive else (("tiled", TILING), ("naive", NAIVE))
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp)) as storage:
        for mode, tiling in modes:
            for duration in durations:
                config = {**base, "storage": storage, "tiling": tiling}
                out = run_local(config, [_request("a blue square moving right", duration, args.steps, 1, args.size)])
                result = out["results"][0]
                row = {"duration_s": duration, "wall_s": result["wall_s"], "s_per_video_s": result["wall_s"] / duration,
                       "peak_rss_mib": out["peak_rss_mib"], "timings": result["timings"]}
                rows[mode].append(row)
                print(f"{mode:6s} {duration:5.1f} s video: {row['wall_s']:7.2f} s wall, {row['s_per_video_s']:.3f} s/video-s, "
                      f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)

    serve_rows = []
    with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), base, num_cpus=4) as (client, _):
        _serve_render(client, _request("a red circle moving left", 1.0, 2, 0))  # warm-up
        for duration in durations:
            with RssSampler() as sampler:
                result, wall = _serve_render(client, _request("a blue square moving right", duration, args.steps, 1, args.size))
            serve_rows.append({"duration_s": duration, "wall_s": wall, "s_per_video_s": wall / duration,
                               "peak_rss_mib": sampler.peaks(), "timings": result["timings"]})
            print(f"serve  {duration:5.1f} s video: {wall:7.2f} s wall, peaks {sampler.peaks()}", flush=True)

    def spread(series: list[dict]) -> dict:
        per = [r["s_per_video_s"] for r in series]
        mid = median(per)
        return {"median_s_per_video_s": mid, "max_deviation": max(abs(p - mid) / mid for p in per)}

    longest = max(durations)

    def memory_ratio(series: list[dict], key=lambda r: r["peak_rss_mib"], long: float = 60) -> float | None:
        by = {r["duration_s"]: key(r) for r in series}
        return by[long] / by[5] if long in by and 5 in by else None

    def serve_total(row: dict) -> float:
        return sum(v for k, v in row["peak_rss_mib"].items() if not k.startswith("ray:idle"))

    def serve_max_replica(row: dict) -> float:
        return max(v for k, v in row["peak_rss_mib"].items() if k.split("#")[0] in ("Gateway", "PromptExpander", "Denoiser", "Decoder"))

    summary = {
        "tiled": {**spread(rows["tiled"]), "peak_rss_60s_over_5s": memory_ratio(rows["tiled"]),
                  f"peak_rss_{longest:g}s_over_5s": memory_ratio(rows["tiled"], long=longest)},
        "naive": {**spread(rows["naive"]), "peak_rss_60s_over_5s": memory_ratio(rows["naive"])} if rows["naive"] else None,
        "serve": {**spread(serve_rows), "largest_replica_rss_60s_over_5s": memory_ratio(serve_rows, serve_max_replica),
                  "all_processes_rss_60s_over_5s": memory_ratio(serve_rows, serve_total),
                  f"largest_replica_rss_{longest:g}s_over_5s": memory_ratio(serve_rows, serve_max_replica, long=longest)},
    }

    def draw(plt) -> None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for mode, series in (("tiled (in-process)", rows["tiled"]), ("naive one window", rows["naive"]), ("Serve + gRPC", serve_rows)):
            left.plot([r["duration_s"] for r in series], [r["s_per_video_s"] for r in series], marker="o", label=mode)
        left.set(xlabel="video length (s)", ylabel="wall seconds per video second", title=f"{args.size}x{args.size}, {FPS} fps, {args.steps} steps")
        left.set_ylim(bottom=0)
        left.legend()
        right.plot([r["duration_s"] for r in rows["tiled"]], [r["peak_rss_mib"] for r in rows["tiled"]], marker="o", label="tiled (whole process)")
        right.plot([r["duration_s"] for r in rows["naive"]], [r["peak_rss_mib"] for r in rows["naive"]], marker="o", label="naive (whole process)")
        right.plot([r["duration_s"] for r in serve_rows], [serve_max_replica(r) for r in serve_rows], marker="o", label="Serve: largest replica")
        right.set(xlabel="video length (s)", ylabel="peak RSS (MiB)", title="memory")
        right.set_ylim(bottom=0)
        right.legend()

    data = {"steps": args.steps, "size": args.size, "fps": FPS, "tiling": TILING, "summary": summary, "tiled": rows["tiled"], "naive": rows["naive"],
            "serve": serve_rows}
    name = _name("tiling_length", args.size) + (f"_to_{longest:g}s" if longest > 60 else "")
    write_results(name, data)
    plot(name, draw)
    return summary


def fit(args: argparse.Namespace) -> dict:
    """Fitted against native-length windows, in process, alternated render by render so the
    machine's drift hits both alike; the 2 s clip (one window either way) is the control."""
    durations = [2.0, 5.0, 10.0, 20.0]
    arms = {"fitted": {"fit_windows": True}, "native": {"fit_windows": False}}
    walls: dict[str, dict[float, list[float]]] = {arm: {d: [] for d in durations} for arm in arms}
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp)) as storage:
        for repeat in range(args.repeats):
            for duration in durations:
                order = list(arms.items()) if repeat % 2 == 0 else list(arms.items())[::-1]
                for arm, tiling in order:
                    config = {"model": MODEL, "deployments": _deployments(), "tiling": tiling, "storage": storage}
                    result = run_local(config, [_request("a blue square moving right", duration, args.steps, 1, args.size)])
                    walls[arm][duration].append(result["results"][0]["timings"]["denoise_s"])
    from tessera.models.native.configs import get_config
    from tessera.serving.config import TilingConfig
    from tessera.serving.jobs.planner import plan_render

    geometry = get_config("tiny").geometry()
    rows = []
    for duration in durations:
        frames = {arm: sum(w.length for w in plan_render(int(duration * FPS), args.size, args.size, geometry,
                                                         TilingConfig(**tiling).options(geometry)).windows)
                  for arm, tiling in arms.items()}
        fitted, native = median(walls["fitted"][duration]), median(walls["native"][duration])
        rows.append({"duration_s": duration, "window_work_frames": frames, "fitted_denoise_s": fitted, "native_denoise_s": native,
                     "ratio": fitted / native, "frames_ratio": frames["fitted"] / frames["native"], "runs": {a: walls[a][duration] for a in arms}})
        print(f"{duration:4.0f} s: denoising {native:.2f} s native -> {fitted:.2f} s fitted ({fitted / native:.2f}x; "
              f"{frames['native']} -> {frames['fitted']} latent frames of window work, {frames['fitted'] / frames['native']:.2f}x)", flush=True)

    def draw(plt) -> None:
        x = np.arange(len(rows))
        plt.figure(figsize=(6, 4))
        plt.bar(x - 0.2, [r["native_denoise_s"] for r in rows], 0.4, label="native windows (8)")
        plt.bar(x + 0.2, [r["fitted_denoise_s"] for r in rows], 0.4, label="fitted windows")
        plt.xticks(x, [f"{r['duration_s']:.0f} s" for r in rows])
        plt.ylabel("denoising seconds (median)")
        plt.title(f"{args.size}x{args.size}, {args.steps} steps, {args.repeats} alternated runs")
        plt.legend()

    name = "tiling_fit" if args.size == SIZE else f"tiling_fit_{args.size}"  # both arms whatever --native-windows says
    write_results(name, {"size": args.size, "steps": args.steps, "repeats": args.repeats, "rows": rows})
    plot(name, draw)
    return {"rows": rows}


def replicas(args: argparse.Namespace) -> dict:
    request = _request("a green circle moving up", args.long_s, args.steps, 3, args.replica_size)
    runs = {}
    for count in (1, 2):
        config = {"model": MODEL, "deployments": _deployments(denoiser_replicas=count, denoiser_threads=1), "tiling": TILING}
        with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), config, num_cpus=4) as (client, _):
            _serve_render(client, _request("a red circle moving left", 1.0, 2, 0))  # warm-up every replica's first call
            _serve_render(client, _request("a red circle moving left", 1.0, 2, 0))
            walls, denoise = [], []
            for _ in range(args.repeats):
                result, wall = _serve_render(client, request)
                walls.append(wall)
                denoise.append(result["timings"]["denoise_s"])
            runs[count] = {"wall_s": walls, "denoise_s": denoise, "median_wall_s": median(walls), "median_denoise_s": median(denoise)}
            print(f"{count} denoiser replica(s): median {median(walls):.2f} s wall, {median(denoise):.2f} s denoising", flush=True)
    summary = {
        "speedup_wall": runs[1]["median_wall_s"] / runs[2]["median_wall_s"],
        "speedup_denoise": runs[1]["median_denoise_s"] / runs[2]["median_denoise_s"],
    }
    print(summary)

    def draw(plt) -> None:
        plt.figure(figsize=(5, 4))
        plt.bar(["1 replica", "2 replicas"], [runs[1]["median_wall_s"], runs[2]["median_wall_s"]], label="total wall")
        plt.bar(["1 replica", "2 replicas"], [runs[1]["median_denoise_s"], runs[2]["median_denoise_s"]], label="denoising", alpha=0.7)
        plt.ylabel("seconds (median)")
        plt.title(f"{args.long_s:.0f} s video at {args.replica_size} px, 1 torch thread per replica\nspeedup {summary['speedup_wall']:.2f}x wall, {summary['speedup_denoise']:.2f}x denoising")
        plt.legend()

    write_results(_name("tiling_replicas", SIZE), {"request": request, "tiling": TILING, "repeats": args.repeats, "summary": summary, "runs": runs})
    plot(_name("tiling_replicas", SIZE), draw)
    return summary


def seams(args: argparse.Namespace) -> dict:
    from tessera.models.shapes.evaluate import seam_jumps, score_clip

    rng = np.random.default_rng(7)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square"]
    motions = ["left", "right", "up", "down"]
    requests = []
    for index in range(args.videos):
        colour, shape, motion = rng.choice(colours), rng.choice(shapes), motions[index % 4]
        requests.append(_request(f"a {colour} {shape} moving {motion}", args.seam_s, args.steps, 100 + index))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp)) as storage:
        frames_dir = Path(tmp) / "frames"
        frames_dir.mkdir()
        out = run_local({"model": MODEL, "deployments": _deployments(), "tiling": TILING, "storage": storage}, requests,
                        keep_frames=str(frames_dir))
        for result in out["results"]:
            frames = np.load(result["frames_file"])
            seam = seam_jumps(frames, result["seam_frame_pairs"])
            # Control: the other latent-frame boundaries (pairs (4k, 4k+1)), inside windows.
            boundaries = list(range(0, frames.shape[0] - 1, 4))
            seam_vs_boundaries = seam_jumps(frames, result["seam_frame_pairs"], control_pairs=boundaries)
            score = score_clip(frames, expected={"motion": result["request"]["prompt"].split()[-1]})
            rows.append({"prompt": result["request"]["prompt"], "seed": result["request"]["seed"], **seam,
                         "boundary_mean": seam_vs_boundaries["inside_mean"], "ratio_vs_boundaries": seam_vs_boundaries["ratio"],
                         "direction": score.direction, "visibility": score.visibility,
                         "seam_pairs": len(result["seam_frame_pairs"])})
            print(f"{result['request']['prompt']:32s} seam {seam['seam_mean']:.2f}px inside {seam['inside_mean']:.2f}px "
                  f"ratio {seam['ratio']:.2f} (vs latent boundaries {seam_vs_boundaries['ratio']:.2f}) "
                  f"visible {score.visibility:.2f}", flush=True)
    ratios = [r["ratio"] for r in rows if np.isfinite(r["ratio"])]
    seam_all = [r["seam_mean"] for r in rows if np.isfinite(r["seam_mean"])]
    inside_all = [r["inside_mean"] for r in rows if np.isfinite(r["inside_mean"])]
    boundary_ratios = [r["ratio_vs_boundaries"] for r in rows if np.isfinite(r["ratio_vs_boundaries"])]
    summary = {
        "videos": len(rows),
        "scored_videos": len(ratios),
        "median_ratio_vs_latent_boundaries": median(boundary_ratios) if boundary_ratios else None,
        "median_ratio": median(ratios) if ratios else None,
        "mean_ratio": float(np.mean(ratios)) if ratios else None,
        "pooled_ratio": float(np.mean(seam_all) / np.mean(inside_all)) if seam_all else None,
        "mean_visibility": float(np.mean([r["visibility"] for r in rows])),
    }
    print(summary)

    def draw(plt) -> None:
        plt.figure(figsize=(6, 4))
        plt.hist(ratios, bins=12, alpha=0.6, label="vs all in-window frame pairs")
        plt.hist(boundary_ratios, bins=12, alpha=0.6, label="vs latent-frame boundaries in windows")
        plt.axvline(1.5, color="red", linestyle="--", label="goal <= 1.5")
        plt.xlabel("seam jump / in-window jump")
        plt.ylabel("videos")
        plt.title(f"{len(ratios)} videos of {args.seam_s:.0f} s: median {summary['median_ratio']:.2f}")
        plt.legend()

    name = _name("tiling_seams" if args.seam_s == 12 else f"tiling_seams_{args.seam_s:g}s", SIZE)
    write_results(name, {"seconds": args.seam_s, "steps": args.steps, "tiling": TILING, "summary": summary, "videos": rows})
    plot(name, draw)
    return summary


def overhead(args: argparse.Namespace) -> dict:
    clips = {"2s": _request("a yellow square moving down", 2.0, args.steps, 5, args.size),
             "20s": _request("a yellow square moving down", 20.0, args.steps, 5, args.size)}
    base = {"model": MODEL, "deployments": _deployments(), "tiling": TILING}
    if args.step_progress_s is not None:
        base["jobs"] = {"step_progress_s": args.step_progress_s}
    # Serve's timings differ from one stack start to the next on this 2-core machine (process
    # placement, idle spinning threads), by more than the overhead itself: so several stacks,
    # each with its own in-process counterpart started just before it, and medians over all.
    local: dict[str, list[dict]] = {name: [] for name in clips}
    served: dict[str, list[dict]] = {name: [] for name in clips}
    per_stack: list[dict] = []
    for stack_index in range(args.stacks):
        with tempfile.TemporaryDirectory() as tmp, embedded_store(Path(tmp)) as storage:
            for name, request in clips.items():
                local[name] += [{**r, "stack": stack_index} for r in run_local({**base, "storage": storage}, [request] * args.repeats)["results"]]
        with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), base, num_cpus=4) as (client, config):
            _serve_render(client, _request("a red circle moving left", 1.0, 2, 0))
            for name, request in clips.items():
                served[name] += [{**_serve_render(client, request)[0], "stack": stack_index} for _ in range(args.repeats)]
        per_stack.append({
            name: median([r["wall_s"] for r in served[name] if r["stack"] == stack_index])
            / median([r["wall_s"] for r in local[name] if r["stack"] == stack_index]) - 1
            for name in clips
        })
        print(f"stack {stack_index}: overhead " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in per_stack[-1].items()), flush=True)

    from tessera.models.native.configs import get_config
    from tessera.serving.config import TilingConfig
    from tessera.serving.jobs.planner import plan_render, window_batches

    geometry = get_config("tiny").geometry()
    tiling = TilingConfig(**TILING)
    summary = {}
    for name, request in clips.items():
        plan = plan_render(int(round(request["duration_s"] * FPS)), args.size, args.size, geometry, tiling.options(geometry))
        # Denoiser calls per step group: one streamed call for one window, else batches over 1 replica.
        per_group = 1 if len(plan.windows) == 1 else len(window_batches(len(plan.windows), 1, tiling.max_windows_per_call))
        calls = per_group * len(plan.step_groups(request["steps"])) + len(plan.decode_tiles) + 1
        local_wall = median([r["wall_s"] for r in local[name]])
        serve_wall = median([r["wall_s"] for r in served[name]])
        stages = {}
        for stage in ("expand_s", "denoise_s", "decode_s", "finalize_s"):
            stages[stage] = {"local": median([r["timings"][stage] for r in local[name]]),
                             "serve": median([r["timings"][stage] for r in served[name]])}
        summary[name] = {
            "local_wall_s": local_wall, "serve_wall_s": serve_wall, "overhead": serve_wall / local_wall - 1,
            "stage_calls": calls, "per_call_ms": 1000 * (serve_wall - local_wall) / calls, "stages": stages,
            "overhead_per_stack": [stack[name] for stack in per_stack],
        }
        print(f"{name}: local {local_wall:.2f} s, Serve+gRPC {serve_wall:.2f} s, overhead {100 * summary[name]['overhead']:.1f}% "
              f"({calls} stage calls, {summary[name]['per_call_ms']:.1f} ms per call)", flush=True)

    def draw(plt) -> None:
        fig, axes = plt.subplots(1, len(clips), figsize=(10, 4))
        for axis, name in zip(axes, clips):
            stages = summary[name]["stages"]
            labels = list(stages)
            x = np.arange(len(labels))
            axis.bar(x - 0.2, [stages[s]["local"] for s in labels], 0.4, label="one process")
            axis.bar(x + 0.2, [stages[s]["serve"] for s in labels], 0.4, label="Serve + gRPC")
            axis.set_xticks(x, [s.removesuffix("_s") for s in labels])
            axis.set(ylabel="seconds (median)", title=f"{name} clip: +{100 * summary[name]['overhead']:.1f}% wall")
            axis.legend()

    name = _name("tiling_overhead", args.size, args.step_progress_s)
    write_results(name, {"repeats": args.repeats, "stacks": args.stacks, "size": args.size, "steps": args.steps, "step_progress_s": args.step_progress_s,
                         "summary": summary, "local": local, "serve": served})
    plot(name, draw)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["length", "fit", "replicas", "seams", "overhead", "all", "_local"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=SIZE, help="frame side of the length and overhead experiments")
    parser.add_argument("--stacks", type=int, default=3, help="overhead: Serve stacks started, one after another")
    parser.add_argument("--step-progress-s", type=float, default=None,
                        help="overhead: jobs.step_progress_s of both paths (default: the config's default)")
    parser.add_argument("--durations", type=float, nargs="+", default=[2, 5, 10, 20, 40, 60],
                        help="length: video lengths; past 60 s the results are named tiling_length*_to_<longest>s")
    parser.add_argument("--skip-naive", action="store_true", help="length: leave out the naive one-window baseline")
    parser.add_argument("--long-s", type=float, default=20.0, help="video length of the replica experiment")
    parser.add_argument("--replica-size", type=int, default=128,
                        help="frame side of the replica experiment: large enough that a window step outweighs a hop")
    parser.add_argument("--seam-s", type=float, default=12.0, help="video length of the seam experiment")
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--native-windows", action="store_true",
                        help="tiling.fit_windows off: every window the native length (results named *_native_windows)")
    parser.add_argument("--random-weights", action="store_true", help="dry run of the bench code with an untrained model")
    # internal (_local)
    parser.add_argument("--config")
    parser.add_argument("--requests")
    parser.add_argument("--warmup", action="store_true")
    parser.add_argument("--keep-frames")
    args = parser.parse_args(argv)
    if args.random_weights:
        MODEL["allow_random_weights"] = True
        MODEL["weights_dir"] = tempfile.mkdtemp(prefix="tessera-random-")
    if args.native_windows:
        TILING["fit_windows"] = False
    if args.experiment == "_local":
        _local_main(args)
        return
    experiments = {"length": length, "fit": fit, "replicas": replicas, "seams": seams, "overhead": overhead}
    chosen = list(experiments) if args.experiment == "all" else [args.experiment]
    for name in chosen:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        experiments[name](args)
        print(f"== {name} took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
