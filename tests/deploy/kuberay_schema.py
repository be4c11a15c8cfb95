"""Check a Kubernetes manifest against a CRD's openAPIV3Schema, without a cluster.

Kubernetes itself *prunes* fields a structural schema does not name (a typo in a RayService is
dropped silently and the cluster starts without it), so :func:`check` is stricter than the API
server: an unknown field is an error. It walks the subset of OpenAPI v3 that CRDs use: ``type``
(and ``nullable``), ``properties`` + ``required``, ``additionalProperties`` (maps), ``items``,
``enum``, ``pattern``, ``minimum``/``maximum``, ``minLength``/``maxLength``, ``anyOf``,
``x-kubernetes-int-or-string`` and ``x-kubernetes-preserve-unknown-fields``. CEL rules
(``x-kubernetes-validations``) are not evaluated; the RayService CRD has three, all about
immutability or the ``managedBy`` field, which the manifest does not set.

The vendored schema (``rayservice_crd_v1.yaml`` beside this file) is the CRD's, trimmed by
:func:`trim` to what a manifest uses: every object the manifest reaches keeps its full list of
fields (so unknown ones are still refused), but fields the manifest leaves out keep only their
type. Setting such a field later makes :func:`check` say so; then trim again from the CRD::

    curl -LO https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases/ray.io_rayservices.yaml
    python -m tests.deploy.kuberay_schema ray.io_rayservices.yaml deploy/kuberay/rayservice.yaml > tests/deploy/rayservice_crd_v1.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

TRIMMED = "x-tessera-trimmed"
"""Marks a schema node whose contents were left out of the vendored copy."""
HEADER = """\
# openAPIV3Schema of the RayService CRD, version v1, trimmed to the fields deploy/kuberay/rayservice.yaml uses
# (objects it reaches keep all their field names; see tests/deploy/kuberay_schema.py; descriptions dropped).
# Source: https://github.com/ray-project/kuberay, ray-operator/config/crd/bases/ray.io_rayservices.yaml
#   at tag v1.7.0, commit 59d663aeec13760646da3db9c1cf8cfe883e30b7 (Apache License 2.0).
# Regenerate: python -m tests.deploy.kuberay_schema ray.io_rayservices.yaml deploy/kuberay/rayservice.yaml
"""

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "integer": (int,), "number": (int, float),
}


def check(value: Any, schema: dict, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema``, as ``path: problem`` lines (empty: it conforms)."""
    where = path or "."
    if schema.get(TRIMMED):
        return [f"{where}: the vendored schema was trimmed here (the manifest did not use it); trim it again from the CRD"]
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    if "anyOf" in schema:
        if not any(not check(value, branch, path) for branch in schema["anyOf"]):
            return [f"{where}: {value!r} matches none of {[branch.get('type') for branch in schema['anyOf']]}"]
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return [f"{where}: {value!r} is neither an integer nor a string"]
    elif "type" in schema:
        kinds = _TYPES[schema["type"]]
        # YAML's true/false are not integers here, although bool is an int in Python.
        if not isinstance(value, kinds) or (isinstance(value, bool) and schema["type"] != "boolean"):
            return [f"{where}: {type(value).__name__} {value!r} where the schema wants {schema['type']}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            problems.append(f"{where}: length {len(value)} outside {schema.get('minLength', 0)}-{schema.get('maxLength')}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append(f"{where}: {value} outside {schema.get('minimum')}-{schema.get('maximum')}")
    if isinstance(value, dict):
        problems += _check_object(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += check(item, schema["items"], f"{path}[{index}]")
    return problems


def _check_object(value: dict, schema: dict, path: str) -> list[str]:
    properties = schema.get("properties")
    problems = [f"{path or '.'}: missing required field {name!r}" for name in schema.get("required", ()) if name not in value]
    for key, item in value.items():
        here = f"{path}.{key}"
        if properties is not None and key in properties:
            problems += check(item, properties[key], here)
        elif isinstance(schema.get("additionalProperties"), dict):
            problems += check(item, schema["additionalProperties"], here)
        elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{here}: unknown field (the API server would drop it silently)")
    return problems


def trim(schema: dict, instances: list) -> dict:
    """``schema`` without descriptions and without the contents of nodes that none of
    ``instances`` (the values found at this node: one per list item or map entry) reaches."""
    structural = ("description", "properties", "items", "additionalProperties", "anyOf")
    kept = {key: item for key, item in schema.items() if key not in structural}
    if "anyOf" in schema:
        kept["anyOf"] = [trim(branch, []) for branch in schema["anyOf"]]
    objects = [value for value in instances if isinstance(value, dict)]
    if "properties" in schema:
        kept["properties"] = {}
        for name, item in schema["properties"].items():
            found = [value[name] for value in objects if name in value]
            kept["properties"][name] = trim(item, found) if found else _stub(item)
    if isinstance(schema.get("additionalProperties"), dict):
        entries = [entry for value in objects for entry in value.values()]
        kept["additionalProperties"] = trim(schema["additionalProperties"], entries) if entries else _stub(schema["additionalProperties"])
    if "items" in schema:
        items = [item for value in instances if isinstance(value, list) for item in value]
        kept["items"] = trim(schema["items"], items) if items else _stub(schema["items"])
    return kept


def _stub(schema: dict) -> dict:
    """A field the manifest leaves out: its type only, marked if it had contents."""
    stub = {key: schema[key] for key in ("type", "x-kubernetes-int-or-string", "nullable") if key in schema}
    if any(key in schema for key in ("properties", "items", "additionalProperties", "anyOf")):
        stub[TRIMMED] = True
    return stub


def crd_version_schema(crd: dict, version: str = "v1") -> dict:
    [entry] = [item for item in crd["spec"]["versions"] if item["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def manifest_documents(path: Path, kind: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document and document.get("kind") == kind]


def main(crd_path: str, manifest_path: str) -> None:
    schema = crd_version_schema(yaml.safe_load(Path(crd_path).read_text()))
    [manifest] = manifest_documents(Path(manifest_path), "RayService")
    sys.stdout.write(HEADER + yaml.safe_dump(trim(schema, [manifest]), sort_keys=True, width=120, default_flow_style=None))


if __name__ == "__main__":
    main(*sys.argv[1:])
