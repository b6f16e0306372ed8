set -x
cd /work/main
P=.venv/bin/python
$P bench/recipe_sweep.py --data-dir /work/bfrun/data --profile cpu --set d_rand --json /work/exp/prec/bf16set_bf16train.json
$P bench/recipe_sweep.py --data-dir /work/cpurun2/data --profile cpu --set d_rand --json /work/exp/prec/fp32set_bf16train.json
$P bench/recipe_sweep.py --data-dir /work/bfrun/data --profile cpu --params /work/exp/params_fp32.yaml --set d_rand --json /work/exp/prec/bf16set_fp32train.json
$P bench/recipe_sweep.py --data-dir /work/cpurun2/data --profile cpu --params /work/exp/params_fp32.yaml --set d_rand --json /work/exp/prec/fp32set_fp32train.json
