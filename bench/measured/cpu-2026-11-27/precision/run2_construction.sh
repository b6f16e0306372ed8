set -x
cd /work/main
P=.venv/bin/python
# E1: the fp32 run's standard model, D_rand built in bf16; E2: the bf16 run's standard model, D_rand built in fp32
$P -m notbugs construct d_rand --profile cpu --data-dir /work/e1/data
$P -m notbugs construct d_rand --profile cpu --params /work/exp/params_fp32.yaml --data-dir /work/e2/data
$P bench/recipe_sweep.py --data-dir /work/e1/data --profile cpu --set d_rand --json /work/exp/prec/e1_fp32model_bf16set_bf16train.json
$P bench/recipe_sweep.py --data-dir /work/e2/data --profile cpu --set d_rand --json /work/exp/prec/e2_bf16model_fp32set_bf16train.json
