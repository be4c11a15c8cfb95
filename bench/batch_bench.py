"""Batch rendering next to interactive traffic, on the real tiny model through the real stack.

    flock /tmp/tessera-ray.lock python bench/batch_bench.py [--name batch] [--items 32] [--steps 8]
        [--interactive 16] [--rounds 2] [--concurrency 2]

One stack (the embedded defaults, as ``tessera up`` runs it: one replica per deployment, Ray
given every core), and three kinds of phase, measured side by side in the same run:

idle
    ``--interactive`` interactive ``Generate`` calls (priority 0), one at a time with an
    exponential think time between them (mean ``--think-s``): the latency a user sees when
    nothing else runs.
alone
    a batch of ``--items`` short clips (``tessera batch`` defaults: priority -1, concurrency
    ``--concurrency``) and nothing else: its throughput (items and video-seconds per minute).
loaded
    the same batch (under another name, so new jobs) with the same interactive stream running
    beside it for as long as the batch runs (at most ``--interactive`` * 3 calls): interactive
    latency under batch load and batch throughput under interactive load.

Rounds alternate the order (idle, alone, loaded, then loaded, alone, idle), so drift on a shared
machine falls on both sides. Reported: interactive p50/p99 loaded vs idle, batch throughput
loaded vs alone, and where the interactive time goes, per stage from each job's own timings
(queued in the JobRunner, prompt expansion, denoise, decode, finalize, and the rest: gateway,
gRPC and the job's records) and, inside denoise, the time in the Denoiser's forwards that held
the job's steps (from the Denoiser's ``batch_stats``) vs the rest (waiting for a forward to end or
to be scheduled, the hops). With few samples p99 is close to the slowest call; the counts are in
the JSON. The goal is interactive p99 within 1.5x of idle.

Results: ``bench/results/<name>.json`` (with the git commit, and the files changed in the tree
when it ran) and ``<name>.png``. Bounded: ``--items`` <= 64 and every wait has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median, plot, serve_stack, write_results  # noqa: E402

STAGES = ("queued_s", "expand_s", "denoise_s", "decode_s", "finalize_s")
PARTS = (*STAGES, "job_other_s", "outside_job_s")
"""An interactive call's latency, whole: the job's stages, the rest of its total (records, lease,
hand-offs between stages), and what lies outside the job (gateway, gRPC, seeing its end)."""
COLOURS = ("red", "green", "blue", "yellow", "white", "cyan", "magenta", "orange")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("right", "left", "up", "down")
GOAL = 1.5


def source_state() -> dict:
    """The commit the bench ran on, and the tracked files that differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parent).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip(), "subject": git("log", "-1", "--format=%s").strip(), "dirty_files": changed}


def prompt(k: int) -> str:
    return f"a {COLOURS[k % len(COLOURS)]} {SHAPES[k // len(COLOURS) % len(SHAPES)]} moving {MOTIONS[k % len(MOTIONS)]}"


def clip(args) -> dict:
    return {"duration_s": args.duration, "width": args.size, "height": args.size, "steps": args.steps}


def batch_file(args) -> bytes:
    return "".join(json.dumps({"id": f"item{k:02d}", "prompt": prompt(k), "seed": k, **clip(args)}) + "\n"
                   for k in range(args.items)).encode()


class DenoiserForwards:
    """The Denoiser's forwards since the last call (one replica: the embedded default)."""

    def __init__(self, app_name: str):
        from ray import serve

        self._handle = serve.get_deployment_handle("Denoiser", app_name=app_name)
        self._seen = self._stats(1)["forwards_run"]

    def _stats(self, last: int) -> dict:
        return self._handle.batch_stats.remote(last).result()

    def since_last(self) -> list[dict]:
        total = self._stats(1)["forwards_run"]
        count, self._seen = total - self._seen, total
        return self._stats(count)["forwards"][-count:] if count else []


def interactive_call(client, forwards: DenoiserForwards, args, k: int) -> dict:
    forwards.since_last()  # forwards before this call are not its own
    started = time.monotonic()
    job = client.generate(prompt(k + 7), seed=1000 + k, **clip(args))
    wall = time.monotonic() - started
    own = [f for f in forwards.since_last() if any(p >= 0 for p in f["priorities"])]  # the forwards with its steps
    timings = {stage: getattr(job.timings, stage) for stage in STAGES}
    return {"started": started, "ended": started + wall, "latency_s": wall, **timings, "total_s": job.timings.total_s,
            "job_other_s": job.timings.total_s - sum(timings.values()), "outside_job_s": wall - job.timings.total_s,
            "forwards": len(own), "in_forward_s": sum(f["seconds"] for f in own),
            "forward_sizes": [f["size"] for f in own], "mixed_forwards": sum(1 for f in own if any(p < 0 for p in f["priorities"]))}


def interactive_stream(client, forwards, args, rng: random.Random, count: int, keep_going=lambda: True) -> list[dict]:
    calls = []
    while len(calls) < count and keep_going():
        calls.append(interactive_call(client, forwards, args, rng.randrange(10**6)))
        time.sleep(rng.expovariate(1 / args.think_s) if args.think_s > 0 else 0)
    return calls


def run_batch(client, forwards, args, name: str, rng: random.Random, with_interactive: bool) -> tuple[dict, list[dict]]:
    forwards.since_last()
    started = time.monotonic()
    client.submit_batch(batch_file(args), filename="bench.jsonl", name=name, concurrency=args.concurrency)
    done = threading.Event()
    calls: list[dict] = []
    stream = None
    if with_interactive:
        stream = threading.Thread(target=lambda: calls.extend(
            interactive_stream(client, forwards, args, rng, args.interactive * 3, keep_going=lambda: not done.is_set())))
        stream.start()
    try:
        batch = client.wait_batch(name, poll_s=0.25, timeout_s=args.batch_timeout_s)
    finally:
        ended = time.monotonic()
        done.set()
        if stream is not None:
            stream.join(timeout=120)
    wall = ended - started
    if batch.state != "SUCCEEDED":
        raise RuntimeError(f"batch {name} ended {batch.state}: {[i.error for i in batch.items if i.error][:3]}")
    summary = json.loads(urlread(batch.report.summary_url))
    items = [json.loads(line) for line in urlread(batch.report.report_jsonl_url).decode().splitlines()]
    job_seconds = sum(item["timings"]["total_s"] for item in items)
    loaded = [c for c in calls if c["ended"] <= ended]  # a call that outlived the batch ran partly alone
    row = {"name": name, "with_interactive": with_interactive, "wall_s": wall, "items": batch.counts.succeeded,
           "video_seconds": batch.counts.video_seconds, "items_per_min": 60 * batch.counts.succeeded / wall,
           "video_s_per_min": 60 * batch.counts.video_seconds / wall, "driver_wall_s": summary["wall_time_s"],
           "item_total_s_p50": median([item["timings"]["total_s"] for item in items]),
           "item_stage_s_p50": {stage: median([item["timings"][stage] for item in items]) for stage in STAGES},
           # The share of the batch's slots (concurrency x wall) its jobs filled: the rest is the
           # driver's rounds between one item's end and the next one's submit, and the start and end.
           "slot_occupancy": job_seconds / (args.concurrency * wall),
           "slot_occupancy_driver": job_seconds / (args.concurrency * summary["wall_time_s"]),  # from the driver's start
           "interactive_calls": len(loaded), "interactive_calls_after_end": len(calls) - len(loaded)}
    return row, loaded


def urlread(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def breakdown(calls: list[dict]) -> dict:
    """Median and p99 of the latency and of each part of it."""
    parts = {"latency_s": [c["latency_s"] for c in calls]}
    for stage in (*PARTS, "in_forward_s"):
        parts[stage] = [c[stage] for c in calls]
    parts["denoise_outside_forwards_s"] = [c["denoise_s"] - c["in_forward_s"] for c in calls]
    out = {name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "mean": float(np.mean(v))} for name, v in parts.items()}
    sizes = [s for c in calls for s in c["forward_sizes"]]
    out["calls"] = len(calls)
    out["forwards_per_call"] = float(np.mean([c["forwards"] for c in calls])) if calls else 0.0
    out["mean_forward_size"] = float(np.mean(sizes)) if sizes else 0.0
    out["mixed_forward_share"] = sum(c["mixed_forwards"] for c in calls) / max(1, sum(c["forwards"] for c in calls))
    slowest = max(calls, key=lambda c: c["latency_s"]) if calls else None
    if slowest:
        out["slowest_call"] = {k: slowest[k] for k in ("latency_s", *PARTS, "in_forward_s", "forwards", "mixed_forwards")}
    return out


def where_the_time_goes(idle: dict, loaded: dict) -> dict:
    """Per part of the interactive latency: how much more it takes loaded than idle (p50 and mean)."""
    extra = {part: {"p50_extra_s": loaded[part]["p50"] - idle[part]["p50"], "mean_extra_s": loaded[part]["mean"] - idle[part]["mean"]}
             for part in PARTS}
    total_mean = loaded["latency_s"]["mean"] - idle["latency_s"]["mean"]
    for part in PARTS:
        extra[part]["share_of_extra_mean"] = extra[part]["mean_extra_s"] / total_mean if total_mean > 0 else float("nan")
    extra["inside_denoise"] = {
        "in_forwards_extra_mean_s": loaded["in_forward_s"]["mean"] - idle["in_forward_s"]["mean"],
        "outside_forwards_extra_mean_s": loaded["denoise_outside_forwards_s"]["mean"] - idle["denoise_outside_forwards_s"]["mean"],
        "mean_forward_size_idle": idle["mean_forward_size"], "mean_forward_size_loaded": loaded["mean_forward_size"],
        "mixed_forward_share_loaded": loaded["mixed_forward_share"],
    }
    extra["latency_extra_mean_s"] = total_mean
    return extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="batch", help="output file name under bench/results/ (default batch)")
    parser.add_argument("--items", type=int, default=32, help="clips per batch (at most 64)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2, help="the batch's --concurrency (default: the batch default, 2)")
    parser.add_argument("--interactive", type=int, default=24, help="interactive calls per idle phase")
    parser.add_argument("--think-s", type=float, default=0.5, help="mean think time between interactive calls")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-timeout-s", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.items <= 64:
        parser.error("--items must be 1..64")
    rng = random.Random(args.seed)
    source = source_state()
    started = time.monotonic()
    idle_calls: list[dict] = []
    loaded_calls: list[dict] = []
    batches: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), {}, num_cpus=os.cpu_count() or 2) as (client, resolved):
        forwards = DenoiserForwards(resolved.app_name)
        client.generate("a red circle moving left", seed=0, **clip(args))  # warm-up: models, hops, a driver
        client.wait_batch(client.submit_batch(batch_file(argparse.Namespace(**{**vars(args), "items": 2})), filename="warm.jsonl",
                                              name="warm").name, timeout_s=args.batch_timeout_s)
        for round_index in range(args.rounds):
            order = ["idle", "alone", "loaded"] if round_index % 2 == 0 else ["loaded", "alone", "idle"]
            for phase in order:
                if phase == "idle":
                    calls = interactive_stream(client, forwards, args, rng, args.interactive)
                    idle_calls += [{**c, "round": round_index} for c in calls]
                    print(f"round {round_index} idle:   interactive p50 {median([c['latency_s'] for c in calls]):.2f} s "
                          f"over {len(calls)} calls", flush=True)
                    continue
                row, calls = run_batch(client, forwards, args, f"bench-r{round_index}-{phase}", rng, phase == "loaded")
                batches.append({**row, "round": round_index})
                loaded_calls += [{**c, "round": round_index} for c in calls]
                print(f"round {round_index} {phase + ':':7s} {row['items']} items in {row['wall_s']:.1f} s "
                      f"({row['items_per_min']:.1f} items/min)"
                      + (f", interactive p50 {median([c['latency_s'] for c in calls]):.2f} s over {len(calls)} calls" if calls else ""),
                      flush=True)
    idle, loaded = breakdown(idle_calls), breakdown(loaded_calls)
    alone_rows = [b for b in batches if not b["with_interactive"]]
    loaded_rows = [b for b in batches if b["with_interactive"]]
    alone_ipm = median([b["items_per_min"] for b in alone_rows])
    loaded_ipm = median([b["items_per_min"] for b in loaded_rows])
    p99_ratio = loaded["latency_s"]["p99"] / idle["latency_s"]["p99"]
    summary = {
        "interactive_idle_p50_s": idle["latency_s"]["p50"], "interactive_idle_p99_s": idle["latency_s"]["p99"],
        "interactive_loaded_p50_s": loaded["latency_s"]["p50"], "interactive_loaded_p99_s": loaded["latency_s"]["p99"],
        "interactive_p50_ratio": loaded["latency_s"]["p50"] / idle["latency_s"]["p50"], "interactive_p99_ratio": p99_ratio,
        "interactive_calls": {"idle": len(idle_calls), "loaded": len(loaded_calls)},
        "goal": f"interactive p99 loaded <= {GOAL}x idle", "goal_met": bool(p99_ratio <= GOAL),
        "batch_alone_items_per_min": alone_ipm, "batch_loaded_items_per_min": loaded_ipm,
        "batch_throughput_ratio_loaded_over_alone": loaded_ipm / alone_ipm,
        "batch_slot_occupancy": {"alone": median([b["slot_occupancy"] for b in alone_rows]),
                                 "loaded": median([b["slot_occupancy"] for b in loaded_rows]),
                                 "alone_from_driver_start": median([b["slot_occupancy_driver"] for b in alone_rows])},
        "batch_driver_wall_s": {"alone": median([b["driver_wall_s"] for b in alone_rows]),
                                "loaded": median([b["driver_wall_s"] for b in loaded_rows])},
        "batch_alone_video_s_per_min": median([b["video_s_per_min"] for b in alone_rows]),
        "batch_loaded_video_s_per_min": median([b["video_s_per_min"] for b in loaded_rows]),
        "where_the_time_goes": where_the_time_goes(idle, loaded),
    }
    write_results(args.name, {
        **source, "settings": {k: v for k, v in vars(args).items() if k != "name"}, "bench_wall_s": time.monotonic() - started,
        "summary": summary, "interactive_idle": idle, "interactive_loaded": loaded, "batches": batches,
        "calls": {"idle": idle_calls, "loaded": loaded_calls},
    })

    def draw(plt) -> None:
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
        for label, calls in (("idle", idle_calls), ("beside a batch", loaded_calls)):
            values = np.sort([c["latency_s"] for c in calls])
            left.plot(values, np.arange(1, len(values) + 1) / len(values), drawstyle="steps-post", label=f"{label} (n={len(values)})")
        left.set(xlabel="interactive latency (s)", ylabel="fraction of calls",
                 title=f"interactive {args.duration:g} s {args.size}x{args.size}, {args.steps} steps")
        left.legend()
        bottom = np.zeros(2)
        for part in PARTS:
            heights = np.array([idle[part]["mean"], loaded[part]["mean"]])
            middle.bar(["idle", "beside a batch"], heights, bottom=bottom, label=part.removesuffix("_s"))
            bottom += heights
        middle.set(ylabel="mean seconds per call", title="where the interactive time goes")
        middle.legend(fontsize=8)
        right.bar(["alone", "beside interactive"], [alone_ipm, loaded_ipm], color=["tab:blue", "tab:orange"])
        right.set(ylabel="items per minute (median of rounds)",
                  title=f"{args.items}-item batch, concurrency {args.concurrency}: {loaded_ipm / alone_ipm:.2f}x")
        figure.suptitle(f"interactive p99 {p99_ratio:.2f}x idle (goal {GOAL}x), commit {source['commit'][:10]}")

    plot(args.name, draw)
    print(json.dumps({k: v for k, v in summary.items() if k != "where_the_time_goes"}, indent=2))


if __name__ == "__main__":
    main()
