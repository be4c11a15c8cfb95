"""API keys: hashing, the config's hashes, what a call's metadata offers, and the client's key lookup."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from tessera.serving.auth import (
    Authenticator, hash_api_key, key_file, new_api_key, offered_key, read_key_file,
)
from tessera.serving.client import TesseraClient, is_loopback_address, resolve_api_key
from tessera.serving.config import AuthConfig
from tessera.serving.errors import UnauthenticatedError


def test_keys_are_long_random_tokens_and_hashes_are_sha256():
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"tsk_[A-Za-z0-9_-]{43}", key) for key in keys), "32 random bytes, URL-safe"
    assert hash_api_key("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_the_config_holds_hashes_not_keys():
    key = new_api_key()
    config = AuthConfig(api_keys={"acme": hash_api_key(key)})  # one hash, or a list of them
    assert config.api_keys == {"acme": (hash_api_key(key),)}
    with pytest.raises(ValidationError, match="expected a key hash 'sha256:<64 hex digits>'") as caught:
        AuthConfig(api_keys={"acme": key})
    assert key not in str(caught.value), "a key put in the config by mistake is not echoed"
    with pytest.raises(ValidationError, match="one key hash is given to two tenants"):
        AuthConfig(api_keys={"acme": hash_api_key(key), "globex": [hash_api_key(key)]})
    with pytest.raises(ValidationError, match="no key hash"):
        AuthConfig(api_keys={"acme": []})
    with pytest.raises(ValidationError, match="auth.enabled is false but auth.api_keys are set"):
        AuthConfig(enabled=False, api_keys={"acme": hash_api_key(key)})
    assert AuthConfig().enabled, "on by default: turning it off takes an explicit line"


def test_bearer_and_x_api_key_both_name_the_tenant():
    one, two, rotated = new_api_key(), new_api_key(), new_api_key()
    auth = Authenticator(AuthConfig(api_keys={"acme": [hash_api_key(one), hash_api_key(rotated)], "globex": hash_api_key(two)}))
    assert auth.required
    assert auth.tenant({"authorization": f"Bearer {one}"}) == "acme"
    assert auth.tenant({"authorization": f"bearer  {rotated} "}) == "acme", "scheme case-insensitive; several keys per tenant"
    assert auth.tenant({"x-api-key": two}) == "globex"
    assert auth.tenant({"authorization": f"Bearer {two}", "x-api-key": one}) == "globex", "authorization first"


@pytest.mark.parametrize("metadata,message", [
    ({}, "missing API key: send it as 'authorization: Bearer KEY' (or 'x-api-key: KEY') metadata"),
    ({"x-api-key": "  "}, "missing API key"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, "the 'authorization' metadata must be 'Bearer KEY'"),
    ({"authorization": "Bearer"}, "must be 'Bearer KEY'"),
    ({"authorization": "Bearer tsk_wrong"}, "unknown API key"),
    ({"x-api-key": "tsk_wrong"}, "unknown API key"),
])
def test_missing_malformed_or_unknown_keys_are_unauthenticated(metadata, message):
    auth = Authenticator(AuthConfig(api_keys={"acme": hash_api_key(new_api_key())}))
    with pytest.raises(UnauthenticatedError) as caught:
        auth.tenant(metadata)
    assert message in str(caught.value)
    assert "tsk_wrong" not in str(caught.value), "never echo a key"


def test_auth_on_with_no_keys_refuses_everyone_and_off_lets_everyone_in():
    with pytest.raises(UnauthenticatedError, match="no API keys configured"):
        Authenticator(AuthConfig()).tenant({"x-api-key": new_api_key()})
    open_door = Authenticator(AuthConfig(enabled=False, default_tenant="lab"))
    assert not open_door.required and open_door.tenant({"x-api-key": "anything"}) == "lab"


def test_offered_key_reads_either_header():
    assert offered_key({"authorization": "Bearer k1"}) == "k1"
    assert offered_key({"x-api-key": "k2"}) == "k2"
    assert offered_key({"other": "x"}) is None


def test_the_client_finds_the_stack_key_for_loopback_addresses_only(tmp_path, monkeypatch):
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)
    key_file(tmp_path).write_text("tsk_local\n")
    assert read_key_file(tmp_path) == "tsk_local"
    assert resolve_api_key("127.0.0.1:9000", home=tmp_path) == "tsk_local"
    assert resolve_api_key("localhost:9000", home=tmp_path) == "tsk_local"
    assert resolve_api_key("[::1]:9000", home=tmp_path) == "tsk_local"
    assert resolve_api_key("tessera.example.com:9000", home=tmp_path) is None, "the local key never goes elsewhere"
    assert resolve_api_key("127.0.0.1:9000", api_key="given", home=tmp_path) == "given"
    assert resolve_api_key("127.0.0.1:9000", api_key="", home=tmp_path) is None, "'' sends no key"
    monkeypatch.setenv("TESSERA_API_KEY", "from-env")
    assert resolve_api_key("tessera.example.com:9000", home=tmp_path) == "from-env"
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path))
    monkeypatch.delenv("TESSERA_API_KEY")
    assert resolve_api_key("127.0.0.1:9000") == "tsk_local", "TESSERA_HOME, as the CLI's --home"
    assert resolve_api_key("127.0.0.1:9000", home=tmp_path / "none") is None
    assert is_loopback_address("127.0.0.2:1") and not is_loopback_address("10.0.0.1:9000")
    with TesseraClient("127.0.0.1:1", home=tmp_path) as client:
        assert client.has_key
    with TesseraClient("127.0.0.1:1", api_key="") as client:
        assert not client.has_key
