"""API keys to tenants."""

from __future__ import annotations

import hmac

from tessera.serving.config import AuthConfig
from tessera.serving.errors import UnauthenticatedError

API_KEY_METADATA = "x-api-key"


class Authenticator:
    def __init__(self, config: AuthConfig):
        self._keys = [(tenant, key.get_secret_value().encode()) for tenant, key in config.api_keys.items()]
        self._default_tenant = config.default_tenant

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def tenant(self, metadata: dict[str, str]) -> str:
        """The tenant a call acts for, from its metadata; raises UnauthenticatedError."""
        if not self._keys:
            return self._default_tenant
        key = metadata.get(API_KEY_METADATA)
        if not key:
            raise UnauthenticatedError(f"missing API key: send it in the '{API_KEY_METADATA}' metadata")
        offered = key.encode()
        match = None
        for tenant, expected in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(offered, expected):
                match = tenant
        if match is None:
            raise UnauthenticatedError("unknown API key")
        return match
