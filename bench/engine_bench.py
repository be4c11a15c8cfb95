"""What the engine core costs: leases, checkpoints and the Serve hops, per job, on the tiny model.

    python bench/engine_bench.py [--repeats 3] [--durations 2 10 20] [--skip-serve]

local
    The same jobs rendered in this process (``LocalTessera``: the JobEngine, its leases, records and
    outputs on the embedded S3 server, the stages called in process) with checkpoints off, every 5
    step groups and every step group, alternating settings job by job. Every S3 request the engine
    makes is counted by operation (a botocore event hook on its own client; the watcher's reads
    are not counted) and timed: records (lease, heartbeats, progress), checkpoints, outputs,
    commit copies and clean-up.
serve
    The same jobs through the Serve app over gRPC (two gateways, two job runners, as in
    production) with checkpoints every 5 groups, alternated with the in-process engine with the
    same setting: serving overhead = Serve wall / in-process wall - 1.

Results: ``bench/results/engine.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import embedded_store, median, plot, serve_stack, write_results  # noqa: E402

SETTINGS = {"no checkpoints": 0, "every 5 groups": 5, "every group": 1}
STEPS = 12
SIZE = 64


class RequestCounter:
    """Counts and times the S3 requests one botocore client makes, by operation."""

    def __init__(self, client) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.seconds = 0.0
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3.*", self._before)
        client.meta.events.register("after-call.s3.*", self._after)

    def _before(self, model, **_) -> None:
        with self._lock:
            self.counts[model.name] += 1
            self._started[threading.get_ident()] = time.perf_counter()

    def _after(self, **_) -> None:
        with self._lock:
            started = self._started.pop(threading.get_ident(), None)
            if started is not None:
                self.seconds += time.perf_counter() - started

    def snapshot(self) -> tuple[dict[str, int], float]:
        with self._lock:
            return dict(self.counts), self.seconds


def request(duration: float, seed: int) -> dict:
    return {"prompt": "a red circle moving to the right", "duration_s": duration, "steps": STEPS, "seed": seed,
            "width": SIZE, "height": SIZE, "fps": 8}


def local_config(storage: dict, every: int) -> dict:
    return {"storage": storage, "jobs": {"checkpoint_every_groups": every, "watch_poll_s": 0.05}}


def run_local(storage: dict, durations: list[float], repeats: int) -> list[dict]:
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest
    from tessera.serving.local import LocalTessera

    async def run() -> list[dict]:
        engines = {}
        for name, every in SETTINGS.items():
            local = LocalTessera(TesseraConfig.model_validate(local_config(storage, every)))
            await local.start()
            engines[name] = (local, RequestCounter(local.engine_store._client))
        rows = []
        try:
            for local, _ in engines.values():  # warm every engine once
                await local.render(GenerationRequest(**request(1.0, 0)))
            for repeat in range(repeats):
                for duration in durations:
                    order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
                    for name in order:
                        local, counter = engines[name]
                        before, seconds_before = counter.snapshot()
                        record, wall = await local.render(GenerationRequest(**request(duration, 100 + repeat)))
                        await asyncio.sleep(0.5)  # the clean-up after the end is part of the job's cost
                        after, seconds_after = counter.snapshot()
                        counts = {op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) - before.get(op, 0)}
                        rows.append({"setting": name, "duration_s": duration, "repeat": repeat, "wall_s": wall,
                                     "s3_requests": sum(counts.values()), "s3_by_operation": counts,
                                     "s3_seconds": seconds_after - seconds_before, "denoise_s": record.timings.denoise_s})
                        print(f"local {name:15s} {duration:4.0f} s: {wall:6.2f} s wall, {sum(counts.values()):4d} S3 requests "
                              f"({seconds_after - seconds_before:.2f} s)", flush=True)
        finally:
            for local, _ in engines.values():
                await local.stop()
        return rows

    return asyncio.run(run())


def run_serve(home: Path, storage_home: Path, durations: list[float], repeats: int) -> list[dict]:
    """Serve over gRPC alternated with the in-process engine (same checkpoint setting)."""
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest
    from tessera.serving.local import LocalTessera

    config = {
        "jobs": {"checkpoint_every_groups": 5, "watch_poll_s": 0.05},
        "deployments": {
            "gateway": {"num_cpus": 0.05, "num_replicas": 2},
            "job_runner": {"num_cpus": 0.05, "num_replicas": 2},
            "prompt_expander": {"num_cpus": 0.1, "torch_threads": 1},
            "denoiser": {"num_cpus": 0.5, "torch_threads": 2, "max_ongoing_requests": 32},
            "decoder": {"num_cpus": 0.5, "torch_threads": 2},
        },
    }
    rows = []
    with serve_stack(home, config, num_cpus=4) as (client, resolved):
        local_document = {**config, "storage": resolved.storage.model_dump(mode="json")}
        local_document["storage"]["access_key_id"] = resolved.storage.access_key_id.get_secret_value()
        local_document["storage"]["secret_access_key"] = resolved.storage.secret_access_key.get_secret_value()
        local_document["deployments"] = {"denoiser": {"num_cpus": 1, "torch_threads": 2}, "decoder": {"num_cpus": 1, "torch_threads": 2},
                                         "prompt_expander": {"num_cpus": 1, "torch_threads": 1}}

        async def local_render(local, duration, seed):
            return await local.render(GenerationRequest(**request(duration, seed)))

        loop = asyncio.new_event_loop()
        local = LocalTessera(TesseraConfig.model_validate(local_document))
        loop.run_until_complete(local.start())
        try:
            client.generate(**request(1.0, 0))
            loop.run_until_complete(local_render(local, 1.0, 0))
            for repeat in range(repeats):
                for duration in durations:
                    sides = ["serve", "local"] if repeat % 2 == 0 else ["local", "serve"]
                    for side in sides:
                        if side == "serve":
                            started = time.monotonic()
                            job = client.generate(**request(duration, 200 + repeat))
                            wall = time.monotonic() - started
                            denoise = job.timings.denoise_s
                        else:
                            record, wall = loop.run_until_complete(local_render(local, duration, 200 + repeat))
                            denoise = record.timings.denoise_s
                        rows.append({"side": side, "duration_s": duration, "repeat": repeat, "wall_s": wall, "denoise_s": denoise})
                        print(f"{side:5s} {duration:4.0f} s: {wall:6.2f} s", flush=True)
        finally:
            loop.run_until_complete(local.stop())
            loop.close()
    return rows


def summarise(local_rows: list[dict], serve_rows: list[dict], durations: list[float]) -> dict:
    summary: dict = {"local": {}, "serve": {}}
    for duration in durations:
        per = {}
        for name in SETTINGS:
            rows = [r for r in local_rows if r["setting"] == name and r["duration_s"] == duration]
            per[name] = {"wall_s": median(r["wall_s"] for r in rows), "s3_requests": median(r["s3_requests"] for r in rows),
                         "s3_seconds": median(r["s3_seconds"] for r in rows)}
        base = per["no checkpoints"]
        for name, values in per.items():
            values["wall_over_no_checkpoints"] = values["wall_s"] / base["wall_s"] - 1
            values["extra_s3_requests"] = values["s3_requests"] - base["s3_requests"]
        summary["local"][f"{duration:g}s"] = per
        if serve_rows:
            serve = [r["wall_s"] for r in serve_rows if r["side"] == "serve" and r["duration_s"] == duration]
            local = [r["wall_s"] for r in serve_rows if r["side"] == "local" and r["duration_s"] == duration]
            summary["serve"][f"{duration:g}s"] = {"serve_wall_s": median(serve), "local_wall_s": median(local),
                                                  "overhead": median(serve) / median(local) - 1}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--durations", type=float, nargs="+", default=[2.0, 10.0, 20.0])
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with embedded_store(Path(tmp)) as storage:
            local_rows = run_local(storage, args.durations, args.repeats)
        serve_rows = [] if args.skip_serve else run_serve(Path(tmp) / "stack", Path(tmp), args.durations, args.repeats)
    summary = summarise(local_rows, serve_rows, args.durations)
    write_results("engine", {"steps": STEPS, "size": SIZE, "settings": SETTINGS, "summary": summary,
                             "local": local_rows, "serve": serve_rows})

    def draw(plt) -> None:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for name in SETTINGS:
            left.plot(args.durations, [summary["local"][f"{d:g}s"][name]["s3_requests"] for d in args.durations], "o-", label=name)
        left.set_xlabel("video length (s)")
        left.set_ylabel("S3 requests per job (median)")
        left.set_title("leases and checkpoints: S3 requests per job")
        left.legend()
        if serve_rows:
            right.bar([f"{d:g} s" for d in args.durations],
                      [100 * summary["serve"][f"{d:g}s"]["overhead"] for d in args.durations])
            right.set_ylabel("Serve over gRPC vs in process (%)")
            right.set_title("serving overhead, same jobs, alternated")
    plot("engine", draw)


if __name__ == "__main__":
    main()
