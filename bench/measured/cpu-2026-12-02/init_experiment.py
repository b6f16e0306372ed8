"""Does the initialisation change what a short recipe reaches? One model of the profile's recipe
trained on the profile's data from `make_model(init=...)` (the recipe's `init`) and scored on the real test set with
`bench/experiment.py`'s `train_and_score`; one JSON line per run (appended to --json). How the
2026-12-02 `init_*.jsonl` and `wd_resnet18.jsonl` were made (the README beside this file says which
runs came from an earlier version)."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from experiment import train_and_score  # noqa: E402
from notbugs.config import load_params  # noqa: E402
from notbugs.train import pick_device  # noqa: E402
from notbugs.units import load_split  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--data-dir", required=True)
ap.add_argument("--params", default=str(ROOT / "params.yaml"))
ap.add_argument("--profile", default="cpu")
ap.add_argument("--arch", default="resnet18")
ap.add_argument("--width", type=float, default=0.25)
ap.add_argument("--epochs", type=int, default=12)
ap.add_argument("--init", default="he")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--adversarial", action="store_true", help="the profile's adversarial training")
ap.add_argument("--lr", type=float, default=None)
ap.add_argument("--wd-all", action="store_true", help="weight decay on every parameter (the reference's SGD)")
ap.add_argument("--json")
a = ap.parse_args()
if a.wd_all:  # BatchNorm parameters and biases decay too
    _SGD = torch.optim.SGD

    def _sgd(groups, **kw):
        wd = max(g["weight_decay"] for g in groups)
        return _SGD([{**g, "weight_decay": wd} for g in groups], **kw)
    torch.optim.SGD = _sgd

params = load_params(a.params, a.profile)
p = params.profile
split = load_split(params, a.data_dir)
recipe = dataclasses.replace(p.train, epochs=a.epochs, init=a.init, **({"lr": a.lr} if a.lr else {}))
_, t = train_and_score(params, split.train_x, split.train_y, recipe, a.seed, pick_device("cpu"), split, True, "x",
                       adversarial=p.adversarial if a.adversarial else None, arch=a.arch, width=a.width)
out = {**vars(a), "train_s": t["train_s"], "train_acc_by_epoch": [round(x, 4) for x in t["train_acc_by_epoch"]],
       "clean": t["clean"], "robust": t["robust"][f"{p.evaluate.eps[0]:g}"]}
print(json.dumps(out))
if a.json:
    with open(a.json, "a") as f:
        f.write(json.dumps(out) + "\n")
