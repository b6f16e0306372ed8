"""What the on-device augmentation costs next to the training step it feeds.

The `paper` profile's augmentation (crop, flip, colour jitter drawn per image in a per-image order,
rotation) runs on every training batch; this times it alone and then one SGD step of the profile's
network on the augmented batch (forward, backward, update, in the profile's precision), and prints
both and their ratio. Random weights and images: neither changes the time.

    python bench/augment_cost.py --profile paper --width 0.125 --steps 10   # a CPU-sized network
    python bench/augment_cost.py --profile paper                            # the profile's own, on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# the repository (for notbugs) and this folder (for bench.py's timer)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench import timed  # noqa: E402
from notbugs.attacks import autocast  # noqa: E402
from notbugs.augment import augment  # noqa: E402
from notbugs.config import load_params  # noqa: E402
from notbugs.models import make_model  # noqa: E402
from notbugs.record import bf16_for  # noqa: E402
from notbugs.train import pick_device  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--width", type=float, default=None, help="network width (default: the profile's)")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's training batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.profile)
    p, device = params.profile, pick_device(args.device)
    batch = args.batch or p.train.batch_size
    bf16 = bf16_for(params, device)
    model = make_model(p.arch, width=p.width if args.width is None else args.width).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def augmented() -> torch.Tensor:
        return augment(images, p.train.augment, g)

    def step() -> None:
        x = augmented().contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    aug_s, _ = timed(augmented, 1, args.steps, device)  # one warm-up call: allocations, cuDNN's search
    step_s, _ = timed(step, 1, args.steps, device)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"CPU ({torch.get_num_threads()} threads)", "arch": p.arch, "width": model.width, "batch": batch,
           "precision": "bf16" if bf16 else "fp32", "augment": repr(p.train.augment),
           "augment_ms": 1e3 * aug_s, "train_step_ms": 1e3 * step_s, "augment_share": aug_s / step_s}
    print(f"{out['device']}, {p.arch} width {model.width:g}, batch {batch}, {out['precision']}: augmentation "
          f"{out['augment_ms']:.2f} ms a batch, a training step with it {out['train_step_ms']:.1f} ms "
          f"({100 * out['augment_share']:.1f}%)")
    return out


if __name__ == "__main__":
    main()
