#!/usr/bin/env bash
# Free adversarial training (method: free) against the `cpu` profile's PGD training of the robust source
# model, and the D_R each one builds. For each variant: `notbugs source robust`, `construct d_r`, `train d_r`
# (the pipeline's stages and seeds, the variant's params file), then D_R trained again under seeds 1 and 2
# (`bench/recipe_sweep.py --set d_r --robust --seed S`). The same fetched data for every variant.
#   bash bench/measured/cpu-2026-12-02b/free_adversarial.sh BASE OUT [VARIANT ...]
# BASE: a data dir after `notbugs fetch --profile cpu`; OUT: one data dir per variant, logs, the params
# files; VARIANT: NAME=YAML merged over profiles.cpu (e.g. 'free4x4={source_on: {robust: {epochs: 4}},
# adversarial: {method: free, steps: 4, step_size: 0.25}}').
set -euo pipefail
base=$1 out=$2
shift 2
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%=*} variant=${spec#*=}
  dir=$out/$name
  mkdir -p "$dir"
  [ -e "$dir/cifar10" ] || ln -s "$(realpath "$base/cifar10")" "$dir/cifar10"
  $PY - "$variant" "$dir/params.yaml" <<'PYEOF'
import sys, yaml
def merge(a, b):
    return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()}}
p = yaml.safe_load(open("params.yaml"))
p["profile"] = "cpu"
p["profiles"]["cpu"] = merge(p["profiles"]["cpu"], yaml.safe_load(sys.argv[1]) or {})
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PYEOF
  for stage in "source robust" "construct d_r" "train d_r"; do
    echo "== $name: $stage $(date -u +%T)"
    /usr/bin/time -f "$name $stage: %e s" $PY -m notbugs $stage --params "$dir/params.yaml" --data-dir "$dir" \
      > "$dir/${stage// /_}.log" 2>&1
    tail -1 "$dir/${stage// /_}.log"
  done
  for seed in 1 2; do
    $PY bench/recipe_sweep.py --data-dir "$dir" --params "$dir/params.yaml" --set d_r --robust --seed $seed \
      --variant '{}' --json "$dir/d_r_seed$seed.json" > "$dir/d_r_seed$seed.log" 2>&1
    tail -3 "$dir/d_r_seed$seed.log"
  done
done
