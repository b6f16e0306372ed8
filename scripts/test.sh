#!/usr/bin/env bash
# The test suite: set up .venv, then pytest (fast CPU tests + one end-to-end `dvc repro` of the tiny profile).
#   bash scripts/test.sh            default suite (under 10 minutes on 2 cores)
#   bash scripts/test.sh -m slow    the long tests (kill-point sweeps)
#   bash scripts/test.sh -n 0       in one process (the default: one pytest-xdist worker per core, a test
#                                   module per worker, one thread each; on 2 cores pytest takes about 7 min, set-up 2 more)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The report's browser check needs Chromium; install it where we may (CI runs as root), else that test skips.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "test: could not install chromium; the browser check of the report will be skipped"
fi
# -rs: every skipped test and its reason in the summary, so that a check that did not run is seen
exec .venv/bin/python -m pytest -q -rs -n auto --dist loadfile "$@"
