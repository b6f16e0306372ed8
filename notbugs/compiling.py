"""Optional torch.compile of a model's backbone, with a fallback to eager.

Measured on an H100 (bench/measured/h100-2026-11-26): compiling the ResNet-50 backbone takes
representation matching from 10,800 to 24,500 image-steps/s (batch 512, bf16, channels_last), while
training gains only 7%. So `compile: true` compiles the model for construction only (one compile
per constructed set, at its batch shape); evaluation is too short to pay for a compile, and training
gains too little. A compiler that is missing or fails (no C++ toolchain, an unsupported op) only
costs the speed-up: the caller logs the reason and runs eager.
The speed-up is the only effect: the same weights are used, and numerics differ by rounding only.
"""

from __future__ import annotations

import torch

from notbugs.attacks import autocast, frozen


def try_compile(model, example: torch.Tensor, train: bool = False, bf16: bool | None = None) -> str | None:
    """Replace `model.backbone` by its compiled version and run it once at the example's shape and
    memory format and precision (`bf16`, as for `autocast`): an input gradient in eval mode (what
    attacks do) and, with `train`, a training backward in train mode. Returns None when it works;
    else the reason, with the eager backbone back in place. `features()` and `forward()` both go
    through the backbone."""
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    eager = model.backbone
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if train else None
    try:
        model.backbone = torch.compile(eager, dynamic=False)
        x = example.detach().clone().requires_grad_(True)
        with frozen(model), autocast(x.device, bf16):
            torch.autograd.grad(model.features(x).float().sum(), x)
        if train:
            model.train()
            with autocast(x.device, bf16):
                model(example.detach()).float().sum().backward()
            model.zero_grad(set_to_none=True)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
        model.backbone = eager
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        if saved is not None:  # the train-mode probe moved the BatchNorm running statistics
            model.load_state_dict(saved)
    return None

