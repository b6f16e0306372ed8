"""Clean and robust accuracy on the real test set, per class, and transfer success rates (Figure 3).

Robust accuracy: untargeted l2 PGD with `steps` steps of step_factor * eps / steps (the paper's
2.5 * eps / steps), no random start on the first try; an image counts as robust only if it is
classified correctly after every restart (later restarts start at random in the ball). With
`use_best` each restart scores its highest-loss iterate, as the reference's attacker does.
Results come back as plain dicts shaped like rows of the `evaluations` and `transfer` tables.
"""

from __future__ import annotations

import logging
import time

import torch

from notbugs.attacks import autocast, frozen, pgd_l2
from notbugs.batching import in_batches

log = logging.getLogger("notbugs.evaluate")


def _batched(fn, n: int, batch_size: int, desc: str) -> torch.Tensor:
    return torch.cat(in_batches(fn, 0, n, batch_size, desc))


def predict(model, images: torch.Tensor, batch_size: int, device: torch.device,
            bf16: bool | None = None) -> torch.Tensor:
    def run(a, b):
        with torch.no_grad(), autocast(device, bf16):
            return model(images[a:b].to(device)).argmax(1).cpu()
    model.eval()
    return _batched(run, len(images), batch_size, "predict")


def robust_correct(model, images, labels, eps: float, steps: int, step_factor: float, restarts: int,
                   batch_size: int, device: torch.device, seed: int = 0, bf16: bool | None = None,
                   use_best: bool = False) -> torch.Tensor:
    """Boolean per image: still correct after l2 PGD at eps (every restart)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def run(a, b):
        x, y = images[a:b].to(device), labels[a:b].to(device)
        ok = torch.ones(len(y), dtype=torch.bool, device=device)
        for r in range(restarts):
            x_adv = pgd_l2(model, x, y, eps, steps, step_factor * eps / steps, random_start=r > 0, g=g, bf16=bf16,
                           use_best=use_best)
            with torch.no_grad(), autocast(device, bf16):
                ok &= model(x_adv).argmax(1) == y
        return ok.cpu()

    with frozen(model):
        return _batched(run, len(images), batch_size, f"PGD eps {eps}")


def _row(model_id: str, attack: str, eps: float, steps: int, restarts: int, correct: torch.Tensor,
         labels: torch.Tensor, wall_s: float, num_classes: int = 10) -> dict:
    per_class = [int(correct[labels == c].sum()) / int((labels == c).sum()) if (labels == c).any() else float("nan")
                 for c in range(num_classes)]
    return {"model_id": model_id, "test_set": "cifar10-test", "attack": attack, "eps": float(eps),
            "steps": int(steps), "restarts": int(restarts), "accuracy": int(correct.sum()) / len(labels),
            "correct": int(correct.sum()), "n": int(len(labels)), "per_class_accuracy": per_class,
            "wall_s": wall_s}


def evaluate(model, model_id: str, images: torch.Tensor, labels: torch.Tensor, eps: tuple[float, ...],
             steps: int, step_factor: float, restarts: int, batch_size: int, device: torch.device,
             bf16: bool | None = None, use_best: bool = False) -> list[dict]:
    """Clean accuracy, then robust accuracy at each eps; one record per (attack, eps)."""
    labels = labels.cpu()
    t0 = time.perf_counter()
    clean = predict(model, images, batch_size, device, bf16) == labels
    rows = [_row(model_id, "none", 0.0, 0, 0, clean, labels, time.perf_counter() - t0)]
    for e in eps:
        t0 = time.perf_counter()
        ok = robust_correct(model, images, labels, e, steps, step_factor, restarts, batch_size, device, bf16=bf16,
                            use_best=use_best)
        rows.append(_row(model_id, "pgd_l2", e, steps, restarts, ok, labels, time.perf_counter() - t0))
    return rows


def make_transfer_examples(source, images, labels, eps: float, steps: int, step_size: float,
                           batch_size: int, device: torch.device, num_classes: int = 10, bf16: bool | None = None,
                           use_best: bool = False):
    """Targeted l2 PGD at D_det settings (target (y + 1) mod 10) on the source model."""
    targets = (labels + 1) % num_classes

    def run(a, b):
        return pgd_l2(source, images[a:b].to(device), targets[a:b].to(device), eps, steps, step_size,
                      targeted=True, bf16=bf16, use_best=use_best).cpu()

    with frozen(source):
        adv = _batched(run, len(images), batch_size, "transfer attack")
    return adv, targets


def transfer_success(target_model, adv: torch.Tensor, targets: torch.Tensor, batch_size: int,
                     device: torch.device, bf16: bool | None = None) -> float:
    """Fraction of adversarial examples that the target model classifies as their target class."""
    hits = predict(target_model, adv, batch_size, device, bf16) == targets.cpu()
    return int(hits.sum()) / len(hits)
