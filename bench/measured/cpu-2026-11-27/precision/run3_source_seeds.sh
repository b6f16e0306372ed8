set -x
cd /work/main
P=.venv/bin/python
for k in 1 2; do
  for prec in fp32 auto; do
    d=/work/seed$k-$prec/data
    rm -rf $d; mkdir -p $d; cp -r /work/bfrun/data/cifar10 $d/
    params=params.yaml; [ $prec = fp32 ] && params=/work/exp/params_fp32.yaml
    $P bench/measured/cpu-2026-11-27/precision/seeded_source.py $params $d $k
    $P -m notbugs construct d_rand --profile cpu --params $params --data-dir $d
    $P bench/recipe_sweep.py --data-dir $d --profile cpu --set d_rand --json /work/exp/prec/seed$k-$prec.json
  done
done
