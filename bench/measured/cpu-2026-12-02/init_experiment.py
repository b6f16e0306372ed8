"""Does the initialisation change what a short recipe reaches? One model of the profile's recipe
trained on the profile's data from `make_model(init=...)`, scored on the real test set; one JSON
line per run (appended to --json). How the 2026-12-02 `init_*.jsonl` and `wd_resnet18.jsonl` were
made (the README beside this file says which runs came from an earlier version)."""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from notbugs.config import load_params  # noqa: E402
from notbugs.evaluate import evaluate  # noqa: E402
from notbugs.models import make_model  # noqa: E402
from notbugs.stages import bf16_for, load_split  # noqa: E402
from notbugs.train import pick_device, train  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--data-dir", required=True)
ap.add_argument("--params", default=str(Path(__file__).resolve().parents[3] / "params.yaml"))
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
dev = pick_device("cpu")
bf16 = bf16_for(params, dev)
split = load_split(params, a.data_dir)
torch.manual_seed(a.seed)
net = make_model(a.arch, width=a.width, init=a.init)
recipe = dataclasses.replace(p.train, epochs=a.epochs, **({"lr": a.lr} if a.lr else {}))
t0 = time.perf_counter()
hist = train(net, split.train_x, split.train_y, recipe, a.seed, dev,
             adversarial=p.adversarial if a.adversarial else None, bf16=bf16, desc="x")
e = p.evaluate
ev = evaluate(net, "x", split.test_x, split.test_y, e.eps, e.steps, e.step_factor, e.restarts, e.batch_size,
              dev, bf16=bf16)
out = {**vars(a), "train_s": time.perf_counter() - t0,
       "train_acc_by_epoch": [round(h["train_acc"], 4) for h in hist],
       "clean": ev[0]["accuracy"], "robust": ev[1]["accuracy"]}
print(json.dumps(out))
if a.json:
    with open(a.json, "a") as f:
        f.write(json.dumps(out) + "\n")
