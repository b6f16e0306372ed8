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
  .venv/bin/python -m pip install -q -e ".[pipeline,dev]"
  touch "$stamp"
fi
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
