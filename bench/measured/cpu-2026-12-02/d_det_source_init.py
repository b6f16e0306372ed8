"""Does the standard source model's init change the D_det built from it? For one source seed and init:
train the profile's standard source model (its `source_on.standard` recipe, with `init` replaced),
build D_det from it with the library's `construct.build_shard` (the profile's PGD rule, one shard in a
scratch folder), then train the profile's `train@d_det` recipe on it from PyTorch's default init for
each trainee seed (and each epoch count of --epochs) and score it on the real test set. One JSON line
per source model (appended to --json). The `cpu` recipe trains D_det 40 epochs since 40799e2: the
lines of d_det_source_init.jsonl (15 epochs) come back with `--epochs 15`.

    python bench/measured/cpu-2026-12-02/d_det_source_init.py --data-dir DATA --init he --seed 1 --json out.jsonl
    python bench/measured/cpu-2026-12-02/d_det_source_init.py --data-dir DATA --seed 1 --epochs 15,40 --json out.jsonl
"""

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from experiment import train_and_score  # noqa: E402
from notbugs import construct as C  # noqa: E402
from notbugs.config import load_params  # noqa: E402
from notbugs.record import bf16_for  # noqa: E402
from notbugs.stages import source_spec, train_spec  # noqa: E402
from notbugs.train import pick_device  # noqa: E402
from notbugs.units import load_split  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--data-dir", required=True)
ap.add_argument("--params", default=str(ROOT / "params.yaml"))
ap.add_argument("--profile", default="cpu")
ap.add_argument("--init", default="torch", help="the source model's init (the trainees use PyTorch's default)")
ap.add_argument("--seed", type=int, default=1, help="the source model's seed")
ap.add_argument("--trainee-seeds", default="0,1")
ap.add_argument("--epochs", help="the trainees' epoch counts, comma-separated (default: the profile's D_det recipe)")
ap.add_argument("--json")
a = ap.parse_args()

params = load_params(a.params, a.profile)
p = params.profile
device = pick_device("cpu")
bf16 = bf16_for(params, device)
split = load_split(params, a.data_dir)
recipe = dataclasses.replace(source_spec(params, "standard").recipe, init=a.init)
source, s = train_and_score(params, split.train_x, split.train_y, recipe, a.seed, device, split, True,
                            f"source {a.init} {a.seed}")
source.eval()

labels = split.train_y.numpy()
n = len(labels)
c = p.construct
recipe = {"name": "d_det", "precision": "bf16" if bf16 else "fp32", "batch_size": c.batch_size,
          "pgd": {"eps": c.pgd.eps, "steps": c.pgd.steps, "step_size": c.pgd.step_size}}
with tempfile.TemporaryDirectory() as scratch:
    stats = C.build_shard("d_det", source, split.train_x, labels, split.train_index,
                          C.assignments("d_det", labels, c.seed), 0, 0, n, recipe, "experiment", Path(scratch), device)
    with np.load(Path(scratch) / "shard-00000.npz") as z:
        images, targets = z["images"], z["labels"]

x, y = torch.from_numpy(images).float(), torch.from_numpy(targets)
trainees = []
d_det_recipe = train_spec(params, "d_det").recipe
for epochs in [int(v) for v in a.epochs.split(",")] if a.epochs else [d_det_recipe.epochs]:
    for t in [int(v) for v in a.trainee_seeds.split(",")]:
        _, r = train_and_score(params, x, y, dataclasses.replace(d_det_recipe, epochs=epochs), t, device, split,
                               False, f"d_det {t}, {epochs} epochs")
        trainees.append({"seed": t, "epochs": epochs, "clean": r["clean"], "train_acc": r["train_acc"]})
out = {"init": a.init, "seed": a.seed, "source_clean": s["clean"], "source_robust": s["robust"],
       "source_train_s": round(s["train_s"], 1), "success": stats["success_rate"],
       "construct_s": round(stats["wall_s"], 1),
       # d_det_mean is over every trainee of the line, whatever its --epochs
       "d_det": trainees, "d_det_mean": float(np.mean([r["clean"] for r in trainees]))}
print(json.dumps(out))
if a.json:
    with open(a.json, "a") as f:
        f.write(json.dumps(out) + "\n")
