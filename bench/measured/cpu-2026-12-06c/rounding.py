"""Why bf16 makes the best iterate differ from the last: per-iterate losses of the training attacks
(3 x 0.25, 7 x 0.1) on the `cpu` run's robust model, 1,000 training images, in bf16 and fp32.
Usage: PYTHONPATH=. python bench/measured/cpu-2026-12-06c/rounding.py (data in /work/fresh/data)."""
import torch, torch.nn.functional as F
from notbugs.attacks import frozen, l2_step, autocast
from notbugs.config import load_params
from notbugs.stages import load_split
from notbugs.train import load_model
torch.set_num_threads(2)
split = load_split(load_params("params.yaml", "cpu"), "/work/fresh/data")
model, _ = load_model("/work/fresh/data/models/robust"); model.eval()
x, y = split.train_x[:1000], split.train_y[:1000]
def loss(z, bf16):
    with autocast(z.device, bf16):
        logits = model(z)
    return F.cross_entropy(logits.float(), y, reduction="none")
for steps, step in [(3, 0.25), (7, 0.1)]:
    with frozen(model):
        delta = torch.zeros_like(x); its = []
        for _ in range(steps):
            delta.requires_grad_(True)
            l = loss(x + delta, True)
            (g,) = torch.autograd.grad(l.sum(), delta)
            its.append(delta.detach().clone())
            delta = l2_step(x, delta, g, step, 0.5)
        its.append(delta.detach())
        with torch.no_grad():
            lb = torch.stack([loss(x + d, True) for d in its])   # [iterates, n]
            lf = torch.stack([loss(x + d, False) for d in its])
    # strict '>' over iterates in order = first argmax
    best_b = lb.argmax(0); best_f = lf.argmax(0); last = steps
    diff = best_b != last
    ties = diff & (lb[last] == lb.gather(0, best_b[None])[0])
    gap_f = (lf[last] - lf.gather(0, best_b[None])[0])[diff]
    print(f"{steps}x{step}: bf16 best!=last {int(diff.sum())}/1000 (ties {int(ties.sum())}), fp32 best!=last {int((best_f != last).sum())}; "
          f"fp32 loss last - bf16-best on those: mean {gap_f.mean():.4f} min {gap_f.min():.4f} max {gap_f.max():.4f}; mean fp32 loss last {lf[last].mean():.3f}; "
          f"mean bf16 step-to-step loss change last step {(lb[last]-lb[last-1]).abs().mean():.4f}")
