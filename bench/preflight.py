"""A profile's whole pipeline in miniature, on the CPU, before it spends GPU time.

The `fast` and `paper` profiles run only on a GPU, and a GPU session is short (15 minutes of device
time here). This runs one of them end to end, `notbugs all`, with the same code paths (architecture,
compile modes, schedules, augmentation, attacks, transfer architectures) on a small subset of the
real data, at a fraction of the width, with epochs and attack steps capped. What it checks is that
every stage runs and writes its rows; the accuracies it prints are noise.

    python bench/preflight.py --profile fast                   # 2 min 15 s on 2 cores, transfer included
    python bench/preflight.py --profile paper --skip transfer  # 3-4 min (18 with transfer: compiling)

The shrunken parameter file is written to <data-dir>/params.yaml, so a failing stage can be rerun
alone with `python -m notbugs STAGE --params <data-dir>/params.yaml --data-dir <data-dir>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from notbugs.cli import main as notbugs_main  # noqa: E402
from notbugs.config import PROFILES  # noqa: E402
from notbugs.sets import KINDS, set_spec  # noqa: E402


def _shrink_construction(p: dict, cap: int) -> None:
    """Cap construction's steps at `cap`: each kind's section and the sets' own steps (construct_on) scaled by
    one factor, so that a variant of a set by its steps stays apart from it (config refuses two sets built alike;
    rounding can still merge close counts, 31 beside 30 at a cap of 10);
    then PGD step sizes raised where the fewer steps would no longer reach the set's eps (config refuses that too)."""
    own = p.get("construct_on") or {}
    for kind in KINDS:
        base = p["construct"][kind]
        overrides = [o for name, o in own.items() if o and "steps" in o and set_spec(name).kind == kind]
        scale = min(1.0, cap / max([base["steps"], *(o["steps"] for o in overrides)]))
        for attack in (base, *overrides):
            attack["steps"] = max(1, round(attack["steps"] * scale))
    pgd = p["construct"]["pgd"]
    pgd["step_size"] = max(pgd["step_size"], pgd["eps"] / pgd["steps"])
    for name, o in own.items():
        built = {**pgd, **(o or {})}
        if set_spec(name).kind == "pgd" and built["steps"] * built["step_size"] < built["eps"]:
            own[name] = {**(o or {}), "step_size": built["eps"] / built["steps"]}


def _cap_epochs(recipe: dict, cap: int) -> None:
    """Cap `epochs` in a (partial) training recipe; the step schedule's milestones shrink with it."""
    if "epochs" not in recipe or recipe["epochs"] <= cap:
        return
    scale = cap / recipe["epochs"]
    if recipe.get("milestones"):  # keep them increasing and inside the shorter run (none in a 1-epoch run)
        recipe["milestones"] = sorted({min(max(1, round(m * scale)), cap - 1) for m in recipe["milestones"]} - {0})
    recipe["epochs"] = cap


def shrink(doc: dict, profile: str, train: int, test: int, width: float, epochs: int, attack_steps: int) -> dict:
    """params.yaml's document with `profile` cut down to a CPU-sized run of the same code paths."""
    p = doc["profiles"][profile]
    p["subset"] = {**p["subset"], "train": train, "test": test}
    p["width"] = width
    p["transfer"] = {**p["transfer"], "width": width, "n": test}
    _cap_epochs(p["train"], epochs)
    for section in ("source_on", "train_on"):
        for recipe in p[section].values():
            if recipe:
                _cap_epochs(recipe, epochs)
    for attack in (p["evaluate"], p["reevaluate"]):
        attack["steps"] = min(attack["steps"], attack_steps)
    _shrink_construction(p, attack_steps)
    mirror = Path(doc["data"]["mirror"])
    if not mirror.is_absolute():  # params.yaml's path is relative to the repository, not to where it is copied
        doc["data"]["mirror"] = str((ROOT / mirror).resolve())
    doc["profile"] = profile
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=PROFILES, required=True)
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--data-dir", default=None, help="default: .preflight/<profile> in the repository (git-ignored)")
    p.add_argument("--train", type=int, default=500, help="training images, class-balanced (default 500)")
    p.add_argument("--test", type=int, default=200, help="test images, and transfer's n (default 200)")
    p.add_argument("--width", type=float, default=0.125, help="width multiplier of every network (default 0.125)")
    p.add_argument("--epochs", type=int, default=3, help="most epochs of any model (default 3)")
    p.add_argument("--attack-steps", type=int, default=10, help="most steps of any attack (default 10)")
    p.add_argument("--skip", action="append", default=[], help="a stage to leave out, as `notbugs all --skip`")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if min(args.train, args.test, args.epochs, args.attack_steps) < 1 or args.width <= 0:
        p.error("--train, --test, --epochs and --attack-steps must be >= 1, --width > 0")

    data_dir = Path(args.data_dir or ROOT / ".preflight" / args.profile)
    data_dir.mkdir(parents=True, exist_ok=True)
    doc = shrink(yaml.safe_load(Path(args.params).read_text()), args.profile, args.train, args.test, args.width,
                 args.epochs, args.attack_steps)
    params_path = data_dir / "params.yaml"
    params_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"preflight: profile {args.profile} in miniature, parameters in {params_path}", flush=True)
    skips = [a for s in args.skip for a in ("--skip", s)]
    return notbugs_main(["all", "--params", str(params_path), "--data-dir", str(data_dir), "--device", args.device,
                         *skips])


if __name__ == "__main__":
    sys.exit(main())
