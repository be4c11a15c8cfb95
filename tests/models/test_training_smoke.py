"""The training scripts run end to end (tiny models, a few steps), resume, and export servable weights."""

from __future__ import annotations

import json

import torch

from tessera.models import NativeModelConfig, load_model
from tessera.models.train import export, train_dit, train_vae


def test_vae_then_dit_smoke_runs_resume_and_export(tmp_path):
    vae_run, dit_run, weights = tmp_path / "vae", tmp_path / "dit", tmp_path / "weights"
    train_vae.main(["--out", str(vae_run), "--smoke"])
    assert (vae_run / "vae.safetensors").is_file()
    vae_config = json.loads((vae_run / "vae_config.json").read_text())
    assert len(vae_config["latent_std"]) == vae_config["latent_channels"] and vae_config["trained_steps"] == 6

    # Resuming a finished run continues from its checkpoint instead of starting over.
    train_vae.main(["--out", str(vae_run), "--smoke", "--resume"])
    events = [json.loads(line).get("event") for line in (vae_run / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and "resume" in events

    train_dit.main(["--out", str(dit_run), "--vae", str(vae_run), "--smoke"])
    log = [json.loads(line) for line in (dit_run / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "eval" for r in log)
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    export.main(["--vae", str(vae_run), "--dit", str(dit_run), "--out", str(weights)])
    model = load_model(NativeModelConfig(weights_dir=weights))
    assert not model.card.version.startswith("random")
    assert json.loads((weights / "training.json").read_text())["dit"]["steps"] == 4
    latents = model.encode_video(torch.zeros(5, 32, 32, 3, dtype=torch.uint8))
    assert model.decode_latents(latents).shape == (5, 32, 32, 3)


def test_vae_v2_smoke_resumes_with_its_own_architecture(tmp_path):
    run = tmp_path / "vae_v2"
    train_vae.main(["--out", str(run), "--smoke", "--full-rate-decoder-stages", "1", "--temporal-loss-weight", "2",
                    "--boundary-loss-weight", "1"])
    config = json.loads((run / "vae_config.json").read_text())
    assert config["full_rate_decoder_stages"] == 1
    # --resume without the override: the checkpoint's architecture, not the variant's, is rebuilt.
    train_vae.main(["--out", str(run), "--smoke", "--resume"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in log].count("resume") == 1
    assert any("boundary" in r for r in log)
