#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what tests need (venv, Node packages of
# the embedded S3 server, ffprobe), checks the committed gRPC stubs, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k planner).
#
# Two pytest sessions, since a process holds one Ray cluster: the main one (its integration tests
# share one single-node stack), then the multinode tier (-m multinode: a simulated cluster of
# several Ray nodes, tests/multinode) with the same extra arguments. Arguments that choose
# markers themselves (-m ...) run one session, as given. The exit status is the first failure's.
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
main=0
.venv/bin/pytest "$@" || main=$?
multinode=0
.venv/bin/pytest -m multinode "$@" || multinode=$?
if [ "$main" -eq "$NO_TESTS" ] && [ "$multinode" -ne "$NO_TESTS" ]; then main=0; fi
if [ "$multinode" -eq "$NO_TESTS" ] && [ "$main" -ne "$NO_TESTS" ]; then multinode=0; fi
if [ "$main" -ne 0 ]; then exit "$main"; fi
exit "$multinode"
