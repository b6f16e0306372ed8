"""The building blocks every architecture in `notbugs.archs` is made of: bias-free convs with BatchNorm,
global pooling, the `Backbone` contract and the reference's fake ReLU."""

import torch
from torch import Tensor, nn


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def conv2d(c_in: int, c_out: int, kernel_size: int | tuple[int, int] = 3, stride: int = 1,
           pad: bool = True) -> nn.Conv2d:
    """Bias-free conv (every conv here sits next to a BatchNorm) with 'same'-style padding, or none."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    padding = (kh // 2, kw // 2) if pad else 0
    return nn.Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=padding, bias=False)


def conv_bn(
    c_in: int, c_out: int, kernel_size: int | tuple[int, int] = 3, stride: int = 1, relu: bool = True,
    pad: bool = True,
) -> nn.Sequential:
    layers = [conv2d(c_in, c_out, kernel_size, stride, pad), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def global_avg_pool(x: Tensor) -> Tensor:
    # mean over H, W returns (N, C) directly; works for any memory format, unlike view().
    return x.mean(dim=(2, 3))



class Backbone(nn.Module):
    """A network body: normalised images (N, 3, H, W) -> pooled representation (N, out_dim).
    Those of `notbugs.archs.FAKE_RELU_ARCHS` also take `forward(x, fake_relu=True)`: see `FakeReLU`."""

    out_dim: int
    logit_scale: float = 1.0  # multiplies the head's logits; only ResNet-9 changes it

    def zero_init_residuals(self) -> None:
        """For `models.he_init`: start each residual branch as its shortcut. Nothing to do without one."""


class FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward: the reference's `FakeReLU` (MadryLab `robustness`), which its
    representation-inversion loss puts on the ReLU that produces the representation
    (`model(x, with_latent=True, fake_relu=True)`). Matching a representation through a true ReLU
    gets no gradient for a feature that is off (negative before the ReLU) where the target's is on;
    through this one it does. Only the gradient changes: the representation is the same."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def last_relu(x: Tensor, fake: bool) -> Tensor:
    return FakeReLU.apply(x) if fake else torch.relu(x)

