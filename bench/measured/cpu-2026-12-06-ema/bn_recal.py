"""Is the weight average's lower fit its BatchNorm statistics? The `cpu` robust model trained with `ema: 0.99`
(seeds 1234, 1, 2), scored as trained (averaged statistics) and after its BatchNorm statistics are recomputed
for the averaged weights (one pass over the 5,000 training images, unaugmented, train mode, cumulative
average), as SWA's update_bn does. Run from the repository root:
    python bench/measured/cpu-2026-12-06-ema/bn_recal.py --profile cpu --data-dir /tmp/nbdata
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[2])]
from experiment import add_common_options, params_and_device, train_and_score  # noqa: E402
from notbugs import record as R  # noqa: E402
from notbugs import units as U  # noqa: E402
from notbugs.attacks import autocast  # noqa: E402
from notbugs.config import adversarial_for, recipe_for  # noqa: E402
from notbugs.evaluate import evaluate, predict  # noqa: E402

ap = argparse.ArgumentParser()
add_common_options(ap)
args = ap.parse_args()
params, dev = params_and_device(args)
p = params.profile
bf16 = R.bf16_for(params, dev)
split = U.load_split(params, args.data_dir)
x, y = split.train_x, split.train_y
recipe = dataclasses.replace(recipe_for(params, "robust"), ema=0.99)
rows = []
for seed in (1234, 1, 2):
    net, t = train_and_score(params, x, y, recipe, seed, dev, split, True, desc=f"ema seed {seed}",
                             adversarial=adversarial_for(params))
    fit = (predict(net, x, p.evaluate.batch_size, dev, bf16) == y).float().mean().item()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
    net.train()
    with torch.no_grad(), autocast(dev, bf16):
        for xb in x.split(500):
            net(xb.to(dev).contiguous(memory_format=torch.channels_last))
    net.eval()
    e = p.evaluate
    ev = evaluate(net, "recalibrated", split.test_x, split.test_y, e.eps, e.steps, e.step_factor, e.restarts,
                  e.batch_size, dev, bf16=bf16, use_best=e.use_best)
    fit2 = (predict(net, x, p.evaluate.batch_size, dev, bf16) == y).float().mean().item()
    row = {"seed": seed, "as_trained": {"fit": fit, "clean": t["clean"], "robust": t["robust"]},
           "bn_recalibrated": {"fit": fit2, "clean": ev[0]["accuracy"], "robust": ev[1]["accuracy"]}}
    print(json.dumps(row), flush=True)
    rows.append(row)
Path(__file__).with_name("bn_recal.json").write_text(json.dumps(rows, indent=2) + "\n")
