"""What the recipe experiments (`step_rule.py`, `recipe_sweep.py`) share: their common options, and
one model of the profile's architecture trained on a set and scored on the real test set."""

from __future__ import annotations

import argparse
import time

import torch

from notbugs.config import AdversarialConfig, Params, TrainConfig, load_params
from notbugs.evaluate import evaluate
from notbugs.models import make_model
from notbugs.record import bf16_for
from notbugs.train import pick_device, train
from notbugs.units import Split


def add_common_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default="data", help="a pipeline's data directory (read only)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")


def params_and_device(args) -> tuple[Params, torch.device]:
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_params(args.params, args.profile), pick_device(args.device)


def train_and_score(params: Params, images: torch.Tensor, labels: torch.Tensor, recipe: TrainConfig, seed: int,
                    device: torch.device, split: Split, robust: bool, desc: str,
                    adversarial: AdversarialConfig | None = None, arch: str | None = None,
                    width: float | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a fresh model of the profile's network (or of `arch` at `width`; initial weights and
    batch order from `seed`, the recipe's init; adversarially when `adversarial` is given) and
    score it on the real test set: clean accuracy, and robust accuracy under the profile's evaluate
    suite when `robust`, both in the profile's precision, as the pipeline does. Returns the model and
    its scores."""
    p = params.profile
    bf16 = bf16_for(params, device)
    torch.manual_seed(seed)
    net = make_model(arch or p.arch, width=p.width if width is None else width, init=recipe.init)
    t0 = time.perf_counter()
    history = train(net, images, labels, recipe, seed, device, adversarial=adversarial, desc=desc, bf16=bf16)
    e = p.evaluate
    ev = evaluate(net, desc, split.test_x, split.test_y, e.eps if robust else (), e.steps, e.step_factor,
                  e.restarts, e.batch_size, device, bf16=bf16, use_best=e.use_best)
    return net, {"seed": seed, "train_s": time.perf_counter() - t0, "train_acc": history[-1]["train_acc"],
            "train_acc_by_epoch": [h["train_acc"] for h in history],
            "clean": ev[0]["accuracy"], "robust": {f"{r['eps']:g}": r["accuracy"] for r in ev[1:]}}
