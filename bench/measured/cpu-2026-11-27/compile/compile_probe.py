"""Does torch.compile work, and pay, on this CPU for the `cpu` profile's ResNet-9 at width 0.25?

For one precision (fp32 or bf16 autocast): the rate of a matching-like step (input gradient of the
features, eval mode) and of a training step (SGD), eager, then after the library's `try_compile`
(with its train-mode probe), on the same batch. Prints try_compile's verdict when it falls back.

    python bench/measured/cpu-2026-11-27/compile/compile_probe.py fp32|bf16 [batch, default 250]
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # the repository, for notbugs

from notbugs.attacks import autocast  # noqa: E402
from notbugs.compiling import try_compile  # noqa: E402
from notbugs.models import make_model  # noqa: E402

STEPS = 6


def input_gradient_rate(model, x, bf16: bool) -> tuple[float, bool]:
    model.eval().requires_grad_(False)

    def step():
        z = x.clone().requires_grad_(True)
        with autocast(x.device, bf16):
            out = model.features(z)
        return torch.autograd.grad(out.float().pow(2).sum(), z)[0]

    step()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        g = step()
    model.requires_grad_(True)
    return len(x) * STEPS / (time.perf_counter() - t0), bool(torch.isfinite(g).all())


def train_rate(model, x, y, bf16: bool) -> tuple[float, bool]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with autocast(x.device, bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        loss = step()
    return len(x) * STEPS / (time.perf_counter() - t0), bool(torch.isfinite(loss))


def main() -> None:
    precision = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 250
    bf16 = precision == "bf16"
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for compiled in (False, True):
        torch.manual_seed(0)
        model = make_model("resnet9", width=0.25).to(memory_format=torch.channels_last)
        if compiled:
            t0 = time.perf_counter()
            reason = try_compile(model, x, train=True, bf16=bf16)
            print(f"{precision} try_compile: {reason or 'ok'} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if reason:
                return
        g, g_ok = input_gradient_rate(model, x, bf16)
        t, t_ok = train_rate(model, x, y, bf16)
        print(f"{precision} {'compiled' if compiled else 'eager   '}: match-like step {g:.0f} img/s (finite {g_ok}), "
              f"train {t:.0f} img/s (finite {t_ok})", flush=True)


if __name__ == "__main__":
    main()
