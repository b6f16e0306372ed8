cd /work/main
for seed in 1234 1 2; do
  .venv/bin/python bench/recipe_sweep.py --profile cpu --data-dir /tmp/nbdata --set robust --robust --seed $seed \
    --variant '{}' --variant '{ema: 0.99}' --variant '{ema: 0.995}' --json bench/measured/cpu-2026-12-06-ema/rob_s$seed.json > bench/measured/cpu-2026-12-06-ema/rob_s$seed.log 2>&1
done
for seed in 1234 1 2; do
  .venv/bin/python bench/recipe_sweep.py --profile cpu --data-dir /tmp/nbdata --set standard --robust --seed $seed \
    --variant '{}' --variant '{ema: 0.99}' --json bench/measured/cpu-2026-12-06-ema/std_s$seed.json > bench/measured/cpu-2026-12-06-ema/std_s$seed.log 2>&1
done
echo done > bench/measured/cpu-2026-12-06-ema/DONE
