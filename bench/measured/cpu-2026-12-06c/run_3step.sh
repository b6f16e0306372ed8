#!/usr/bin/env bash
# fast's 3-step attack (steps 0.25) at cpu scale: last iterate vs worst-case iterate in adversarial training
cd /work/main
for seed in 0 1 2; do
  .venv/bin/python bench/recipe_sweep.py --profile cpu --data-dir /work/fresh/data --set robust --robust --threads 2 \
    --seed $seed --variant '{adversarial: {steps: 3, step_size: 0.25}}' \
    --variant '{adversarial: {steps: 3, step_size: 0.25, use_best: true}}' --json /tmp/ub/sweep3_seed$seed.json \
    2>&1 | grep -v -e "batch/s" -e "img/s"
done
echo ALL DONE
