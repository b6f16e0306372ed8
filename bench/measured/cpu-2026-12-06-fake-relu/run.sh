#!/usr/bin/env bash
# The fake-ReLU experiment of docs/measurements.md ("Matching through the fake ReLU", 2026-12-06):
# the `cpu` profile with the `fast` profile's architecture (ResNet-18, here at width 0.25) as source
# and trainee, true-ReLU and fake-ReLU matching rules compared downstream. About 1 h 30 min on 2 cores.
# Run from the repository root: bash bench/measured/cpu-2026-12-06-fake-relu/run.sh [WORK_DIR]
set -euo pipefail
work=${1:-/tmp/r18}
mkdir -p "$work"
.venv/bin/python - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
doc = yaml.safe_load(open("params.yaml"))
doc["profile"] = "cpu"
doc["data"]["root"] = f"{work}/data/cifar10"
cpu = doc["profiles"]["cpu"]
cpu["arch"], cpu["width"] = "resnet18", 0.25
cpu["construct"]["match"]["fake_relu"] = False  # each rule says which ReLU it differentiates through
yaml.safe_dump(doc, open(f"{work}/params.yaml", "w"), sort_keys=False)
cpu["train_on"]["d_nr"]["epochs"] = 40
yaml.safe_dump(doc, open(f"{work}/params40.yaml", "w"), sort_keys=False)
PY
run() { .venv/bin/python "$@" --params "$work/params.yaml" --data-dir "$work/data"; }
run -m notbugs fetch
run -m notbugs source standard
run bench/step_rule.py --profile cpu --set d_nr --n 1000 --no-train \
    --rules 100:0.3:0.02,100:0.3:0.02+fake,100:0.1,100:0.1+fake --json "$work/screen_d_nr.json"
run bench/step_rule.py --profile cpu --set d_nr --n 0 --rules 100:0.3:0.02,100:0.3:0.02+fake \
    --seeds 1234,1,2 --json "$work/d_nr_fake.json"
run -m notbugs source robust
run bench/step_rule.py --profile cpu --set d_r --n 0 --rules 100:0.3:0.02,100:0.3:0.02+fake \
    --seeds 1234,1,2 --json "$work/d_r_fake.json"
.venv/bin/python bench/step_rule.py --params "$work/params40.yaml" --data-dir "$work/data" --profile cpu \
    --set d_nr --n 0 --rules 100:0.3:0.02,100:0.3:0.02+fake --seeds 1234,1,2 --json "$work/d_nr_fake_40ep.json"
