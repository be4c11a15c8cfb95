#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what tests need (venv, Node packages of
# the embedded S3 server, ffprobe), checks the committed gRPC stubs, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k planner).
#
# Three pytest sessions, since a process holds one Ray cluster: the main one (its integration tests
# share one single-node stack), then the multinode tier (-m multinode: a simulated cluster of
# several Ray nodes, tests/multinode) and the open_models tier (-m open_models: a stack serving a
# tiny random Wan 2.1 diffusers folder, tests/open_models), with the same extra arguments.
# Arguments that choose markers themselves (-m ...) run one session, as given. The exit status is
# the first failure's; a session the arguments leave without tests counts only if all are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
.venv/bin/python -m tessera.serving.api.generate --check

for arg in "$@"; do
    case "$arg" in
        -m|-m?*) exec .venv/bin/pytest "$@" ;;
    esac
done

NO_TESTS=5  # pytest's status when the arguments select no test (e.g. -k planner in the multinode tier)
statuses=()
status=0; .venv/bin/pytest "$@" || status=$?; statuses+=("$status")
for tier in multinode open_models; do
    status=0; .venv/bin/pytest -m "$tier" "$@" || status=$?; statuses+=("$status")
done
for status in "${statuses[@]}"; do
    if [ "$status" -ne 0 ] && [ "$status" -ne "$NO_TESTS" ]; then exit "$status"; fi
done
for status in "${statuses[@]}"; do
    if [ "$status" -eq 0 ]; then exit 0; fi
done
exit "$NO_TESTS"
