"""The reference's `use_best` against our final iterate, on one `cpu` run's models (2-core CPU, bf16).

Evaluation: every trained model, the profile's real test images, the profile's PGD (and the paper's
20 steps); robust accuracy from the last iterate and from the worst-case one. Construction: the
first N training positions of D_R / D_NR (profile's rule and the paper's 1000 steps of 0.1) and
D_rand / D_det (the profile's 15 steps and the paper's 100): distance reached, targeted success.
Usage: python best_iterate.py DATA_DIR OUT.json [N]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from notbugs import construct as C
from notbugs.attacks import as_in_the_steps, autocast, frozen, match_representation, pgd_l2
from notbugs.config import load_params
from notbugs.evaluate import predict
from notbugs.stages import construct_source, trained_models
from notbugs.train import load_model
from notbugs.units import load_split

data_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
torch.manual_seed(0)
params = load_params("params.yaml", profile="cpu")
split = load_split(params, data_dir)
dev = torch.device("cpu")
bf16 = True
rows = {"evaluation": [], "construction": []}


def robust_acc(model, eps, steps, best):
    ok = []
    for a in range(0, len(split.test_y), 500):
        x, y = split.test_x[a:a + 500], split.test_y[a:a + 500]
        adv = pgd_l2(model, x, y, eps, steps, 2.5 * eps / steps, bf16=bf16, use_best=best)
        with torch.no_grad(), autocast(dev, bf16):
            ok.append(model(adv).argmax(1) == y)
    return torch.cat(ok).float().mean().item()


for path in trained_models(data_dir):
    model, meta = load_model(path, dev)
    clean = (predict(model, split.test_x, 500, dev, bf16) == split.test_y).float().mean().item()
    row = {"model_id": meta["model_id"], "clean": clean}
    with frozen(model):
        for steps in (10, 20):
            for best in (False, True):
                t0 = time.perf_counter()
                row[f"pgd{steps}_{'best' if best else 'last'}"] = robust_acc(model, 0.25, steps, best)
                row[f"pgd{steps}_{'best' if best else 'last'}_s"] = time.perf_counter() - t0
    print(json.dumps(row), flush=True)
    rows["evaluation"].append(row)

labels = split.train_y.numpy()
for name in ("d_r", "d_nr", "d_rand", "d_det"):
    model, _ = load_model(data_dir / "models" / construct_source(name), dev)
    assign = C.assignments(name, labels, 0)
    pos = np.sort(np.random.default_rng(0).choice(len(labels), n, replace=False))
    x = split.train_x[pos]
    rules = [(100, 0.3, 0.02), (1000, 0.1, 0.1)] if name in C.MATCHING else [(15, 0.1), (100, 0.1)]
    with frozen(model):
        for rule in rules:
            for best in (False, True):
                t0 = time.perf_counter()
                if name in C.MATCHING:
                    start = split.train_x[torch.as_tensor(assign["start"][pos])]
                    z, st = match_representation(model, start, x, rule[0], rule[1], rule[2], bf16=bf16, use_best=best)
                    res = {"final_relative": st["final_relative"], "final_distance": st["final_distance"]}
                else:
                    t = torch.as_tensor(assign["target"][pos])
                    z = pgd_l2(model, x, t, 0.5, rule[0], rule[1], targeted=True, bf16=bf16, use_best=best)
                    with autocast(dev, bf16):
                        res = {"success": (as_in_the_steps(model, z).argmax(1) == t).float().mean().item()}
                moved_from = start if name in C.MATCHING else x
                res.update(set=name, rule=list(rule), best=best, n=n,
                           moved=(z - moved_from).flatten(1).norm(dim=1).mean().item(), wall_s=time.perf_counter() - t0)
                print(json.dumps(res), flush=True)
                rows["construction"].append(res)
out_path.write_text(json.dumps(rows, indent=1))
