"""Is a short attack rule as good as the paper's? What it reaches on the source, and downstream accuracy.

The `fast` and `cpu` profiles build D_R / D_NR with far fewer representation-matching steps than
the paper (100 instead of 1000), with a step size that decays linearly, and D_rand / D_det with
fewer targeted PGD steps (30 or 15 instead of 100). The issue asks to use fewer steps only where the
shorter rule reaches the same representation distance *and* the same downstream accuracy. This
script measures both, in one run, for any list of rules:

  1. distance: each rule matches the same N training positions of the profile's split, N/10 of each
     class drawn with the construction seed (the split is stored class by class, so its first N
     positions would be a few classes only), with the pipeline's own start-image assignment and
     source model; it prints the mean relative distance
     ||g(z) - g(x)|| / ||g(x)|| reached. A constant rule (the paper's) also prints the distance after
     each of --checkpoints steps, as a trajectory.
  2. downstream: for each rule, the profile's architecture is trained on those N matched images with
     the profile's recipe for that set and the same seed(s), and evaluated (clean, l2 PGD robust) on the
     profile's real test set.

It reads a data directory of the pipeline (after `notbugs source robust` / `source standard`) and
writes nothing there. A rule is STEPS:STEP_SIZE[:FINAL_STEP_SIZE][@MOMENTUM][+fake] (momentum: see
`match_representation`; 0 by default, the paper's plain normalised steps; `+fake`: differentiated
through the reference's fake ReLU, `models.FakeReLU`; without it, through the true one). Every rule keeps the
last iterate or the best one as the profile's construction does (`use_best`); with `use_best` a
constant rule prints no trajectory.

For D_rand / D_det (`--set d_rand|d_det`) a rule is STEPS:STEP_SIZE of targeted l2 PGD on the
standard model at the set's eps in the profile (`construct.pgd.eps`, or the set's own in `construct_on`;
the paper's is 100:0.1 at eps 0.5), towards the
pipeline's own targets; what it reaches is the targeted success rate on the source model (the
share of images it classifies as their new label), with the mean targeted loss before and after
and the mean perturbation norm; downstream, the model is trained on the images with their target
labels (the set's recipe) and scored on the real test set.

    python bench/step_rule.py --data-dir data --profile cpu --set d_r --n 2000 \\
        --rules 1000:0.1,100:0.3:0.02,25:0.5:0.02 --json step_rule.json
    python bench/step_rule.py --data-dir data --profile cpu --set d_rand --n 0 \\
        --rules 100:0.1,30:0.1,15:0.1,5:0.1 --seeds 1234,1 --json step_rule_d_rand.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# the repository (for notbugs) and this folder (for experiment.py; `import bench` would find bench.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from experiment import add_common_options, params_and_device, train_and_score  # noqa: E402
from notbugs import construct as C  # noqa: E402
from notbugs.subset import balanced_subset  # noqa: E402
from notbugs import record as R  # noqa: E402
from notbugs import stages as S  # noqa: E402
from notbugs import units as U  # noqa: E402
from notbugs.attacks import autocast, frozen, match_representation, pgd_l2  # noqa: E402
from notbugs.config import construct_params  # noqa: E402
from notbugs.sets import SETS  # noqa: E402
from notbugs.train import load_model  # noqa: E402


def parse_rule(text: str) -> tuple[int, float, float, float, bool]:
    """STEPS:STEP_SIZE[:FINAL_STEP_SIZE][@MOMENTUM][+fake] -> (steps, step size, final step size,
    momentum, fake ReLU)."""
    fake = text.endswith("+fake")
    text = text.removesuffix("+fake")
    body, _, mom = text.partition("@")
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"rule {text!r}: expected STEPS:STEP_SIZE[:FINAL_STEP_SIZE][@MOMENTUM][+fake]")
    steps, size = int(parts[0]), float(parts[1])
    final = float(parts[2]) if len(parts) == 3 else size
    momentum = float(mom) if mom else 0.0
    if steps < 1 or size <= 0 or final <= 0:
        raise argparse.ArgumentTypeError(f"rule {text!r}: steps and step sizes must be positive")
    if not 0 <= momentum < 1:
        raise argparse.ArgumentTypeError(f"rule {text!r}: momentum must be in [0, 1)")
    return steps, size, final, momentum, fake


def rule_name(rule: tuple[int, float, float, float, bool]) -> str:
    steps, size, final, momentum, fake = rule
    name = f"{steps} x {size:g}" if size == final else f"{steps} x {size:g}->{final:g}"
    name = f"{name} m{momentum:g}" if momentum else name
    return f"{name} fake" if fake else name


def match_set(model, images, starts, rule, batch_size: int, device, checkpoints: list[int], bf16: bool,
              use_best: bool = False) -> tuple:
    """Matched images for every position, the mean relative distance reached, (constant rules)
    the mean relative distance after each checkpoint step count, and the mean l2 distance each image
    moved from its start image."""
    steps, size, final, momentum, fake = rule
    # A constant rule without momentum run in segments is the same computation as one run: record its
    # trajectory (momentum would restart from zero at each segment, and use_best would restart from
    # each segment's best iterate instead of its last).
    segments = size == final and not momentum and not use_best
    marks = sorted({c for c in checkpoints if c < steps} | {steps}) if segments else [steps]
    out, curve = [], {m: 0.0 for m in marks}
    start_rel, moved = 0.0, 0.0
    for a in range(0, len(images), batch_size):
        x, z = images[a:a + batch_size].to(device), starts[a:a + batch_size].to(device)
        done = 0
        start = z
        for m in marks:  # several segments only for a constant rule, where size == final
            z, st = match_representation(model, z, x, m - done, size, final, bf16=bf16, momentum=momentum,
                                         use_best=use_best, fake_relu=fake)
            if done == 0:
                start_rel += st["start_relative"] * len(x)
            curve[m] += st["final_relative"] * len(x)
            done = m
        moved += (z - start).flatten(1).norm(dim=1).sum().item()
        out.append(z.cpu())
    n = len(images)
    return torch.cat(out), curve[steps] / n, start_rel / n, {m: v / n for m, v in curve.items()}, moved / n


def reach_by_matching(model, images, starts, rule, batch_size: int, device, checkpoints: list[int],
                      bf16: bool, use_best: bool = False) -> tuple:
    """`match_set`'s images, and what the rule reached, as the JSON records it."""
    z, rel, start_rel, curve, moved = match_set(model, images, starts, rule, batch_size, device, checkpoints, bf16,
                                                use_best)
    return z, {"start_relative": start_rel, "final_relative": rel, "curve": {str(k): v for k, v in curve.items()},
               "moved": moved}


def describe(row: dict, targeted: bool) -> str:
    """One line on what a rule reached on the source model."""
    if targeted:
        return (f"targeted success {100 * row['success_rate']:.1f}%, target loss {row['start_target_loss']:.3f} -> "
                f"{row['target_loss']:.3f}, perturbation norm {row['perturbation_norm']:.3f}")
    trail = ", ".join(f"{k}: {v:.3f}" for k, v in row["curve"].items()) if len(row["curve"]) > 1 else ""
    return (f"relative distance {row['start_relative']:.3f} -> {row['final_relative']:.3f}"
            f"{f' ({trail})' if trail else ''}, moved {row['moved']:.2f} from the start images")


def attack_set(model, images, targets, eps: float, rule, batch_size: int, device, bf16: bool,
               use_best: bool = False) -> tuple:
    """Targeted l2 PGD images for every position, as the pipeline builds D_rand / D_det, and what they
    reach on the source model: success rate (classified as the target), mean targeted cross-entropy
    before and after, and mean perturbation norm."""
    steps, size = rule[:2]
    out, success, start_loss, loss, norm = [], 0.0, 0.0, 0.0, 0.0
    for a in range(0, len(images), batch_size):
        x, t = images[a:a + batch_size].to(device), targets[a:a + batch_size].to(device)
        z = pgd_l2(model, x, t, eps, steps, size, targeted=True, bf16=bf16, use_best=use_best)
        with torch.no_grad(), autocast(device, bf16):
            before, after = model(x).float(), model(z).float()
        success += (after.argmax(1) == t).sum().item()
        start_loss += F.cross_entropy(before, t, reduction="sum").item()
        loss += F.cross_entropy(after, t, reduction="sum").item()
        norm += (z - x).flatten(1).norm(dim=1).sum().item()
        out.append(z.cpu())
    n = len(images)
    return torch.cat(out), {"success_rate": success / n, "start_target_loss": start_loss / n,
                            "target_loss": loss / n, "perturbation_norm": norm / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(ap)
    ap.add_argument("--set", dest="name", choices=tuple(SETS), default="d_r")
    ap.add_argument("--n", type=int, default=2000,
                    help="training positions matched (or attacked) and trained on, N/10 per class "
                         "(a multiple of 10; 0: all)")
    ap.add_argument("--rules", default=None, type=lambda s: [parse_rule(r) for r in s.split(",")],
                    help="default: 1000:0.1,100:0.3:0.02,25:0.5:0.02 (matching); 100:0.1,30:0.1,15:0.1 (PGD)")
    ap.add_argument("--checkpoints", default="25,100,250,500", type=lambda s: [int(c) for c in s.split(",")])
    ap.add_argument("--no-train", action="store_true", help="what the rules reach on the source model, no training")
    ap.add_argument("--seeds", default="1234", type=lambda s: [int(x) for x in s.split(",")],
                    help="training seeds, the same for every rule: each rule's set is trained once per seed")
    args = ap.parse_args(argv)
    targeted = SETS[args.name].kind == "pgd"
    if args.rules is None:
        args.rules = [parse_rule(r) for r in ("100:0.1,30:0.1,15:0.1" if targeted else
                                              "1000:0.1,100:0.3:0.02,25:0.5:0.02").split(",")]
    if targeted and any(size != final or momentum or fake for _, size, final, momentum, fake in args.rules):
        print("--rules: PGD (d_rand, d_det) takes a constant step without momentum or +fake, STEPS:STEP_SIZE",
              file=sys.stderr)
        return 2
    params, dev = params_and_device(args)
    p = params.profile
    model, meta = load_model(R.model_dir(args.data_dir, S.construct_source(args.name)), dev)
    split = U.load_split(params, args.data_dir)
    try:  # N/10 positions per class: the split is stored class by class
        positions = torch.as_tensor(balanced_subset(split.train_y.numpy(), args.n, p.construct.seed))
    except ValueError as e:
        print(f"--n: {e}", file=sys.stderr)
        return 2
    n = len(positions)
    assign = C.assignments(args.name, split.train_y.numpy(), p.construct.seed)
    images = split.train_x[positions]
    if targeted:  # trained on the targets, as D_rand / D_det are
        labels = torch.as_tensor(assign["target"][positions.numpy()], dtype=torch.long)
    else:
        labels = split.train_y[positions]
        starts = split.train_x[torch.as_tensor(assign["start"][positions.numpy()])]
    recipe = p.train_on[args.name]
    bf16 = R.bf16_for(params, dev)  # the profile's precision, as in the pipeline
    own = construct_params(p, args.name)  # the set's parameters: its kind's section with its own overrides
    use_best = own.use_best  # and its iterate rule
    what = f"attacked (targeted l2 PGD, eps {own.eps:g})" if targeted else "matched"
    print(f"{args.name}: {n} images ({n // 10} per class) {what} on the {meta['training']} {meta['arch']} "
          f"({meta['model_id']}), "
          f"device {R.device_name(dev, bf16)}; downstream: {p.arch} x{p.width:g}, {recipe.epochs} epochs, "
          f"test on {len(split.test_y)} real images")

    rows = []
    for rule in args.rules:
        row = {"rule": rule_name(rule), "steps": rule[0], "step_size": rule[1], "final_step_size": rule[2],
               "momentum": rule[3], "fake_relu": rule[4]}
        t0 = time.perf_counter()
        with frozen(model):
            if targeted:
                z, reached = attack_set(model, images, labels, own.eps, rule, p.construct.batch_size,
                                        dev, bf16, use_best)
            else:
                z, reached = reach_by_matching(model, images, starts, rule, p.construct.batch_size, dev,
                                               args.checkpoints, bf16, use_best)
        seconds = time.perf_counter() - t0
        row.update(reached)
        row["pgd_s" if targeted else "match_s"] = seconds  # match_s: the key of the earlier JSON files
        row["image_steps_per_s"] = n * rule[0] / seconds
        print(f"  {row['rule']:>18}: {describe(row, targeted)}, {seconds:.0f} s")
        if not all(math.isfinite(v) for v in reached.values() if isinstance(v, float)):
            print(f"rule {row['rule']}: non-finite result", file=sys.stderr)
            return 1
        if not args.no_train:
            row["trained"] = []
            for seed in args.seeds:  # the same initial weights and batch order for every rule
                _, t = train_and_score(params, z.float(), labels, recipe, seed, dev, split, robust=True,
                                       desc=f"{row['rule']} seed {seed}")
                row["trained"].append(t)
                robust = ", ".join(f"eps {k} {100 * v:.1f}" for k, v in t["robust"].items())
                print(f"  {'':>18}  trained (seed {seed}): clean {100 * t['clean']:.1f}, robust {robust} "
                      f"(train acc {100 * t['train_acc']:.1f}, {t['train_s']:.0f} s)")
            row["clean"] = sum(t["clean"] for t in row["trained"]) / len(args.seeds)
            row["robust"] = {k: sum(t["robust"][k] for t in row["trained"]) / len(args.seeds)
                             for k in row["trained"][0]["robust"]}
            if len(args.seeds) > 1:
                robust = ", ".join(f"eps {k} {100 * v:.1f}" for k, v in row["robust"].items())
                print(f"  {'':>18}  mean of {len(args.seeds)} seeds: clean {100 * row['clean']:.1f}, robust {robust}")
        rows.append(row)

    result = {"command": " ".join(sys.argv), "set": args.name, "n": n, "profile": p.name,
              "class_counts": torch.bincount(split.train_y[positions], minlength=10).tolist(),
              "source_model_id": meta["model_id"], "device": R.device_name(dev, bf16), "seeds": args.seeds,
              "use_best": use_best, "rules": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
