"""Inception-v3, the `robustness` library's CIFAR adaptation (`cifar_models/inception.py`), layer for
layer; how it differs from torchvision's ImageNet network is in `notbugs.models`' docstring."""

import torch
from torch import Tensor, nn

from notbugs.layers import Backbone, conv_bn, global_avg_pool, scaled


def _pool_branch(c_in: int, c_out: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn(c_in, c_out, kernel_size))


class InceptionA(nn.Module):
    """Full-grid block (the reference's InceptionA): 1x1, 5x5, double-3x3 and pooled branches; the
    pooled branch's conv is a 3x3, as the reference's (torchvision's ImageNet block has a 1x1)."""

    def __init__(self, c_in: int, pool_features: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        self.b1x1 = conv_bn(c_in, s(64), 1)
        self.b5x5 = nn.Sequential(conv_bn(c_in, s(48), 1), conv_bn(s(48), s(64), 5))
        self.b3x3dbl = nn.Sequential(conv_bn(c_in, s(64), 1), conv_bn(s(64), s(96)), conv_bn(s(96), s(96)))
        self.bpool = _pool_branch(c_in, s(pool_features), 3)
        self.out_channels = s(64) + s(64) + s(96) + s(pool_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1x1(x), self.b5x5(x), self.b3x3dbl(x), self.bpool(x)], dim=1)


class ReductionA(nn.Module):
    """First grid reduction (the reference's InceptionB): unpadded stride-2 convs in parallel with an
    unpadded max-pool, 30x30 -> 14x14."""

    def __init__(self, c_in: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        self.b3x3 = conv_bn(c_in, s(384), 3, stride=2, pad=False)
        self.b3x3dbl = nn.Sequential(conv_bn(c_in, s(64), 1), conv_bn(s(64), s(96)),
                                     conv_bn(s(96), s(96), 3, stride=2, pad=False))
        self.bpool = nn.MaxPool2d(3, stride=2)
        self.out_channels = s(384) + s(96) + c_in

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b3x3(x), self.b3x3dbl(x), self.bpool(x)], dim=1)


class InceptionB(nn.Module):
    """Half-grid block (the reference's InceptionC): 7x7 convs factorised into 7x1 and 1x7."""

    def __init__(self, c_in: int, c7: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        c7 = s(c7)
        self.b1x1 = conv_bn(c_in, s(192), 1)
        self.b7x7 = nn.Sequential(conv_bn(c_in, c7, 1), conv_bn(c7, c7, (7, 1)), conv_bn(c7, s(192), (1, 7)))
        self.b7x7dbl = nn.Sequential(
            conv_bn(c_in, c7, 1),
            conv_bn(c7, c7, (7, 1)),
            conv_bn(c7, c7, (1, 7)),
            conv_bn(c7, c7, (7, 1)),
            conv_bn(c7, s(192), (1, 7)),
        )
        self.bpool = _pool_branch(c_in, s(192))
        self.out_channels = 4 * s(192)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1x1(x), self.b7x7(x), self.b7x7dbl(x), self.bpool(x)], dim=1)


class ReductionB(nn.Module):
    """Second grid reduction (the reference's InceptionD): unpadded stride-2 convs in parallel with an
    unpadded average pool, 14x14 -> 6x6."""

    def __init__(self, c_in: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        self.b3x3 = nn.Sequential(conv_bn(c_in, s(192), 1), conv_bn(s(192), s(320), 3, stride=2, pad=False))
        self.b7x7x3 = nn.Sequential(
            conv_bn(c_in, s(192), 1),
            conv_bn(s(192), s(192), (1, 7)),
            conv_bn(s(192), s(192), (7, 1)),
            conv_bn(s(192), s(192), 3, stride=2, pad=False),
        )
        self.bpool = nn.AvgPool2d(3, stride=2)
        self.out_channels = s(320) + s(192) + c_in

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b3x3(x), self.b7x7x3(x), self.bpool(x)], dim=1)


class InceptionC(nn.Module):
    """Quarter-grid block (the reference's InceptionE): 3x3 convs split into parallel 1x3 and 3x1
    outputs, widening the representation rather than deepening it."""

    def __init__(self, c_in: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        self.b1x1 = conv_bn(c_in, s(320), 1)
        self.b3x3_stem = conv_bn(c_in, s(384), 1)
        self.b3x3_a = conv_bn(s(384), s(384), (1, 3))
        self.b3x3_b = conv_bn(s(384), s(384), (3, 1))
        self.b3x3dbl_stem = nn.Sequential(conv_bn(c_in, s(448), 1), conv_bn(s(448), s(384)))
        self.b3x3dbl_a = conv_bn(s(384), s(384), (1, 3))
        self.b3x3dbl_b = conv_bn(s(384), s(384), (3, 1))
        self.bpool = _pool_branch(c_in, s(192))
        self.out_channels = s(320) + 4 * s(384) + s(192)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.b3x3_stem(x)
        b3dbl = self.b3x3dbl_stem(x)
        return torch.cat(
            [
                self.b1x1(x),
                self.b3x3_a(b3),
                self.b3x3_b(b3),
                self.b3x3dbl_a(b3dbl),
                self.b3x3dbl_b(b3dbl),
                self.bpool(x),
            ],
            dim=1,
        )


class InceptionV3(Backbone):
    def __init__(self, width: float):
        super().__init__()

        def s(c: int) -> int:
            return scaled(c, width)

        # ImageNet's stride-2 conv and two max-pools are dropped: CIFAR images are already small. The
        # last stem conv is unpadded, as the reference's (32 -> 30).
        self.stem = nn.Sequential(
            conv_bn(3, s(32)),
            conv_bn(s(32), s(32)),
            conv_bn(s(32), s(64)),
            conv_bn(s(64), s(80), 1),
            conv_bn(s(80), s(192), pad=False),
        )
        blocks: list[nn.Module] = []
        c = s(192)
        for pool_features in (32, 64, 64):
            blocks.append(InceptionA(c, pool_features, width))
            c = blocks[-1].out_channels
        blocks.append(ReductionA(c, width))
        c = blocks[-1].out_channels
        for c7 in (128, 160, 160, 192):
            blocks.append(InceptionB(c, c7, width))
            c = blocks[-1].out_channels
        blocks.append(ReductionB(c, width))
        c = blocks[-1].out_channels
        for _ in range(2):
            blocks.append(InceptionC(c, width))
            c = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        # the reference's Dropout2d on the pooled (N, C, 1, 1) map drops whole channels, i.e. single units
        self.dropout = nn.Dropout(0.5)
        self.out_dim = c

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(global_avg_pool(self.blocks(self.stem(x))))


def inception_v3(width: float = 1.0) -> InceptionV3:
    return InceptionV3(width)
