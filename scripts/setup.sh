#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its pipeline and test extras.
# Sourced by scripts/pipeline.sh and scripts/test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  $PYTHON -m venv .venv
fi
stamp=.venv/.notbugs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing notbugs[pipeline,dev] and torch into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # pip byte-compiles serially (about 50 of its 100 s here); compileall does it on every core afterwards
  .venv/bin/python -m pip install -q --no-compile -e ".[pipeline,dev]"
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  .venv/bin/python -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true  # as pip: a file that does not compile is read from source
  touch "$stamp"
fi
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
