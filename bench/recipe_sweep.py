"""Which training recipe learns from a set? Train variants of one set's (or source model's) recipe, side by side.

D_rand and D_det are where a short recipe fails (protocol.md, last section): a model can fit the
relabelled training set and still score near chance on the real test set, or not fit it at all. This
script trains the profile's architecture on one constructed set (as built by the pipeline in
--data-dir) once per variant of that set's recipe, each variant a YAML mapping merged over the
profile's `train_on.<set>` recipe, and prints for each: accuracy on the set's own (target) labels at
the end of training, and clean accuracy on the real test set (robust accuracy too with --robust).
Same seed, so the same initial weights, for every variant. Writes nothing in --data-dir.

`--set standard` and `--set robust` do the same for the two source models, trained on the real
training set D with the profile's `source_on.<model>` recipe (the robust one adversarially; a
variant's `adversarial:` mapping is merged over the profile's attack). The clean accuracies of the
`fast` source models fall short of the paper's, and every constructed set is built from them.

A variant may also name another network, `arch:` and `width:` (the profile's otherwise): the
`fast` profile's time goes to training its ResNet-18s, and a cheaper network that learns as much
(Page's ResNet-9, the `cpu` profile's) would buy epochs. Such a row says which network it trained.
`init: he` (a recipe key like the others) trains from the He init that the pipeline used until
2026-12-02 (`notbugs.models`).

    python bench/recipe_sweep.py --data-dir data --profile cpu --set d_rand \\
        --variant '{}' --variant '{lr: 0.02}' --variant '{epochs: 40, augment: {crop_pad: 0, flip: false}}'
    python bench/recipe_sweep.py --data-dir data --profile fast --set robust --robust \\
        --variant '{epochs: 30}' --variant '{epochs: 30, adversarial: {steps: 2, step_size: 0.3}}'
    python bench/recipe_sweep.py --data-dir data --profile fast --set standard --robust \\
        --variant '{}' --variant '{arch: resnet9, epochs: 24}' --variant '{init: he}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

# the repository (for notbugs) and this folder (for experiment.py; `import bench` would find bench.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from experiment import add_common_options, params_and_device, train_and_score  # noqa: E402
from notbugs import record as R  # noqa: E402
from notbugs import stages as S  # noqa: E402
from notbugs import units as U  # noqa: E402
from notbugs.config import DATASETS, SOURCE_MODELS, ConfigError, adversarial_for, recipe_for  # noqa: E402
from notbugs.evaluate import predict  # noqa: E402
from notbugs.models import ARCHS  # noqa: E402

NETWORK_KEYS = ("arch", "width")  # a variant's keys that choose the network, not the recipe


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


def network(variant: dict, arch: str, width: float) -> tuple[str, float]:
    """The (arch, width) a variant trains: its own where it names them, else the profile's network."""
    arch, width = variant.get("arch", arch), variant.get("width", width)
    if arch not in ARCHS:
        raise ConfigError(f"variant arch {arch!r} is not one of {', '.join(ARCHS)}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ConfigError(f"variant width must be a number > 0, got {width!r}")
    return arch, float(width)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(ap)
    ap.add_argument("--set", dest="name", choices=DATASETS + SOURCE_MODELS, default="d_rand",
                    help="a constructed set, or a source model (trained on the real training set)")
    ap.add_argument("--variant", action="append", type=parse_variant, default=None,
                    help="a YAML mapping merged over the set's recipe; repeat for several ({} = as in params)")
    ap.add_argument("--robust", action="store_true", help="also robust accuracy (the profile's evaluate suite)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    variants = args.variant or [{}]
    params, dev = params_and_device(args)
    p = params.profile
    try:
        # only the robust source model trains adversarially; elsewhere an `adversarial:` key is refused
        if args.name != "robust" and any("adversarial" in variant for variant in variants):
            raise ConfigError(f"an `adversarial:` variant applies to --set robust only, not {args.name}")
        recipes = [recipe_for(params, args.name, {k: v for k, v in variant.items()
                                                  if k != "adversarial" and k not in NETWORK_KEYS})
                   for variant in variants]
        networks = [network(variant, p.arch, p.width) for variant in variants]
        attacks = [adversarial_for(params, variant.get("adversarial")) if args.name == "robust" else None
                   for variant in variants]
    except ConfigError as e:
        print(f"bad variant: {e}", file=sys.stderr)
        return 2
    bf16 = R.bf16_for(params, dev)  # the profile's precision, as in the pipeline
    split = U.load_split(params, args.data_dir)
    if args.name in SOURCE_MODELS:
        x, y = split.train_x, split.train_y
    else:
        x, y = S.load_training_set(args.data_dir, args.name)
    print(f"{args.name}: {len(y)} training images, {p.arch} x{p.width:g}, test on {len(split.test_y)} real images, "
          f"device {R.device_name(dev, bf16)}")

    rows = []
    for variant, recipe, attack, (arch, width) in zip(variants, recipes, attacks, networks):
        label = json.dumps(variant, sort_keys=True)
        net, t = train_and_score(params, x, y, recipe, args.seed, dev, split, args.robust, desc=label,
                                 adversarial=attack, arch=arch, width=width)
        # how well it fits the set's own labels, without augmentation
        fit = (predict(net, x, p.evaluate.batch_size, dev, bf16) == y).float().mean().item()
        row = {"variant": variant, "arch": arch, "width": width, "init": recipe.init, "recipe": repr(recipe),
               "adversarial": repr(attack) if attack else None,
               "train_s": t["train_s"], "fit_target_labels": fit,
               "train_acc_last_epoch": t["train_acc"], "test_clean": t["clean"], "test_robust": t["robust"],
               # when training leaves chance: D_rand sits on a plateau for its first epochs (H200: 16 of 60 epochs)
               "train_acc_by_epoch": t["train_acc_by_epoch"]}
        robust = "".join(f", robust eps {k} {100 * v:.1f}" for k, v in row["test_robust"].items())
        print(f"  {label:>60}: fits its labels {100 * fit:5.1f}%, real test {100 * row['test_clean']:5.1f}%"
              f"{robust} ({t['train_s']:.0f} s)")
        rows.append(row)

    if args.json:
        result = {"command": " ".join(sys.argv), "set": args.name, "profile": p.name, "n_train": len(y),
                  "device": R.device_name(dev, bf16), "rows": rows}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
