#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what tests need (venv, Node packages of
# the embedded S3 server, ffprobe), checks the committed gRPC stubs, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k planner).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
.venv/bin/python -m tessera.serving.api.generate --check
exec .venv/bin/pytest "$@"
