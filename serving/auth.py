"""API keys to tenants.

A key is a random token (:func:`new_api_key`: 32 bytes from :mod:`secrets`, URL-safe, ``tsk_``
in front so it is recognisable in a leak scan). Configs hold only its SHA-256 hash,
``sha256:<64 hex>`` (:func:`hash_api_key`), so a leaked config, ``tessera.yaml`` or Serve
config does not let anyone in.

Why SHA-256 and not scrypt/bcrypt/argon2: slow hashes protect *low-entropy* secrets (passwords)
against offline guessing. These keys carry 256 bits of randomness: no hash speed makes guessing
one feasible, so a slow hash adds nothing but its cost, and every call is authenticated afresh
(no sessions): scrypt at a safe setting is about 50-100 ms of CPU per call on the gateway, an
easy way to exhaust it with bad keys. SHA-256 costs microseconds.

The offered key is hashed, then compared with every configured hash by
:func:`hmac.compare_digest` (constant time, and no early exit), so timing says nothing about
which key or how much of it matched. Keys are never logged and never part of an error message.

Calls carry the key as gRPC metadata ``authorization: Bearer KEY`` (preferred; HTTP uses the same
header) or ``x-api-key: KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from tessera.serving.config import AuthConfig
from tessera.serving.errors import UnauthenticatedError

API_KEY_METADATA = "x-api-key"
AUTHORIZATION_METADATA = "authorization"
KEY_PREFIX = "tsk_"
HASH_PREFIX = "sha256:"
KEY_FILE_NAME = "api_key"
"""The embedded stack's key for its default tenant, under the stack's home (mode 0600)."""


def new_api_key() -> str:
    """A fresh API key: ``tsk_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """What a config stores for ``key``: ``sha256:<64 hex digits>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def default_home() -> Path:
    """The embedded stack's home: ``$TESSERA_HOME``, else ``~/.tessera`` (as the CLI's ``--home``)."""
    return Path(os.environ.get("TESSERA_HOME") or Path.home() / ".tessera")


def key_file(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else default_home()) / KEY_FILE_NAME


def read_key_file(home: str | Path | None = None) -> str | None:
    """The embedded stack's key under ``home`` (default :func:`default_home`), or None."""
    try:
        key = key_file(home).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return key or None


def offered_key(metadata: Mapping[str, str]) -> str | None:
    """The key a call offers in its metadata (names in lower case, as gRPC gives them), or None.

    ``authorization: Bearer KEY`` first, then ``x-api-key: KEY``; an ``authorization`` value
    of another scheme is refused (UnauthenticatedError), never ignored."""
    header = metadata.get(AUTHORIZATION_METADATA)
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise UnauthenticatedError("the 'authorization' metadata must be 'Bearer KEY'")
        return value.strip()
    key = metadata.get(API_KEY_METADATA)
    return key.strip() if key and key.strip() else None


class Authenticator:
    def __init__(self, config: AuthConfig):
        self._enabled = config.enabled
        self._digests = [
            (tenant, bytes.fromhex(value[len(HASH_PREFIX):])) for tenant, hashes in config.api_keys.items() for value in hashes
        ]
        self._default_tenant = config.default_tenant

    @property
    def required(self) -> bool:
        return self._enabled

    def tenant(self, metadata: Mapping[str, str]) -> str:
        """The tenant a call acts for, from its metadata; raises UnauthenticatedError."""
        if not self._enabled:
            return self._default_tenant
        key = offered_key(metadata)
        if key is None:
            raise UnauthenticatedError(
                f"missing API key: send it as '{AUTHORIZATION_METADATA}: Bearer KEY' (or '{API_KEY_METADATA}: KEY') metadata"
            )
        if not self._digests:
            raise UnauthenticatedError("this deployment has no API keys configured (auth.api_keys); ask its operator for one")
        offered = hashlib.sha256(key.encode()).digest()
        match = None
        for tenant, expected in self._digests:  # every hash, each in constant time: no early exit
            if hmac.compare_digest(offered, expected):
                match = tenant
        if match is None:
            raise UnauthenticatedError("unknown API key")
        return match
