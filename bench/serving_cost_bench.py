"""Where the Serve app's time over in-process rendering goes (the serving-overhead goal of time tiling).

    python bench/serving_cost_bench.py [--calls 12] [--stacks 3]

Two measurements, each side by side in one run, on the shipped tiny model:

hop
    One batched Denoiser call (one sampler step of 1 or 4 windows of 8 latent frames, 64x64 and
    128x128 frames), made alternately in this process on a ``DenoiserEngine`` and through a Serve
    handle to a replica running the same engine with the same torch threads. The replica times its
    own model work, so ``hop = wall through the handle - model time in the replica`` (Ray's
    serialisation, object transfer and Serve's router, both ways), and the replica's model time
    can be compared with the same call in process. Only this one deployment runs.
background
    The whole Tessera app (S3 server, Ray, Serve with every deployment) started and left idle: the
    CPU each of its processes uses over 20 s, and the in-process engine call of ``hop`` timed with
    that idle stack alongside and without it (the stack started and stopped ``--stacks`` times,
    each "with" measurement between two "without" ones).

Results: ``bench/results/serving_cost.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median, plot, role_of, serve_stack, write_results  # noqa: E402
from tiling_bench import _deployments  # noqa: E402

from tessera.models.config import NativeModelConfig  # noqa: E402
from tessera.models.registry import load_model  # noqa: E402
from tessera.serving.denoiser import DenoiserEngine  # noqa: E402
from tessera.serving.stages import SharedText, StepWork  # noqa: E402

THREADS = 2
"""torch threads of the engine in process and in the replica (the bench's Denoiser setting)."""
MODEL = NativeModelConfig()


@functools.cache
def text_model():
    return load_model(MODEL, parts={"text"})


def make_works(size: int, windows: int, by_reference: bool = False) -> list[StepWork]:
    """One sampler step of ``windows`` windows of the native length, as a long video's step group
    sends them; the text conditioning inline, or (``by_reference``) in Ray's object store once,
    as the JobRunner sends it."""
    model = text_model()
    text, negative = model.encode_text(["a yellow square moving down", ""])
    if by_reference:
        import ray

        shared = SharedText(SharedText.content_key(text, negative), ray.put((text, negative)))
    else:
        shared = SharedText(SharedText.content_key(text, negative), (text, negative))
    geometry = model.geometry
    side = size // geometry.spatial_factor
    generator = torch.Generator().manual_seed(0)
    sigmas = tuple(model.sigmas(10)[:2])
    return [
        StepWork(
            latents=torch.randn((geometry.latent_channels, geometry.native_window, side, side), generator=generator),
            sigmas=sigmas, text=shared, guidance_scale=5.0, fps=8.0,
        )
        for _ in range(windows)
    ]


def payload_bytes(works: list[StepWork]) -> int:
    """Bytes each call carries: the latents (the text conditioning goes once per job by reference)."""
    return sum(w.latents.numel() * w.latents.element_size() for w in works)


def timed_local(engine: DenoiserEngine, works: list[StepWork], calls: int) -> list[float]:
    async def run() -> list[float]:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await engine.advance_batch(works)
            times.append(time.perf_counter() - started)
        return times

    return asyncio.run(run())


def hop(args: argparse.Namespace) -> list[dict]:
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class TimedDenoiser:
        """The real engine behind a Serve handle, reporting its own model time."""

        def __init__(self) -> None:
            self.engine = DenoiserEngine(MODEL, THREADS)

        async def advance_batch(self, works: list[StepWork]) -> tuple[list[torch.Tensor], float]:
            started = time.perf_counter()
            results = await self.engine.advance_batch(works)
            return [result.latents for result in results], time.perf_counter() - started

    engine = DenoiserEngine(MODEL, THREADS)
    torch.set_num_threads(THREADS)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        handle = serve.run(TimedDenoiser.bind(), name="hop-probe", route_prefix=None)
        for size in args.sizes:
            for windows in (1, 4):
                works = make_works(size, windows)
                remote_works = make_works(size, windows, by_reference=True)
                handle.advance_batch.remote(remote_works).result()  # warm both sides (the text crosses once)
                timed_local(engine, works, 1)
                local, wall, inside = [], [], []
                for _ in range(args.calls):  # alternate call by call, so drift hits both alike
                    local += timed_local(engine, works, 1)
                    started = time.perf_counter()
                    _, model_s = handle.advance_batch.remote(remote_works).result()
                    wall.append(time.perf_counter() - started)
                    inside.append(model_s)
                row = {
                    "size": size, "windows": windows, "payload_mib": payload_bytes(works) / 2**20,
                    "local_ms": 1000 * median(local), "replica_model_ms": 1000 * median(inside),
                    "handle_wall_ms": 1000 * median(wall),
                    "hop_ms": 1000 * median([w - i for w, i in zip(wall, inside)]),
                }
                row["hop_share"] = row["hop_ms"] / row["local_ms"]
                row["replica_over_local"] = row["replica_model_ms"] / row["local_ms"] - 1
                rows.append(row)
                print(f"{size}x{size}, {windows} window(s), {row['payload_mib']:.2f} MiB each way: in process "
                      f"{row['local_ms']:.1f} ms, replica model {row['replica_model_ms']:.1f} ms, through the handle "
                      f"{row['handle_wall_ms']:.1f} ms: hop {row['hop_ms']:.1f} ms ({100 * row['hop_share']:.1f}%)", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def cpu_by_role(seconds: float) -> dict[str, float]:
    """Share of one core each role of the stack uses over ``seconds``: this process (the stack's
    driver, as the daemon of ``tessera up`` is) and every process under it."""
    def snapshot() -> dict[int, tuple[str, float]]:
        out = {}
        root = psutil.Process()
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                out[process.pid] = (role_of(process), times.user + times.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    usage: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        if pid in before:
            usage[role] = usage.get(role, 0.0) + (cpu - before[pid][1]) / seconds
    return dict(sorted(usage.items(), key=lambda item: -item[1]))


def background(args: argparse.Namespace) -> dict:
    size = max(args.sizes)
    works = make_works(size, 4)
    engine = DenoiserEngine(MODEL, THREADS)
    torch.set_num_threads(THREADS)
    timed_local(engine, works, 2)
    alone, beside, idle_cpu = [], [], {}
    for stack_index in range(args.stacks):
        alone.append(median(timed_local(engine, works, args.calls)))
        with tempfile.TemporaryDirectory() as tmp, serve_stack(Path(tmp), {"deployments": _deployments()}, num_cpus=4):
            time.sleep(5)  # let deployment start-up settle
            if stack_index == 0:
                idle_cpu = cpu_by_role(20.0)
            beside.append(median(timed_local(engine, works, args.calls)))
        print(f"stack {stack_index}: in process {1000 * alone[-1]:.1f} ms alone, {1000 * beside[-1]:.1f} ms beside the idle stack",
              flush=True)
    alone.append(median(timed_local(engine, works, args.calls)))
    pairs = [beside[i] / ((alone[i] + alone[i + 1]) / 2) - 1 for i in range(len(beside))]
    summary = {
        "size": size, "windows": 4, "alone_ms": [1000 * t for t in alone], "beside_idle_stack_ms": [1000 * t for t in beside],
        "slowdown_per_stack": pairs, "median_slowdown": median(pairs),
        "idle_stack_cpu_cores": idle_cpu, "idle_stack_cpu_total": sum(idle_cpu.values()),
    }
    print(f"idle stack: {100 * summary['idle_stack_cpu_total']:.1f}% of one core in all; the same call beside it: "
          f"{100 * summary['median_slowdown']:+.1f}% (per stack " + ", ".join(f"{100 * p:+.1f}%" for p in pairs) + ")", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=12, help="calls per measurement")
    parser.add_argument("--stacks", type=int, default=3, help="background: stack starts")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    if args.calls < 1 or args.stacks < 1:
        parser.error("--calls and --stacks must be at least 1")
    started = time.monotonic()
    hops = hop(args)
    idle = background(args)

    def draw(plt) -> None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        labels = [f"{r['size']}px\n{r['windows']} win" for r in hops]
        x = range(len(hops))
        left.bar([i - 0.2 for i in x], [r["local_ms"] for r in hops], 0.4, label="in process")
        left.bar([i + 0.2 for i in x], [r["replica_model_ms"] for r in hops], 0.4, label="replica: model")
        left.bar([i + 0.2 for i in x], [r["hop_ms"] for r in hops], 0.4, bottom=[r["replica_model_ms"] for r in hops],
                 label="replica: hop")
        left.set_xticks(list(x), labels)
        left.set(ylabel="ms per call (median)", title="one batched Denoiser call")
        left.legend()
        roles = list(idle["idle_stack_cpu_cores"])[:8]
        right.barh(roles[::-1], [100 * idle["idle_stack_cpu_cores"][r] for r in roles[::-1]])
        right.set(xlabel="% of one core, stack idle",
                  title=f"idle stack: {100 * idle['idle_stack_cpu_total']:.0f}% of a core; "
                        f"compute beside it {100 * idle['median_slowdown']:+.0f}%")

    write_results("serving_cost", {"threads": THREADS, "calls": args.calls, "stacks": args.stacks, "hop": hops, "background": idle,
                                   "took_s": time.monotonic() - started})
    plot("serving_cost", draw)


if __name__ == "__main__":
    main()
