"""What the benches on the simulated cluster share (``bench/sim_*.py``): cost predictions from the
sim model's cost model, the Denoiser's forwards of a run, job facts from the records.

The cluster itself is :class:`tessera.cluster.sim_cluster.SimCluster` (a CPU head and GPU nodes on
this machine, ``ray.cluster_utils.Cluster``); the model is ``sim`` (``models/sim``), whose steps and
decodes sleep for ``time_scale`` x the seconds a cost model calibrated on published H100/H200
figures predicts. Every figure a bench reports in GPU seconds is simulated seconds (before
``time_scale``); wall seconds are measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import git_source  # noqa: E402

VARIANT = "wan2.1-1.3b-480p"
WIDTH, HEIGHT, FPS = 832, 480, 16
"""Wan 2.1's own 480p size and frame rate."""


def cost(variant: str = VARIANT):
    from tessera.models.sim.cost import VARIANTS

    return VARIANTS[variant]


@dataclasses.dataclass(frozen=True)
class JobShape:
    """What a request costs on the simulated GPU, from the planner and the cost model."""

    duration_s: float
    width: int
    height: int
    fps: float
    steps: int
    frames: int
    latent_frames: int
    windows: tuple[int, ...]
    """Latent frames of each denoising window."""
    step_gpu_s: tuple[float, ...]
    """Simulated GPU seconds of one guided step of each window alone (batch 1)."""
    decode_gpu_s: float
    """Simulated GPU seconds of decoding every frame (the decode tiles' context excluded)."""

    @property
    def denoise_gpu_s(self) -> float:
        """Simulated GPU seconds of all its steps, each window in a forward of its own."""
        return self.steps * sum(self.step_gpu_s)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "windows": len(self.windows), "window_latent_frames": sorted(set(self.windows)),
                "denoise_gpu_s": self.denoise_gpu_s}


def job_shape(duration_s: float, steps: int, width: int = WIDTH, height: int = HEIGHT, fps: float = FPS,
              variant: str = VARIANT, window: int = 21, min_overlap: int = 2) -> JobShape:
    """The job's windows (as the planner cuts them: native window of 21 latent frames, overlap 2,
    fitted) and its simulated GPU cost (guided, as Wan's default guidance 5.0 is)."""
    from tessera.serving.jobs.planner import plan_windows

    model = cost(variant)
    frames = round(duration_s * fps) + 1 if duration_s else 1
    latent = model.geometry.latent_frames(frames)
    windows = tuple(w.length for w in plan_windows(latent, window, min_overlap, fit=True))
    step = tuple(model.step_seconds(width, height, (length - 1) * model.geometry.temporal_factor + 1) for length in windows)
    return JobShape(duration_s, width, height, fps, steps, frames, latent, windows, step,
                    model.decode_seconds(frames, height, width))


def forwards_between(stats: dict[str, dict], start: float, end: float) -> dict[str, list[dict]]:
    """Each replica's forwards that started in ``[start, end]`` (wall-clock seconds, ``time.time()``)."""
    return {replica: [f for f in s["forwards"] if start <= f["started_at"] <= end] for replica, s in stats.items()}


def busy(forwards: dict[str, list[dict]], replicas: int) -> dict:
    """How a run's forwards spread over ``replicas`` replicas: busy seconds each (zeros for
    replicas that ran none), their sum, the busiest, and the spread of start and end times."""
    per = sorted((sum(f["seconds"] for f in fs) for fs in forwards.values()), reverse=True)
    per += [0.0] * max(0, replicas - len(per))
    every = [f for fs in forwards.values() for f in fs]
    first = min((f["started_at"] for f in every), default=None)
    last = max((f["started_at"] + f["seconds"] for f in every), default=None)
    sizes = [f["size"] for f in every]
    return {
        "busy_s_per_replica": [round(x, 3) for x in per],
        "busy_s_total": sum(per),
        "busy_s_max": per[0] if per else 0.0,
        "balance": (sum(per) / len(per)) / per[0] if per and per[0] else None,
        "forwards": len(every),
        "window_steps": sum(sizes),
        "mean_batch": sum(sizes) / len(sizes) if sizes else None,
        "first_forward_at": first,
        "last_forward_end": last,
        "replicas_with_work": sum(1 for fs in forwards.values() if fs),
    }


def record_of(cluster, job_id: str):
    from tessera.serving.jobs.records import JobStore
    from tessera.serving.storage import ObjectStore

    return JobStore(ObjectStore(cluster.config.storage)).get("default", job_id)


def job_facts(cluster, job) -> dict:
    """A finished job's state, stages and wall-clock marks (from its record)."""
    from tessera.serving.api import tessera_pb2 as pb

    record = record_of(cluster, job.job_id)
    t = record.timings
    denoise_start = (record.started_at or record.created_at) + t.expand_s
    return {
        "job_id": job.job_id, "state": pb.JobState.Name(job.state), "priority": record.priority,
        "error": job.error.message if job.error.message else "",
        "attempts": record.attempts, "takeovers": record.takeovers,
        "created_at": record.created_at, "started_at": record.started_at, "ended_at": record.updated_at,
        "denoise_start": denoise_start, "denoise_end": denoise_start + t.denoise_s,
        "timings": {"queued_s": t.queued_s, "expand_s": t.expand_s, "denoise_s": t.denoise_s, "decode_s": t.decode_s,
                    "finalize_s": t.finalize_s, "total_s": t.total_s},
        "num_frames": job.num_frames, "duration_s": job.duration_s,
    }


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_note() -> dict:
    """The machine's state when a bench ran (it is shared: other work changes the figures)."""
    return {"load_average_1m_at_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), **git_source()}
