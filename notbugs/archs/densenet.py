"""DenseNet-121 (DenseNet-BC) with a CIFAR stem, kuangliu's pytorch-cifar layout; `width` scales the growth rate."""

import math

import torch
from torch import Tensor, nn

from notbugs.layers import Backbone, conv2d, global_avg_pool, scaled


def bn_relu_conv(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    # DenseNet is pre-activation: BN and ReLU come before each conv.
    return nn.Sequential(
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        conv2d(c_in, c_out, kernel_size),
    )


class DenseLayer(nn.Module):
    """Bottleneck dense layer: adds `growth` new channels on top of its input channels."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(bn_relu_conv(c_in, 4 * growth, 1), bn_relu_conv(4 * growth, growth, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.body(x), x], dim=1)


class Transition(nn.Module):
    """Compresses channels (the "C" in BC) and halves the grid between dense blocks."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = bn_relu_conv(c_in, c_out, 1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(x))


class DenseNet(Backbone):
    def __init__(self, num_layers: tuple[int, ...], growth: int, reduction: float = 0.5):
        super().__init__()
        c = 2 * growth
        # No BN after the stem: the first dense layer starts with its own BN-ReLU.
        layers: list[nn.Module] = [conv2d(3, c, 3)]
        for i, n in enumerate(num_layers):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(num_layers) - 1:
                c_out = max(1, math.floor(c * reduction))
                layers.append(Transition(c, c_out))
                c = c_out
        # Dense layers output un-normalised concatenations, so finish with BN-ReLU before pooling.
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: Tensor) -> Tensor:
        return global_avg_pool(self.layers(x))


def densenet121(width: float = 1.0) -> DenseNet:
    return DenseNet((6, 12, 24, 16), growth=scaled(32, width))
