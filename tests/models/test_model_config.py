"""ModelConfig is a union discriminated by ``family``; a missing family is native."""

import pytest
from pydantic import ValidationError

from tessera.models import NativeModelConfig, SimModelConfig, parse_model_config
from tessera.serving.config import TesseraConfig


def test_missing_family_is_native_and_each_family_has_its_own_fields():
    assert parse_model_config({}) == NativeModelConfig()
    assert isinstance(parse_model_config({"variant": "tiny", "torch_threads": 2}), NativeModelConfig)
    sim = parse_model_config({"family": "sim", "time_scale": 0.01})
    assert isinstance(sim, SimModelConfig) and sim.time_scale == 0.01
    with pytest.raises(ValidationError, match="weights_dir"):
        parse_model_config({"family": "sim", "weights_dir": "/tmp"})
    with pytest.raises(ValidationError, match="time_scale"):
        parse_model_config({"time_scale": 0.5})  # native has no time_scale
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_model_config({"family": "nope"})


def test_tessera_config_round_trips_either_family():
    storage = {"endpoint_url": "http://127.0.0.1:1", "bucket": "tessera-test", "access_key_id": "a", "secret_access_key": "s"}
    native = TesseraConfig.model_validate({"storage": storage})
    assert isinstance(native.model, NativeModelConfig)
    sim = TesseraConfig.model_validate({"storage": storage, "model": {"family": "sim", "variant": "wan2.1-14b-480p"}})
    assert isinstance(sim.model, SimModelConfig)
    again = TesseraConfig.model_validate(sim.model_dump(mode="json"))
    assert again.model == sim.model
