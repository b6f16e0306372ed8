"""How often the worst-case iterate of a training attack differs from its last iterate.

On the `cpu` run's source models (a pipeline data folder), each profile's adversarial-training
attack (l2, eps 0.5, no random start) on every training image, in bf16 (the profile's precision)
and fp32. Usage: PYTHONPATH=. python bench/measured/cpu-2026-12-06c/best_vs_last.py DATA_DIR OUT.json
"""
import json
import sys

import torch

from notbugs.attacks import frozen, pgd_l2
from notbugs.config import load_params
from notbugs.train import load_model
from notbugs.units import load_split

ATTACKS = [(2, 0.3), (3, 0.25), (7, 0.1)]  # cpu, fast, paper


def main(data_dir: str, out: str) -> None:
    torch.set_num_threads(2)
    split = load_split(load_params("params.yaml", "cpu"), data_dir)
    rows = []
    for kind in ("robust", "standard"):
        model, _ = load_model(f"{data_dir}/models/{kind}")
        model.eval()
        for bf16 in (True, False):
            for steps, step in ATTACKS:
                differ = 0
                with frozen(model):
                    for i in range(0, len(split.train_y), 500):
                        x, y = split.train_x[i:i + 500], split.train_y[i:i + 500]
                        last = pgd_l2(model, x, y, 0.5, steps, step, bf16=bf16, use_best=False)
                        best = pgd_l2(model, x, y, 0.5, steps, step, bf16=bf16, use_best=True)
                        differ += int((last - best).flatten(1).abs().amax(1).gt(0).sum())
                row = {"model": kind, "precision": "bf16" if bf16 else "fp32", "steps": steps, "step_size": step,
                       "images": len(split.train_y), "best_is_not_last": differ}
                print(row, flush=True)
                rows.append(row)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
