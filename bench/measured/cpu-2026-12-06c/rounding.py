"""Why bf16 makes the best iterate differ from the last: per-iterate losses of the training attacks
(3 x 0.25, 7 x 0.1, eps 0.5) on the `cpu` run's robust model, 1,000 training images, bf16 and fp32.
Usage: PYTHONPATH=. python bench/measured/cpu-2026-12-06c/rounding.py DATA_DIR
"""
import sys

import torch
import torch.nn.functional as F

from notbugs.attacks import autocast, frozen, l2_step
from notbugs.config import load_params
from notbugs.train import load_model
from notbugs.units import load_split


def main(data_dir: str) -> None:
    torch.set_num_threads(2)
    split = load_split(load_params("params.yaml", "cpu"), data_dir)
    model, _ = load_model(f"{data_dir}/models/robust")
    model.eval()
    x, y = split.train_x[:1000], split.train_y[:1000]

    def loss(z, bf16):
        with autocast(z.device, bf16):
            logits = model(z)
        return F.cross_entropy(logits.float(), y, reduction="none")

    for steps, step in [(3, 0.25), (7, 0.1)]:
        with frozen(model):
            delta, iterates = torch.zeros_like(x), []
            for _ in range(steps):  # the bf16 attack, as training runs it
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(loss(x + delta, True).sum(), delta)
                iterates.append(delta.detach().clone())
                delta = l2_step(x, delta, grad, step, 0.5)
            iterates.append(delta.detach())
            with torch.no_grad():
                lb = torch.stack([loss(x + d, True) for d in iterates])  # [iterate, image]
                lf = torch.stack([loss(x + d, False) for d in iterates])
        # a strict '>' over the iterates in order keeps the first maximum, as argmax does
        best_b, best_f, last = lb.argmax(0), lf.argmax(0), steps
        differ = best_b != last
        ties = differ & (lb[last] == lb.gather(0, best_b[None])[0])
        gap = (lf[last] - lf.gather(0, best_b[None])[0])[differ]
        change = (lb[last] - lb[last - 1]).abs().mean()
        print(f"{steps}x{step}: bf16 best!=last {int(differ.sum())}/1000 (ties {int(ties.sum())}), "
              f"fp32 best!=last {int((best_f != last).sum())}; fp32 loss last - bf16-best on those: "
              f"mean {gap.mean():.4f} min {gap.min():.4f} max {gap.max():.4f}; mean fp32 loss last "
              f"{lf[last].mean():.3f}; mean bf16 loss change of the last step {change:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
