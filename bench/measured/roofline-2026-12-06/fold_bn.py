"""Would folding BatchNorm into the convolutions pay for attacks on a frozen model? (2-core CPU)

In eval mode a BatchNorm is a per-channel affine map, so conv + BN equals one convolution with
scaled weights and a bias: exact in fp32, and it removes the BN passes that are 25% of an eager
attack step's roofline bound. Times representation matching (5 steps, 500 images) with the `cpu`
profile's network (ResNet-9 at 1/4 width, random weights and BN statistics), as is and folded, twice
each, in fp32 and in bf16 autocast; prints the largest relative difference of the representations.
"""

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from notbugs.attacks import autocast, frozen, match_representation  # noqa: E402
from notbugs.models import make_model  # noqa: E402


def fold(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d followed by a BatchNorm2d (in one Sequential) replaced by one Conv2d."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        layers = list(mod)
        for i in range(len(layers) - 1):
            c, b = layers[i], layers[i + 1]
            if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                scale = b.weight / torch.sqrt(b.running_var + b.eps)
                conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=True)
                conv.weight.data.copy_(c.weight * scale[:, None, None, None])
                conv.bias.data.copy_(b.bias - b.running_mean * scale)
                mod[i] = conv
                mod[i + 1] = nn.Identity()
    return m


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = make_model("resnet9", width=0.25)
    for mod in model.modules():  # BN statistics away from the identity, as in a trained model
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
    model = model.to(memory_format=torch.channels_last).eval()
    folded = fold(model).to(memory_format=torch.channels_last).eval()
    x = torch.rand(500, 3, 32, 32).to(memory_format=torch.channels_last)
    t = torch.rand(500, 3, 32, 32).to(memory_format=torch.channels_last)
    for bf16 in (False, True):
        with torch.no_grad(), autocast(x.device, bf16):
            a, b = model.features(x).float(), folded.features(x).float()
        print("bf16", bf16, "max rel diff features", ((a - b).abs().max() / a.abs().max()).item())
        for name, m in (("bn", model), ("folded", folded), ("bn", model), ("folded", folded)):
            with frozen(m):
                t0 = time.perf_counter()
                _, st = match_representation(m, x, t, steps=5, step_size=0.1, bf16=bf16)
                dt = time.perf_counter() - t0
            print(name, "bf16" if bf16 else "fp32", f"{dt:.2f}s", f"{500 * 5 / dt:.0f} img-steps/s",
                  round(st["final_relative"], 4))


if __name__ == "__main__":
    main()
