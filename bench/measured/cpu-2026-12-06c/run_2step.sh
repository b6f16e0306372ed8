#!/usr/bin/env bash
# adversarial training: last iterate (cpu profile) vs worst-case iterate (use_best), cpu scale
cd /work/main
PY=.venv/bin/python
for seed in 0 1 2; do
  $PY bench/recipe_sweep.py --profile cpu --data-dir /work/fresh/data --set robust --robust --threads 2 \
    --seed $seed --variant '{}' --variant '{adversarial: {use_best: true}}' --json /tmp/ub/sweep_seed$seed.json \
    2>&1 | grep -v -e "batch/s" -e "img/s"
done
# downstream: the pipeline's own stages, robust model with use_best, then D_R built from it and trained on
rm -rf /tmp/ub/data && mkdir -p /tmp/ub/data/models
cp -al /work/fresh/data/cifar10 /tmp/ub/data/
$PY -c 'import yaml
doc = yaml.safe_load(open("params.yaml"))
doc["profiles"]["cpu"]["adversarial"]["use_best"] = True
yaml.safe_dump(doc, open("/tmp/ub/params.yaml", "w"), sort_keys=False)'
for stage in "source robust" "construct d_r" "train d_r"; do
  $PY -m notbugs $stage --profile cpu --params /tmp/ub/params.yaml --data-dir /tmp/ub/data 2>&1 | grep -v -e "batch/s" -e "img/s"
done
echo ALL DONE
