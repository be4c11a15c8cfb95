"""Regenerate the committed gRPC stubs from ``tessera.proto``.

    python -m tessera.serving.api.generate          # rewrite the stubs in place
    python -m tessera.serving.api.generate --check  # exit 1 if the committed stubs are stale

The stubs are committed (Ray's gRPC proxy imports them from the installed package before any
application code runs), generated with the grpcio-tools version pinned in pyproject.toml. The
proto is compiled from a temporary include root that mirrors the Python package path, so the
generated modules import each other as ``tessera.serving.api.*``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
PROTO_NAME = "tessera.proto"
PACKAGE_PATH = Path("tessera/serving/api")
GENERATED = ("tessera_pb2.py", "tessera_pb2.pyi", "tessera_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Compile the proto and write the generated modules into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / PACKAGE_PATH).mkdir(parents=True)
        shutil.copy(API_DIR / PROTO_NAME, root / PACKAGE_PATH / PROTO_NAME)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            str(PACKAGE_PATH / PROTO_NAME),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed; see its message above")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copy(root / PACKAGE_PATH / name, out_dir / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if not args.check:
        generate(API_DIR)
        print(f"wrote {', '.join(GENERATED)} in {API_DIR}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in GENERATED if (Path(tmp) / n).read_bytes() != (API_DIR / n).read_bytes()]
    if stale:
        print(f"stale generated stubs: {stale}; run python -m tessera.serving.api.generate", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
