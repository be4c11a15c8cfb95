"""The text conditioning's trip to the Denoiser: by reference once per job (Tessera's
``SharedText`` + the replica's ``TextCache``, serving/stages.py) vs inline with every step call,
through real Ray Serve handles to a real ``Denoiser`` replica (serving/denoiser.py).

    python bench/conditioning_bench.py [--jobs 2] [--steps 50] [--prompt-rows 120] [--negative-rows 80]

The replica serves a tiny random Wan 2.1 folder whose text width is UMT5-XXL's (4096), so the
conditioning is of real size while the transformer's compute is tiny (a 2-layer, 24-wide DiT on
32x32 px windows of 21 latent frames): what differs between the arms is the transfer. Each job
has a fresh conditioning (prompt and negative prompt, a new content key), as real jobs do, so the
by-reference arm pays its ``ray.put`` and the replica's one fetch every job. Conditionings:

* ``full_f32``: 512 x 4096 float32 per prompt (8 MiB; what ``WanPipeline.encode_prompt`` returns, padded to 512);
* ``full_bf16``: the same in bfloat16 (4 MiB);
* ``trimmed_f32``: Tessera's: only the prompt's real rows (float32), ``--prompt-rows`` and
  ``--negative-rows`` (the Denoiser pads the zero rows back; models/open/wan.py).

Call patterns of one ``--steps``-step job, as the job runner makes them (serving/jobs/sampling.py):

* ``1 window``: one streamed ``advance`` call for all steps (a lone window needs no fusion);
* ``1 window, a call per step``: ``advance_batch`` of one window per step (what a step server
  called step by step would see; not Tessera's pattern for a lone window);
* ``4 windows, 1 call/step``: ``advance_batch`` of the 4 windows each step (one Denoiser replica;
  ``tiling.max_windows_per_call`` 4, fusion every step);
* ``4 windows, 4 calls/step``: 4 concurrent ``advance_batch`` calls of one window each step (the
  pattern with 4 Denoiser replicas; here all land on the one replica).
* ``hop only, a call per step``: the calls of ``1 window, a call per step`` to a replica of a bench
  deployment that resolves the text through a ``TextCache`` as the Denoiser does and returns at
  once: the transfer and the hop alone, without the model's compute (whose noise on a busy machine
  hides differences of a few ms).

Text bytes moved per job: what the text adds to every call's pickled arguments (Ray serialises
them the same way; a call's windows share one ``SharedText``, pickled once), plus, by reference,
the one object put in Ray's object store that the replica fetches once (once per replica with
several). Wall time per step call is measured at
the caller. Results: ``bench/results/conditioning.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # tests.models.tiny_open builds the tiny folder
from harness import git_source, median, plot, write_results  # noqa: E402

TEXT_DIM, TEXT_LENGTH = 4096, 512
SIZE, WINDOW_FRAMES = 32, 21  # a window of Wan's native length (81 frames = 21 latent frames), tiny in space
PATTERNS = ("1 window", "1 window, a call per step", "4 windows, 1 call/step", "4 windows, 4 calls/step", "hop only, a call per step")
MODES = ("by_reference", "inline")


def conditioning(variant: str, job: int, prompt_rows: int, negative_rows: int):
    import torch

    from tessera.models.interface import TextConditioning

    rows = {"full_f32": (TEXT_LENGTH, TEXT_LENGTH), "full_bf16": (TEXT_LENGTH, TEXT_LENGTH),
            "trimmed_f32": (prompt_rows, negative_rows)}[variant]
    dtype = torch.bfloat16 if variant == "full_bf16" else torch.float32
    generator = torch.Generator().manual_seed(job)
    pair = []
    for n in rows:
        tokens = torch.randn(n, TEXT_DIM, generator=generator).to(dtype)
        pair.append(TextConditioning(tokens=tokens, mask=torch.ones(n, dtype=torch.bool)))
    return tuple(pair)


def content_key(pair) -> str:
    """``SharedText.content_key``, for bfloat16 too (numpy has no bfloat16: hash its bits)."""
    import torch

    digest = hashlib.sha256()
    for part in pair:
        tokens = part.tokens.view(torch.int16) if part.tokens.dtype == torch.bfloat16 else part.tokens
        digest.update(str(tuple(tokens.shape)).encode())
        digest.update(tokens.contiguous().numpy().tobytes())
        digest.update(part.mask.contiguous().numpy().tobytes())
    return digest.hexdigest()


def text_bytes(pair) -> int:
    return sum(p.tokens.numel() * p.tokens.element_size() + p.mask.numel() for p in pair)


def pickled(value) -> int:
    from ray import cloudpickle

    return len(cloudpickle.dumps(value))


class Hop:
    """The Denoiser's side of a call without the model: the text resolved through a TextCache."""

    def __init__(self):
        from tessera.serving.stages import TextCache

        self.texts = TextCache()

    async def advance_batch(self, works):
        for work in works:
            await self.texts.get(work.text)
        return [None] * len(works)


class Bench:
    def __init__(self, handle, model, steps: int, hop=None):
        import torch

        self.handle = handle
        self.hop = hop
        self.stream = handle.options(stream=True)
        self.sigmas = model.sigmas_for(steps, (16, WINDOW_FRAMES, SIZE // 8, SIZE // 8))
        self.steps = steps
        """Steps of the next job (at most ``steps``: a shorter job takes the first levels of the schedule)."""
        self.latents = [torch.randn(16, WINDOW_FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(w))
                        for w in range(4)]

    def work(self, window: int, text, first: int, last: int, latents=None, state=None):
        from tessera.serving.stages import StepWork

        return StepWork(latents=self.latents[window] if latents is None else latents, sigmas=tuple(self.sigmas[first : last + 1]),
                        text=text, guidance_scale=5.0, fps=16.0, solver_state=state)

    async def run(self, pattern: str, text) -> dict:
        """One job of ``pattern``: each call's wall time and pickled argument bytes."""
        calls, arg_bytes = [], 0

        async def batch(works, handle=self.handle):
            nonlocal arg_bytes
            arg_bytes += pickled(works)
            started = time.perf_counter()
            results = await handle.advance_batch.remote(works)
            calls.append(time.perf_counter() - started)
            return results

        started = time.perf_counter()
        if pattern == "1 window":
            work = self.work(0, text, 0, self.steps)
            arg_bytes += pickled(work)
            call_started = time.perf_counter()
            async for update in self.stream.advance.remote(work, 0.0):
                pass
            calls.append(time.perf_counter() - call_started)
            assert update.latents is not None
        elif pattern.startswith("hop only"):
            for step in range(self.steps):
                await batch([self.work(0, text, step, step + 1)], self.hop)
        else:
            windows = 1 if pattern.startswith("1 window") else 4
            latents, states = [None] * windows, [None] * windows
            for step in range(self.steps):
                works = [self.work(w, text, step, step + 1, latents[w], states[w]) for w in range(windows)]
                if pattern == "4 windows, 4 calls/step":
                    results = [r[0] for r in await asyncio.gather(*(batch([work]) for work in works))]
                else:
                    results = await batch(works)
                latents = [r.latents for r in results]
                states = [r.solver_state for r in results]
        return {"wall_s": time.perf_counter() - started, "calls": calls, "arg_bytes": arg_bytes}


async def measure(bench: Bench, args) -> list[dict]:
    import ray

    from tessera.serving.stages import SharedText

    rows = []
    for job in range(args.jobs + 1):  # job 0 (3 steps, full_f32 only) warms every path up and is not recorded
        bench.steps = args.steps if job else 3
        for variant in ("full_f32", "full_bf16", "trimmed_f32") if job else ("full_f32",):
            for pattern in PATTERNS:
                for mode in MODES:
                    pair = conditioning(variant, job * 1000 + PATTERNS.index(pattern) * 10 + MODES.index(mode),
                                        args.prompt_rows, args.negative_rows)
                    key = content_key(pair)
                    put_started = time.perf_counter()
                    text = SharedText(key, ray.put(pair) if mode == "by_reference" else pair)
                    put_s = time.perf_counter() - put_started
                    result = await bench.run(pattern, text)
                    calls = len(result["calls"])
                    # What the text adds to a call's arguments (a call's windows share one SharedText, pickled once).
                    per_call_overhead = pickled(text) - pickled(SharedText(key, None))
                    store_bytes = text_bytes(pair) if mode == "by_reference" else 0  # put once, fetched once by the replica
                    row = {
                        "job": job, "variant": variant, "pattern": pattern, "mode": mode,
                        "conditioning_bytes": text_bytes(pair), "calls": calls,
                        "wall_s": result["wall_s"] + put_s, "put_s": put_s,
                        "call_s_median": median(result["calls"]), "call_s_mean": statistics.fmean(result["calls"]),
                        "per_step_s": (result["wall_s"] + put_s) / bench.steps,
                        "arg_bytes": result["arg_bytes"],
                        "text_bytes_in_args": per_call_overhead * calls,
                        "object_store_bytes": store_bytes,
                        "text_bytes_moved": per_call_overhead * calls + store_bytes,
                    }
                    if job:
                        rows.append(row)
                    print(f"job {job} {variant:12s} {pattern:28s} {mode:12s} {calls:4d} calls, median call "
                          f"{row['call_s_median'] * 1e3:7.1f} ms, text moved {row['text_bytes_moved'] / 2**20:9.1f} MiB")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for variant in ("full_f32", "full_bf16", "trimmed_f32"):
        for pattern in PATTERNS:
            for mode in MODES:
                mine = [r for r in rows if (r["variant"], r["pattern"], r["mode"]) == (variant, pattern, mode)]
                out.append({
                    "variant": variant, "pattern": pattern, "mode": mode, "jobs": len(mine),
                    "conditioning_mib": round(mine[0]["conditioning_bytes"] / 2**20, 2), "calls_per_job": mine[0]["calls"],
                    "text_mib_moved_per_job": round(median(r["text_bytes_moved"] for r in mine) / 2**20, 2),
                    "arg_mib_per_job": round(median(r["arg_bytes"] for r in mine) / 2**20, 2),
                    "call_ms_median": round(median(r["call_s_median"] for r in mine) * 1e3, 2),
                    "job_s_median": round(median(r["wall_s"] for r in mine), 3),
                    "per_step_ms_median": round(median(r["per_step_s"] for r in mine) * 1e3, 2),
                })
    return out


def draw(summary: list[dict]):
    def figure(plt):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
        variants = ("full_f32", "full_bf16", "trimmed_f32")
        width = 0.13
        for axis, field, label in ((left, "per_step_ms_median", "wall time per sampler step (ms): job wall / steps, median of jobs"),
                                   (right, "text_mib_moved_per_job", "text conditioning moved per job (MiB, log)")):
            for v, variant in enumerate(variants):
                for m, mode in enumerate(MODES):
                    values = [next(s[field] for s in summary if (s["variant"], s["pattern"], s["mode"]) == (variant, p, mode))
                              for p in PATTERNS]
                    offset = (v * 2 + m - 2.5) * width
                    axis.bar([i + offset for i in range(len(PATTERNS))], values, width,
                             label=f"{variant} {mode.replace('_', ' ')}", hatch="" if mode == "by_reference" else "//",
                             color=f"C{v}", alpha=1.0 if mode == "by_reference" else 0.55)
            axis.set_xticks(range(len(PATTERNS)), [p.replace(", ", ",\n") for p in PATTERNS], fontsize=8)
            axis.set_title(label, fontsize=10)
        right.set_yscale("log")
        left.legend(fontsize=7, ncol=2)
        fig.suptitle("Text conditioning to the Denoiser: by reference once per job vs inline with every call "
                     "(50-step job, real Serve handles, tiny DiT with UMT5-XXL-wide text)", fontsize=10)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="recorded jobs per arm (after one warm-up job)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompt-rows", type=int, default=120, help="UMT5 tokens of a trimmed prompt (an expanded prompt of ~90 words)")
    parser.add_argument("--negative-rows", type=int, default=80, help="UMT5 tokens of a trimmed negative prompt")
    parser.add_argument("--name", default="conditioning")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from tessera.models.config import WanModelConfig
    from tessera.models.registry import load_model
    from tessera.serving.config import StepBatchingConfig
    from tessera.serving.denoiser import Denoiser
    from tests.models.tiny_open import wan_t2v

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = wan_t2v(Path(tmp) / "tiny-wan2.1-text4096", text_dim=TEXT_DIM)
        config = WanModelConfig(path=folder, name="wan-tiny-4096", device="cpu", dtype="float32",
                                max_sequence_length=TEXT_LENGTH, version="bench")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            serve.start(proxy_location="Disabled")
            handle = serve.run(
                Denoiser.options(name="Denoiser", num_replicas=1, max_ongoing_requests=32,
                                 ray_actor_options={"num_cpus": 1}).bind(config, 1, StepBatchingConfig()),
                name="conditioning-bench", route_prefix=None,
            )
            hop = serve.run(serve.deployment(Hop).options(name="Hop", ray_actor_options={"num_cpus": 0.5}).bind(),
                            name="conditioning-bench-hop", route_prefix=None)
            bench = Bench(handle, load_model(config, parts=()), args.steps, hop)
            started = time.monotonic()
            rows = asyncio.run(measure(bench, args))
            elapsed = time.monotonic() - started
        finally:
            serve.shutdown()
            ray.shutdown()
    summary = summarise(rows)
    for s in summary:
        print(f"{s['variant']:12s} {s['pattern']:28s} {s['mode']:12s} call {s['call_ms_median']:7.2f} ms  "
              f"per step {s['per_step_ms_median']:7.2f} ms  text {s['text_mib_moved_per_job']:9.2f} MiB/job")
    write_results(args.name, {
        "source": git_source(), "args": vars(args), "seconds": round(elapsed, 1),
        "setup": {"text_dim": TEXT_DIM, "text_length": TEXT_LENGTH, "window_latent_frames": WINDOW_FRAMES,
                  "size_px": SIZE, "denoiser_replicas": 1, "denoiser_threads": 1, "guidance_scale": 5.0},
        "summary": summary, "rows": rows,
    })
    plot(args.name, draw(summary))


if __name__ == "__main__":
    main()
