"""Every open family's example under deploy/models/ is a valid Tessera config overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tessera.models.config import OpenModelConfig
from tessera.serving.config import TesseraConfig

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "models").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_overlay(example):
    data = yaml.safe_load(example.read_text())
    config = TesseraConfig.model_validate({**data, "storage": {"bucket": "tessera-videos"}})
    assert isinstance(config.model, OpenModelConfig)


def test_every_open_family_has_an_example():
    families = {yaml.safe_load(p.read_text())["model"]["family"] for p in EXAMPLES}
    assert families >= {"wan", "ltx", "cogvideox", "hunyuanvideo15"}
