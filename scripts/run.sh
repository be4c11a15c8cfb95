#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: installs what is missing, starts
# a local Ray instance, the local S3-compatible server and the Serve app, renders one video
# with the shipped tiny model, prints its s3:// URI, presigned URL and local copy, then stops
# what it started. Usage: scripts/run.sh ["prompt"] [tessera run options, e.g. --duration 4]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run
prompt=${1:-"a red circle moving to the right"}
shift || true
exec .venv/bin/tessera --home "${TESSERA_HOME:-$PWD/.tessera}" run "$prompt" --duration 2 "$@"
