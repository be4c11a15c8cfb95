"""Reconstruction quality and motion of the video VAE alone, on a fixed set of rendered clips.

    python bench/vae_eval.py                                   # shipped tiny VAE -> bench/results/vae_eval.json
    python bench/vae_eval.py --vae runs/vae_v2 --name v2       # a run: its export, else checkpoint.pt (EMA)
    python bench/vae_eval.py --vae runs/vae_v2/checkpoint.pt --quick --name v2_quick

The set and the measures are in ``tessera.models.train.vae_eval``: PSNR, the latent-group
boundary/inside centroid jump ratio (pooled per trained frame size x speed, per speed, per frame
size, per object size), stillness inside groups and direction preservation; the issue's bars
(ratio <= 1.2 and PSNR >= 30 dB in every trained size x speed cell, direction kept on every
clip) under ``bars``. Results: ``bench/results/vae_eval[_NAME].json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tessera.models.train.vae_eval import evaluate_vae, headline, load_vae

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, default=None, help="weights folder, run folder or checkpoint.pt (default: shipped)")
    parser.add_argument("--raw", action="store_true", help="from a checkpoint: the raw weights, not the EMA")
    parser.add_argument("--quick", action="store_true", help="27 directional clips instead of 108")
    parser.add_argument("--name", default="", help="suffix of the results file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae, info = load_vae(args.vae, raw=args.raw)
    result = {"vae": info, **evaluate_vae(vae, quick=args.quick)}
    out = args.out or ROOT / "bench" / "results" / (f"vae_eval_{args.name}.json" if args.name else "vae_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"vae": info["source"], "step": info.get("step"), **headline(result),
                      "by_cell_ratio": {k: v["ratio"] and round(v["ratio"], 2) for k, v in result["by_cell"].items()},
                      "by_cell_psnr": {k: round(v["psnr_mean"], 1) for k, v in result["by_cell"].items()},
                      "eval_seconds": result["eval_seconds"], "out": str(out)}, indent=1))
    return result


if __name__ == "__main__":
    main()
