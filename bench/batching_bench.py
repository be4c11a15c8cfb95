"""Step batching across requests on the real tiny model (CPU): 16 concurrent 1 s jobs, batched
vs unbatched, through the real Serve app over gRPC, in one run.

    python bench/batching_bench.py [--jobs 16] [--rounds 2] [--steps 10] [--max-batch 16]

One stack; the arms alternate round by round by redeploying the app with ``batching.
max_batch_items`` = ``--max-batch`` (batched) or 1 (unbatched: every forward one window), so
both see the same machine state. Each round submits every job at once (SubmitJob), waits for
all, and records the wall time, each job's latency and the Denoiser's forwards (batch sizes)
from its ``batch_stats``. Throughput = jobs / wall. Results: ``bench/results/batching.json``
and ``.png``.

On 2 CPU cores a batched forward of the tiny DiT costs nearly as much per window as separate
ones (the CPU is compute-bound at batch 1 already), so the ratio here says what batching buys
when the forward's fixed cost is small; the simulated accelerator's bench (calibrated GPU
costs, bench/sim_* ) says what it buys on a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median, plot, serve_stack, write_results  # noqa: E402

PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle moving left", "a yellow circle moving down"]


def stack_config(max_batch: int, jobs: int) -> dict:
    return {
        "batching": {"max_batch_items": max_batch, "max_wait_s": 0.01},
        "jobs": {"max_running_jobs": jobs, "max_queued_jobs": jobs, "step_progress_s": 0.5},
        "deployments": {
            "gateway": {"num_cpus": 0.1, "max_ongoing_requests": 128},
            "job_runner": {"num_cpus": 0.1, "max_ongoing_requests": 128},
            "prompt_expander": {"num_cpus": 0.1, "torch_threads": 1},
            "denoiser": {"num_cpus": 0.5, "torch_threads": 2, "max_ongoing_requests": 64},
            "decoder": {"num_cpus": 0.5, "torch_threads": 1},
        },
    }


def redeploy(resolved, max_batch: int) -> None:
    """The same app with another batching limit (replicas restart with it)."""
    from ray import serve

    from tessera.serving.app import ROUTE_PREFIX, build_app

    config = resolved.model_copy(update={"batching": resolved.batching.model_copy(update={"max_batch_items": max_batch})})
    serve.run(build_app(config), name=config.app_name, route_prefix=ROUTE_PREFIX)


def denoiser_stats(app_name: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle("Denoiser", app_name=app_name).batch_stats.remote().result()


def round_of_jobs(client, app_name: str, jobs: int, steps: int, tag: str) -> dict:
    before = denoiser_stats(app_name)
    started = time.monotonic()

    def one(index: int) -> float:
        job = client.submit(PROMPTS[index % len(PROMPTS)], duration_s=1, width=64, height=64, fps=8, steps=steps,
                            seed=100 + index, skip_prompt_expansion=True, idempotency_key=f"{tag}-{index}")
        client.wait(job.job_id, timeout_s=900)
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        latencies = list(pool.map(one, range(jobs)))
    wall = time.monotonic() - started
    after = denoiser_stats(app_name)
    count = after["forwards_run"] - before["forwards_run"]
    sizes = [f["size"] for f in after["forwards"][-count:]] if count else []
    return {"wall_s": wall, "jobs_per_s": jobs / wall, "video_s_per_s": jobs / wall, "latency_median_s": median(latencies),
            "latency_max_s": max(latencies), "forwards": count, "windows_stepped": sum(sizes),
            "mean_batch_size": sum(sizes) / len(sizes) if sizes else 0.0, "max_batch_size": max(sizes, default=0)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--name", default="batching")
    args = parser.parse_args(argv)
    arms = {"batched": args.max_batch, "unbatched": 1}
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), stack_config(args.max_batch, args.jobs), num_cpus=4) as (client, resolved):
        client.generate("a red circle moving left", duration_s=1, width=64, height=64, fps=8, steps=2, seed=0)  # warm-up
        for round_index in range(args.rounds):
            for arm, max_batch in arms.items():
                redeploy(resolved, max_batch)
                client.wait_until_ready(timeout_s=300)
                row = round_of_jobs(client, resolved.app_name, args.jobs, args.steps, f"r{round_index}-{arm}")
                rows[arm].append(row)
                print(f"round {round_index} {arm:9s}: {row['wall_s']:.1f} s, {row['jobs_per_s']:.2f} jobs/s, "
                      f"mean batch {row['mean_batch_size']:.1f} (max {row['max_batch_size']}) over {row['forwards']} forwards",
                      flush=True)
    summary = {arm: {"median_jobs_per_s": median([r["jobs_per_s"] for r in series]),
                     "median_latency_s": median([r["latency_median_s"] for r in series]),
                     "mean_batch_size": median([r["mean_batch_size"] for r in series])} for arm, series in rows.items()}
    summary["throughput_ratio_batched_over_unbatched"] = (
        summary["batched"]["median_jobs_per_s"] / summary["unbatched"]["median_jobs_per_s"])

    def draw(plt) -> None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for arm, series in rows.items():
            left.plot(range(len(series)), [r["jobs_per_s"] for r in series], marker="o", label=arm)
            right.plot(range(len(series)), [r["mean_batch_size"] for r in series], marker="o", label=arm)
        left.set(xlabel="round", ylabel="jobs / s", title=f"{args.jobs} concurrent 1 s jobs, tiny model, {args.steps} steps")
        right.set(xlabel="round", ylabel="mean windows per forward", title="Denoiser batch size")
        left.set_ylim(bottom=0)
        left.legend()
        right.legend()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_results(args.name, {"commit": commit, "jobs": args.jobs, "steps": args.steps, "max_batch": args.max_batch,
                              "summary": summary, "rounds": rows})
    plot(args.name, draw)
    print(summary)


if __name__ == "__main__":
    main()
