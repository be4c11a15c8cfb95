"""Autoscaling under a burst on the simulated cluster: the Denoiser from 1 to N replicas and back.

    flock /tmp/tessera-ray.lock python bench/sim_autoscale.py [--jobs 8] [--max-replicas 8]
        [--duration 10] [--steps 8] [--time-scale 0.5]

The Denoiser autoscales with ``policy: backlog`` (serving/autoscaling.py: a Ray Serve custom
policy over the windows each replica's step scheduler holds), ``min_replicas`` 1, ``max_replicas``
``--max-replicas``, on GPU nodes with one GPU per possible replica (and 2 more for the Decoder).
After an idle start, ``--jobs`` videos of ``--duration`` s (sim Wan 2.1 1.3B, 832x480, 16 fps;
10 s: 3 windows of 15 latent frames, every step its own step group, so a new replica takes
windows at the next step) arrive at once; then nothing.

Reported: time from the burst to the first new replica running and to the most replicas, time
back to 1 after the last job ends, every job's outcome, and the replica-seconds the Denoiser held
from the burst until it was back to 1, against the ideal: the burst's GPU work (cost model) at
full utilisation, and against the replica-seconds a fixed fleet of the most replicas would have
held for the same wall time. Results: ``bench/results/sim_autoscale.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import plot, write_results  # noqa: E402
from sim_common import FPS, HEIGHT, VARIANT, WIDTH, job_facts, job_shape, run_note  # noqa: E402


def document(args) -> dict:
    from tessera.cluster.sim_cluster import sim_document

    autoscaling = {
        "min_replicas": 1, "max_replicas": args.max_replicas, "policy": "backlog",
        "windows_per_replica": args.windows_per_replica, "batch_weight": 0.5,
        "upscale_delay_s": args.upscale_delay_s, "downscale_delay_s": args.downscale_delay_s,
        "metrics_interval_s": 0.5, "look_back_period_s": 2.0,
    }
    return sim_document(
        denoiser={"num_replicas": None, "autoscaling": autoscaling}, decoder={"num_replicas": 2},
        model={"variant": VARIANT, "time_scale": args.time_scale},
        jobs={"checkpoint_every_groups": 0, "step_progress_s": 0.5},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument("--windows-per-replica", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.5)
    parser.add_argument("--upscale-delay-s", type=float, default=1.0)
    parser.add_argument("--downscale-delay-s", type=float, default=10.0)
    parser.add_argument("--name", default="sim_autoscale")
    args = parser.parse_args()
    from tessera.cluster.sim_cluster import ReplicaSampler, SimCluster, wait_for

    shape = job_shape(args.duration, args.steps)
    gpus = args.max_replicas + 2
    nodes = [4] * (gpus // 4) + ([gpus % 4] if gpus % 4 else [])
    note = run_note()
    with tempfile.TemporaryDirectory() as tmp, SimCluster(Path(tmp), document(args), gpu_nodes=nodes) as cluster:
        cluster.wait_all_running(timeout_s=300)
        cluster.client.generate(prompt="warm-up", duration_s=5, steps=1, width=WIDTH, height=HEIGHT, fps=FPS)
        wait_for(lambda: cluster.running_replicas("Denoiser") == 1, 120, "an idle Denoiser at 1 replica")
        with ReplicaSampler(cluster, "Denoiser", interval_s=0.25) as sampler:
            time.sleep(1.0)
            origin = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                jobs = list(pool.map(lambda i: cluster.client.submit(
                    prompt=f"a burst clip {i}", duration_s=args.duration, steps=args.steps, seed=40 + i, width=WIDTH,
                    height=HEIGHT, fps=FPS, skip_prompt_expansion=True), range(args.jobs)))
                submitted = time.monotonic() - origin
                done = list(pool.map(lambda j: cluster.client.wait(j.job_id, timeout_s=1800), jobs))
            last_end = time.monotonic() - origin
            wait_for(lambda: cluster.running_replicas("Denoiser") == 1, 600, "the Denoiser back to 1 replica", every_s=0.5)
            back = time.monotonic() - origin
            time.sleep(1.0)
        facts = [job_facts(cluster, job) for job in done]

    timeline = sampler.timeline(origin)
    first_new = next((t for t, running, _ in timeline if t >= 0 and running >= 2), None)
    most = max(running for _, running, _ in timeline)
    full = next((t for t, running, _ in timeline if t >= 0 and running == most), None)
    spent = sampler.replica_seconds(origin, origin + back)
    work = args.jobs * shape.denoise_gpu_s * args.time_scale
    states = [f["state"] for f in facts]
    result = {
        **note, "variant": VARIANT, "size": [WIDTH, HEIGHT], "fps": FPS, "steps": args.steps, "time_scale": args.time_scale,
        "policy": document(args)["deployments"]["denoiser"]["autoscaling"], "gpu_nodes": nodes,
        "job_shape": shape.as_dict(), "jobs": args.jobs, "submitted_in_s": submitted,
        "time_to_first_new_replica_s": first_new, "most_replicas": most, "time_to_most_replicas_s": full,
        "last_job_end_s": last_end, "back_to_one_replica_s": back, "back_to_one_after_last_job_s": back - last_end,
        "all_succeeded": states == ["SUCCEEDED"] * args.jobs, "states": states,
        "replica_seconds_spent": spent, "ideal_replica_seconds": work, "spent_over_ideal": spent / work,
        "fixed_fleet_replica_seconds": most * back, "spent_over_fixed_fleet": spent / (most * back),
        "latency_s": {"median": sorted(f["timings"]["total_s"] for f in facts)[len(facts) // 2],
                      "max": max(f["timings"]["total_s"] for f in facts)},
        "jobs_facts": facts, "replica_timeline": timeline,
        "notes": [
            "ideal: the burst's GPU work (cost model, guided, batch 1) at full utilisation; the gap is scale-up latency "
            "(replica processes starting), the downscale delay, the data plane on this machine's 2 cores (no replica "
            "computes while windows move and fuse), and windows that do not divide evenly over the replicas",
            f"{args.steps} sampler steps and time_scale {args.time_scale} to fit the wall-time budget",
        ],
    }
    write_results(args.name, result)
    print(f"states {set(states)}; first new replica {first_new} s, {most} replicas at {full} s, back to 1 at {back:.1f} s; "
          f"replica-seconds {spent:.0f} vs ideal {work:.0f}", flush=True)

    def draw(plt) -> None:
        figure, axis = plt.subplots(figsize=(9, 4))
        axis.step([p[0] for p in timeline], [p[1] for p in timeline], where="post", label="running")
        axis.step([p[0] for p in timeline], [p[2] for p in timeline], where="post", label="starting/pending", alpha=0.6)
        axis.axvline(0, color="grey", lw=0.6)
        axis.axvline(last_end, color="green", ls="--", lw=0.8, label="last job done")
        axis.set_xlabel("seconds since the burst")
        axis.set_ylabel("Denoiser replicas")
        axis.set_title(f"{args.jobs} jobs at once, policy backlog: replica-seconds {spent:.0f} vs ideal {work:.0f}")
        axis.legend(fontsize=8)
    plot(args.name, draw)


if __name__ == "__main__":
    main()
