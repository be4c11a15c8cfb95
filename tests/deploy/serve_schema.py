"""Validate a Serve config the way ``serve run``/``serve deploy`` (and KubeRay) read it, strictly.

``ServeDeploySchema.model_validate`` is what Ray itself runs, but Ray 2.60's schema models keep
pydantic's default ``extra="ignore"``: a misspelled key (``grpc_option:``) is dropped without a
word and the cluster starts with Ray's defaults (no gRPC servicers at all). So besides Ray's own
validation, every key of the document must name a field of the model that read it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema


def validate_serve_config(document: dict) -> ServeDeploySchema:
    """Ray's own validation, then no key left unread; ValueError names the first ignored key."""
    config = ServeDeploySchema.model_validate(document)
    ignored = ignored_keys(config, document)
    if ignored:
        raise ValueError(f"keys Ray's ServeDeploySchema ignores (misspelled or misplaced?): {', '.join(ignored)}")
    return config


def ignored_keys(model: Any, document: Any, path: str = "") -> list[str]:
    """Paths of ``document`` keys that no field of the validated ``model`` took. Free-form values
    (an application's ``args``, ``user_config``, ``runtime_env``) are plain dicts in the model and
    are not looked into."""
    if isinstance(model, BaseModel) and isinstance(document, dict):
        fields = type(model).model_fields
        by_key = {field.alias or name: name for name, field in fields.items()} | {name: name for name in fields}
        found = []
        for key, value in document.items():
            if key not in by_key:
                found.append(f"{path}{key}")
            else:
                found += ignored_keys(getattr(model, by_key[key]), value, f"{path}{key}.")
        return found
    if isinstance(model, list) and isinstance(document, list):
        return [key for index, (item, raw) in enumerate(zip(model, document)) for key in ignored_keys(item, raw, f"{path}{index}.")]
    return []
