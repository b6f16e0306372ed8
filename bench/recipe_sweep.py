"""Which training recipe learns from a constructed set? Train variants of one set's recipe, side by side.

D_rand and D_det are where a short recipe fails (protocol.md, last section): a model can fit the
relabelled training set and still score near chance on the real test set, or not fit it at all. This
script trains the profile's architecture on one constructed set (as built by the pipeline in
--data-dir) once per variant of that set's recipe, each variant a YAML mapping merged over the
profile's `train_on.<set>` recipe, and prints for each: accuracy on the set's own (target) labels at
the end of training, and clean accuracy on the real test set (robust accuracy too with --robust).
Same seed, so the same initial weights, for every variant. Writes nothing in --data-dir.

    python bench/recipe_sweep.py --data-dir data --profile cpu --set d_rand \\
        --variant '{}' --variant '{lr: 0.02}' --variant '{epochs: 40, augment: {crop_pad: 0, flip: false}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from notbugs import stages as S  # noqa: E402
from notbugs.config import DATASETS, ConfigError, load_params, recipe_for  # noqa: E402
from notbugs.evaluate import evaluate, predict  # noqa: E402
from notbugs.models import make_model  # noqa: E402
from notbugs.train import pick_device, train  # noqa: E402


def parse_variant(text: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"variant {text!r} is not YAML: {e}") from e
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"variant {text!r} must be a mapping, e.g. '{{lr: 0.02}}'")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--set", dest="name", choices=DATASETS, default="d_rand")
    ap.add_argument("--variant", action="append", type=parse_variant, default=None,
                    help="a YAML mapping merged over the set's recipe; repeat for several ({} = as in params)")
    ap.add_argument("--robust", action="store_true", help="also robust accuracy (the profile's evaluate suite)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variant or [{}]

    params = load_params(args.params, args.profile)
    p = params.profile
    try:
        recipes = [recipe_for(params, args.name, v) for v in variants]
    except ConfigError as e:
        print(f"bad variant: {e}", file=sys.stderr)
        return 2
    dev = pick_device(args.device)
    x, y = S.load_training_set(args.data_dir, args.name)
    split = S.load_split(params, args.data_dir)
    print(f"{args.name}: {len(y)} training images, {p.arch} x{p.width:g}, test on {len(split.test_y)} real images, "
          f"device {S.device_name(dev)}")

    rows = []
    for variant, recipe in zip(variants, recipes):
        label = json.dumps(variant, sort_keys=True)
        torch.manual_seed(args.seed)
        net = make_model(p.arch, width=p.width)
        t0 = time.perf_counter()
        history = train(net, x, y, recipe, args.seed, dev, desc=label)
        train_s = time.perf_counter() - t0
        fit = (predict(net, x, p.evaluate.batch_size, dev) == y).float().mean().item()  # no augmentation
        eps = p.evaluate.eps if args.robust else ()
        ev = evaluate(net, label, split.test_x, split.test_y, eps, p.evaluate.steps, p.evaluate.step_factor,
                      p.evaluate.restarts, p.evaluate.batch_size, dev)
        row = {"variant": variant, "recipe": repr(recipe), "train_s": train_s, "fit_target_labels": fit,
               "train_acc_last_epoch": history[-1]["train_acc"], "test_clean": ev[0]["accuracy"],
               "test_robust": {f"{r['eps']:g}": r["accuracy"] for r in ev[1:]}}
        robust = "".join(f", robust eps {k} {100 * v:.1f}" for k, v in row["test_robust"].items())
        print(f"  {label:>60}: fits its labels {100 * fit:5.1f}%, real test {100 * row['test_clean']:5.1f}%"
              f"{robust} ({train_s:.0f} s)")
        rows.append(row)

    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "set": args.name, "profile": p.name,
                                               "n_train": len(y), "device": S.device_name(dev), "rows": rows},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
