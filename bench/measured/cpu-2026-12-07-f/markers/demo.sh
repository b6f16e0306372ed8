#!/usr/bin/env bash
# The first-time user's scenario of 2026-12-07 (helper review), on a tiny clone, with the real dvc and Prefect.
set -euo pipefail
cd /tmp/demo
export PATH=/work/main/.venv/bin:$PATH PYTHONPATH=/tmp/demo PREFECT_HOME=/tmp/demo-prefect
stages() { python - "$1" <<'PY'
import sys, notbugs.results as R
runs = R.load("runs", "data/results"); before = set(open(sys.argv[1]).read().split())
print(sorted(runs[~runs["run_id"].isin(before)]["stage"]))
PY
}
snap() { python -c 'import notbugs.results as R; print("\n".join(R.load("runs","data/results")["run_id"]))' > /tmp/demo-out/before.txt; }
epochs() { python - "$1" <<'PY'
import sys, yaml
p = "params.yaml"; d = yaml.safe_load(open(p)); v = sys.argv[1]
d["profiles"]["tiny"]["train_on"]["d_det"] = {} if v == "default" else {"epochs": int(v)}
open(p, "w").write(yaml.safe_dump(d, sort_keys=False))
PY
}
meta_epochs() { python -c 'import json; print("d_det model on disk:", json.load(open("data/models/d_det/meta.json"))["recipe"]["train"].split("epochs=")[1].split(",")[0], "epochs")'; }
echo "== 1. dvc repro (tiny)"; time dvc repro -q > /tmp/demo-out/repro1.log 2>&1
snap; echo "== 2. notbugs all right after dvc repro"; python -m notbugs all > /tmp/demo-out/all2.log 2>&1; stages /tmp/demo-out/before.txt
echo "== 3. d_det 3 epochs, notbugs all"; epochs 3; snap; python -m notbugs all > /tmp/demo-out/all3.log 2>&1; stages /tmp/demo-out/before.txt; meta_epochs
echo "== 4. back to 2 epochs, dvc repro (its run cache puts the 2-epoch model back)"; epochs default; snap; dvc repro > /tmp/demo-out/repro4.log 2>&1; grep -i "train@d_det" /tmp/demo-out/repro4.log | head -2; stages /tmp/demo-out/before.txt; meta_epochs
echo "== 5. d_det 3 epochs again, notbugs all"; epochs 3; snap; python -m notbugs all > /tmp/demo-out/all5.log 2>&1; stages /tmp/demo-out/before.txt; meta_epochs; grep -E "train@d_det: done before|taking up again" /tmp/demo-out/all5.log | cut -c1-220
