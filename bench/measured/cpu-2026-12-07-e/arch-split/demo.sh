cd /tmp/archdemo
export PATH=/work/main/.venv/bin:$PATH NOTBUGS_MIRROR=/work/shared/datasets/cifar10 PREFECT_HOME=/tmp/archdemo/.prefect
echo "== dvc repro (tiny), $(date +%T)"
dvc repro -q > /tmp/archdemo-1.txt 2>&1; echo rc=$?
echo "== edit archs/vgg.py (tiny trains no VGG-16); dvc status, then dvc repro, $(date +%T)"
echo "# an edit" >> notbugs/archs/vgg.py
dvc status 2>&1 | grep -v "^\s" | head -30
dvc repro 2>&1 | grep -E "^Running stage|didn't change" | sort | uniq -c
git checkout -q notbugs/archs/vgg.py
echo "== notbugs all, first run, $(date +%T)"
python -m notbugs all --device cpu > /tmp/archdemo-2.txt 2>&1; echo rc=$?
echo "== edit archs/resnet.py (tiny: ResNet-18 is a transfer architecture only); notbugs all, $(date +%T)"
echo "# an edit" >> notbugs/archs/resnet.py
python -m notbugs all --device cpu 2>&1 | grep -iE "skipp|running step|runs step|done" | head -30
git checkout -q notbugs/archs/resnet.py
echo "== end $(date +%T)"
