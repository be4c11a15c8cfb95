"""Assemble a servable weights folder from a VAE run and a DiT run.

    python -m tessera.models.train.export --vae runs/vae --dit runs/dit --out models/weights/tiny

Writes ``vae.safetensors``, ``dit.safetensors``, ``config.json`` (the full ``NativeConfig``,
latent statistics included) and ``training.json`` (steps, times, data). The model card is
written by the evaluation bench (``bench/eval_tiny.py``), which adds measured figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tessera.models.native.configs import NativeConfig


def _training_time(log: Path) -> dict:
    """Steps and wall time of a run from its JSONL log (resumed segments summed)."""
    seconds, steps, segment = 0.0, 0, 0.0
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") in ("start", "resume"):
            seconds += segment
            segment = 0.0
        if "elapsed_s" in record:
            segment = float(record["elapsed_s"])
            steps = int(record["step"])
    return {"steps": steps, "train_seconds": round(seconds + segment, 1)}


def export(vae_run: Path, dit_run: Path, out: Path) -> None:
    native = NativeConfig.model_validate_json((dit_run / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vae_run / "vae.safetensors", out / "vae.safetensors")
    shutil.copyfile(dit_run / "dit.safetensors", out / "dit.safetensors")
    (out / "config.json").write_text(native.model_dump_json(indent=2) + "\n")
    dit_training = json.loads((dit_run / "training.json").read_text())
    training = {
        "vae": _training_time(vae_run / "log.jsonl"),
        "dit": {**_training_time(dit_run / "log.jsonl"), "cache": dit_training.get("cache")},
        "hardware": "2 shared CPU cores (AMD EPYC), torch threads 2",
    }
    (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--dit", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    export(args.vae, args.dit, args.out)


if __name__ == "__main__":
    main()
