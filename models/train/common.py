"""Shared training plumbing: EMA, resumable checkpoints, JSONL logs, per-step seeding, export."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The data generator of one step: a resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([seed, stream, step])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    mixed = int(np.random.default_rng([seed, stream, step]).integers(0, 2**62))
    return torch.Generator().manual_seed(mixed)


class EMA:
    """Exponential moving average of a model's parameters (the exported weights)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm up the decay so early EMA weights are not dominated by the random init.
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_param, param in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param.detach(), 1.0 - decay)


def lr_at(step: int, *, base_lr: float, warmup: int, total: int, final_fraction: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``final_fraction`` of the base rate at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


class RunLog:
    """Appends one JSON object per line to ``log.jsonl`` and echoes a short line to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


def save_checkpoint(path: Path, **state: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a broken checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def resume_or_start(
    path: Path, resume: bool, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, log: RunLog, start: dict[str, Any]
) -> int:
    """Load model, EMA and optimizer from the checkpoint at ``path`` when resuming and it exists
    (logging a ``resume`` event), else log ``start`` as the ``start`` event. Returns the step."""
    if resume and path.exists():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        log.write({"event": "resume", "step": state["step"]})
        return state["step"]
    log.write({"event": "start", **start})
    return 0


def export_safetensors(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Weights as safetensors in ``dtype`` (fp16 halves the committed size; loading upcasts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to(dtype).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(path))
