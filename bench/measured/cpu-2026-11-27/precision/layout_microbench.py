"""Ad-hoc (2026-11-27): what channels_last and bf16 autocast buy on this CPU, all four combinations
in one run. One training step (SGD, batch 128) and one matching step (features forward + input
gradient, batch 250), random weights and images. Run from the repository root:
python bench/measured/cpu-2026-11-27/precision/layout_microbench.py"""
import contextlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from notbugs.models import make_model  # noqa: E402


def rate(arch, width, fmt, bf16, train, batch, iters=6):
    torch.manual_seed(0)
    m = make_model(arch, 10, width).to(memory_format=fmt)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    if train:
        m.train()
    else:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)

    def step():
        if train:
            with ctx():
                out = m(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            xx = x.clone().requires_grad_(True)
            with ctx():
                f = m.features(xx)
            torch.autograd.grad(f.float().square().sum(), xx)

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t)


for arch, width in [("resnet9", 0.25), ("resnet18", 0.25)]:
    for train, batch in [(True, 128), (False, 250)]:
        for fmt, fmt_name in [(torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")]:
            for bf16 in [False, True]:
                r = rate(arch, width, fmt, bf16, train, batch)
                print(f"{arch} w{width} {'train' if train else 'match'} b{batch} {fmt_name} "
                      f"{'bf16' if bf16 else 'fp32'}: {r:.0f} img/s", flush=True)
