"""Package layering: the service never imports the operator's tools.

``tessera.cluster`` (the CLI, the embedded stack, the embedded S3 server) sits on top of
``tessera.serving``, which sits on top of ``tessera.models``. An import the other way round
(even a lazy one inside a function) makes a cycle and drags the operator's tools into every
Serve replica, so these tests read every module's syntax tree and fail on any such import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder on disk -> package it installs as (pyproject.toml [tool.setuptools.package-dir])
PACKAGES = {"serving": "tessera.serving", "models": "tessera.models", "cluster": "tessera.cluster"}
FORBIDDEN = {
    "serving": ("tessera.cluster",),
    "models": ("tessera.cluster", "tessera.serving"),
}


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it (top level, functions, try blocks), as
    absolute names: relative imports are resolved, ``from a import b`` yields ``a.b`` too, and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name count."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def offending(folder: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for lineno, name in imported_modules(path):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(folder):
    assert (ROOT / folder / "__init__.py").exists()
    assert offending(folder) == [], f"{folder}/ must not import {', '.join(FORBIDDEN[folder])}"


def test_the_cli_lives_on_the_cluster_side():
    assert not (ROOT / "serving" / "cli.py").exists()
    assert (ROOT / "cluster" / "cli.py").exists()
    assert 'tessera = "tessera.cluster.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    # the walker itself: a lazy import inside a function and a relative one both count
    source = (
        "def f():\n    from tessera.cluster.stack import EmbeddedStack\n"
        "from ...cluster import stack\n"
        "import importlib\nimportlib.import_module('tessera.cluster.cli')\n"
    )
    (tmp_path / "serving" / "jobs").mkdir(parents=True)
    (tmp_path / "serving" / "jobs" / "x.py").write_text(source)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    names = [name for _, name in imported_modules(tmp_path / "serving" / "jobs" / "x.py")]
    assert "tessera.cluster.stack" in names and "tessera.cluster.stack.EmbeddedStack" in names
    assert "tessera.cluster" in names and "tessera.cluster.cli" in names
