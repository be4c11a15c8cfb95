#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: Python venv with Tessera and its
# dependencies, the embedded S3 server's Node packages, and (for tests) ffprobe.
# Usage: scripts/bootstrap.sh [run|test|bench]
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-run}

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ "$purpose" != run ] && ! command -v ffprobe >/dev/null 2>&1; then need_apt+=(ffmpeg); fi
# headless chromium opens a batch's report.html in tests/integration/test_batches.py (tests only)
if [ "$purpose" != run ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
# nginx runs the TLS front of deploy/nginx in tests/integration/test_tls_front.py, openssl makes its
# certificates (tests only; Debian's nginx lies in /usr/sbin, which a user's PATH may lack)
new_nginx=0
if [ "$purpose" != run ] && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then need_apt+=(nginx); new_nginx=1; fi
if [ "$purpose" != run ] && ! command -v openssl >/dev/null 2>&1; then need_apt+=(openssl); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[bootstrap] installing system packages: ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null; }
  # The tests start their own unprivileged nginx: the package's service (port 80) is not wanted.
  if [ "$new_nginx" = 1 ] && command -v systemctl >/dev/null 2>&1; then $sudo_cmd systemctl disable --now nginx >/dev/null 2>&1 || true; fi
fi

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin=$candidate; break
    fi
  done
fi
[ -n "$python_bin" ] || { echo "[bootstrap] Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv

extras=""; [ "$purpose" = test ] && extras="[test]"; [ "$purpose" = bench ] && extras="[test,bench]"
stamp=".venv/.tessera-installed$extras"
digest=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "[bootstrap] installing Python packages (first run takes a minute or two)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tessera.serving, tessera.models, tessera.cluster" 
  echo "$digest" > "$stamp"
fi

s3dir=cluster/s3server
if [ -f "$s3dir/package-lock.json" ]; then
  lock_digest=$(sha256sum "$s3dir/package-lock.json" | cut -c1-16)
  if [ ! -f "$s3dir/node_modules/.tessera-installed" ] || [ "$(cat "$s3dir/node_modules/.tessera-installed")" != "$lock_digest" ]; then
    echo "[bootstrap] installing the embedded S3 server (npm ci)"
    (cd "$s3dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_digest" > "$s3dir/node_modules/.tessera-installed"
  fi
fi
