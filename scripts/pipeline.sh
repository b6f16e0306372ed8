#!/usr/bin/env bash
# The main job: set up, pick a profile for this machine, start a local Prefect server, `dvc repro`.
#   NOTBUGS_PROFILE=tiny|cpu|fast|paper  choose the profile (default: fast with a GPU, cpu without)
#   PREFECT_API_URL=...                  use your own Prefect server instead of a local one
#   NOTBUGS_MIRROR=/path/to/cifar10      offline mirror (see README); without one, CIFAR-10 is downloaded
#   NOTBUGS_DATA_SOURCE=auto|official|mirror  insist on a source (default auto: the mirror if its folder exists)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

profile=${NOTBUGS_PROFILE:-}
if [ -z "$profile" ]; then
  if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then profile=fast; else profile=cpu; fi
  echo "pipeline: no NOTBUGS_PROFILE given; this machine $( [ $profile = fast ] && echo has || echo has no ) GPU, so profile '$profile'."
fi
echo "pipeline: profile '$profile'. Choose another with NOTBUGS_PROFILE=tiny|cpu|fast|paper bash scripts/pipeline.sh"
# params.yaml records the profile that was run (DVC tracks it as a parameter of every stage).
python - "$profile" <<'PY'
import re, sys
from pathlib import Path
p = Path("params.yaml"); text = p.read_text()
new = re.sub(r"(?m)^profile: *\w+", f"profile: {sys.argv[1]}", text, count=1)
if new != text:
    p.write_text(new); print(f"pipeline: set 'profile: {sys.argv[1]}' in params.yaml")
PY
unset NOTBUGS_PROFILE  # from here on params.yaml is the single source of truth

server_pid=""
if [ -z "${PREFECT_API_URL:-}" ]; then
  # One local Prefect server (SQLite, localhost only) for the whole run: each stage connects to it
  # instead of booting a temporary one. Without it, Prefect still works (its temporary local server).
  # Prefect's usual port 4200 when free (so the UI is where users expect it), else any free port.
  port=$(python -c "import socket
s = socket.socket()
try: s.bind(('127.0.0.1', 4200))
except OSError: s.bind(('127.0.0.1', 0))
print(s.getsockname()[1])")
  mkdir -p .prefect
  PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL="http://127.0.0.1:$port/api" \
    prefect server start --host 127.0.0.1 --port "$port" > .prefect/server.log 2>&1 &
  server_pid=$!
  trap '[ -n "$server_pid" ] && kill $server_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break
    kill -0 $server_pid 2>/dev/null || { echo "pipeline: Prefect server failed to start, see .prefect/server.log"; exit 1; }
    sleep 0.5
  done
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  echo "pipeline: local Prefect server, UI at http://127.0.0.1:$port while this runs (runs stay in ~/.prefect; see them later with 'prefect server start')"
fi

start=$(date +%s)
dvc repro "$@"
echo "pipeline: dvc repro finished in $(( $(date +%s) - start )) s"
dvc metrics show
python -m notbugs results
echo "pipeline: report at data/report/report.html (Markdown: data/report/report.md)"
