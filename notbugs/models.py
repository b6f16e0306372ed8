"""CIFAR-10 classifiers used throughout the reproduction.

Every model is a `Classifier`: input normalisation (registered buffers) -> backbone producing a flat,
globally pooled representation of size `repr_dim` -> one linear head. Attacks and the robust /
non-robust dataset constructions need both the logits and that penultimate representation, and they
feed images in [0, 1], which is why normalisation lives inside the model.

The backbones follow the CIFAR variants of the MadryLab `robustness` library / kuangliu pytorch-cifar
(3x3 stride-1 stem, no stem max-pool), so a 32x32 input keeps full resolution in the first stage.
`width` multiplies every channel count (`max(1, round(c * width))`; DenseNet scales its growth rate),
which gives cheap models for tests and quick profiles.

Initialisation: PyTorch's defaults, as in the reference code (`init="torch"`, what every recipe of
params.yaml trains from, its `init` key). `init="he"` instead draws convs He-normal (fan_in, ReLU
gain) and starts the last BN scale of each ResNet-18/50 residual branch at zero (torchvision's
zero_init_residual): untrained models in eval mode (fresh BN statistics) then respond to their input
at O(1) scale, where PyTorch's defaults shrink VGG-16's and Inception-v3's features to about 1e-5
and 1e-7 (rms): for tests and benchmarks that attack random networks. Not for training: with
BatchNorm after every conv, He-normal weights are sqrt(6) times larger, which divides the effective
learning rate of those weights by about 6; a ResNet-18 at 1/4 width lost 3.3 points of clean
accuracy to it at `cpu` scale, 5.6 trained adversarially (docs/measurements.md, "Recipe experiments"). The
pipeline trained that way until 2026-12-02; a recipe may still ask for it (`init: he`).

Against the reference implementations (deliberate deviations, and what matches):
- Convs have no bias (every one sits next to a BatchNorm). This removes 4,224 parameters from VGG-16
  relative to kuangliu's version; ResNet-18 (11,173,962 params), ResNet-50 (23,520,842) and
  DenseNet-121 (6,956,298) match kuangliu exactly at 10 classes.
- ResNet-9 keeps a bias in its linear head (Page / airbench use none); the head is shared by all
  archs. Its logits are multiplied by 0.125 as in the original.
- Inception-v3 is the `robustness` library's CIFAR Inception-v3 (`cifar_models/inception.py`), layer
  for layer (22,133,738 parameters at 10 classes): a stride-1 stem of five conv-BN-ReLU layers (32,
  32, 64, 1x1 80, then an unpadded 3x3 to 192: 32 -> 30), 3x InceptionA (their pooled branch a 3x3
  conv), a reduction by unpadded stride-2 convs and a max-pool (30 -> 14), 4x InceptionB (1x7 / 7x1
  factorised), a reduction by unpadded stride-2 convs and an average pool (14 -> 6), 2x InceptionC,
  global average pooling and dropout (p 0.5, training only; the reference's Dropout2d on the pooled
  1x1 map zeroes single units, as plain dropout does), a 2048-d representation. No auxiliary head. Until 2026-12-06 ours
  followed torchvision's ImageNet block layout with 'same' padding (a 32 -> 16 -> 8 grid, a 1x1
  pooled branch in InceptionA, max-pooling in the second reduction, no dropout).
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _scaled(channels: int, width: float) -> int:
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
    Those of FAKE_RELU_ARCHS also take `forward(x, fake_relu=True)`: see `FakeReLU`."""

    out_dim: int
    logit_scale: float = 1.0  # multiplies the head's logits; only ResNet-9 changes it


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


# ---------------------------------------------------------------------------------------------
# ResNet-18 / ResNet-50
# ---------------------------------------------------------------------------------------------


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    # Projection only where the residual changes shape; identity otherwise (option B of He et al.).
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return conv_bn(c_in, c_out, 1, stride, relu=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(c_in, planes, 3, stride)
        self.conv2 = conv_bn(planes, planes, 3, relu=False)
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: Tensor, fake_relu: bool = False) -> Tensor:
        return last_relu(self.conv2(self.conv1(x)) + self.shortcut(x), fake_relu)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = conv_bn(c_in, planes, 1)
        self.conv2 = conv_bn(planes, planes, 3, stride)  # stride on the 3x3, as in torchvision "v1.5"
        self.conv3 = conv_bn(planes, c_out, 1, relu=False)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor, fake_relu: bool = False) -> Tensor:
        return last_relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x), fake_relu)


class ResNet(Backbone):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, ...], width: float):
        super().__init__()
        stage_planes = [_scaled(c, width) for c in (64, 128, 256, 512)]
        self.stem = conv_bn(3, stage_planes[0])
        blocks: list[nn.Module] = []
        c_in = stage_planes[0]
        for stage, (planes, n) in enumerate(zip(stage_planes, num_blocks)):
            for i in range(n):
                # Downsample at the first block of every stage except the first (32 -> 16 -> 8 -> 4).
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c_in

    def forward(self, x: Tensor, fake_relu: bool = False) -> Tensor:
        # fake_relu on the last block's output ReLU, as the reference's CIFAR ResNets
        x = self.stem(x)
        *body, last = self.blocks
        for block in body:
            x = block(x)
        return global_avg_pool(last(x, fake_relu))


def resnet18(width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width)


def resnet50(width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width)


# ---------------------------------------------------------------------------------------------
# VGG-16 (with BatchNorm)
# ---------------------------------------------------------------------------------------------

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(Backbone):
    def __init__(self, cfg: tuple[int | str, ...], width: float):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = _scaled(int(v), width)
                layers.append(conv_bn(c_in, c_out))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        # Five max-pools leave a 1x1 grid on 32x32 inputs, so pooling is just a flatten there.
        return global_avg_pool(self.layers(x))


def vgg16(width: float = 1.0) -> VGG:
    return VGG(VGG16_CFG, width)


# ---------------------------------------------------------------------------------------------
# DenseNet-121 (DenseNet-BC, CIFAR stem)
# ---------------------------------------------------------------------------------------------


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
    return DenseNet((6, 12, 24, 16), growth=_scaled(32, width))


# ---------------------------------------------------------------------------------------------
# Inception-v3 (CIFAR adaptation; differences listed in the module docstring)
# ---------------------------------------------------------------------------------------------


def _pool_branch(c_in: int, c_out: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv_bn(c_in, c_out, kernel_size))


class InceptionA(nn.Module):
    """Full-grid block (the reference's InceptionA): 1x1, 5x5, double-3x3 and pooled branches; the
    pooled branch's conv is a 3x3, as the reference's (torchvision's ImageNet block has a 1x1)."""

    def __init__(self, c_in: int, pool_features: int, width: float):
        super().__init__()

        def s(c: int) -> int:
            return _scaled(c, width)

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
            return _scaled(c, width)

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
            return _scaled(c, width)

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
            return _scaled(c, width)

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
            return _scaled(c, width)

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
            return _scaled(c, width)

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


# ---------------------------------------------------------------------------------------------
# ResNet-9 (Page's DAWNBench net, as in airbench), for quick profiles
# ---------------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(Backbone):
    # A fixed softmax temperature, as in the training recipes of Page and airbench this net comes from.
    logit_scale = 0.125

    def __init__(self, width: float):
        super().__init__()
        c1, c2, c3, c4 = (_scaled(c, width) for c in (64, 128, 256, 512))
        self.prep = conv_bn(3, c1)
        self.layer1 = nn.Sequential(conv_bn(c1, c2), nn.MaxPool2d(2), Residual(c2))
        self.layer2 = nn.Sequential(conv_bn(c2, c3), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(c3, c4), nn.MaxPool2d(2), Residual(c4))
        self.out_dim = c4

    def forward(self, x: Tensor, fake_relu: bool = False) -> Tensor:
        # Its representation is a max-pool of a residual sum, with no ReLU after it: fake_relu has
        # nothing to replace, and the gradient is the true one either way.
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return x.amax(dim=(2, 3))  # global max-pool


def resnet9(width: float = 1.0) -> ResNet9:
    return ResNet9(width)


# ---------------------------------------------------------------------------------------------
# Registry and the classifier wrapper
# ---------------------------------------------------------------------------------------------

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "densenet121": densenet121,
    "inception_v3": inception_v3,
    "resnet9": resnet9,
}


# The architectures whose backbone takes fake_relu (representation matching as the reference's loss does it).
FAKE_RELU_ARCHS = ("resnet18", "resnet50", "resnet9")


class Classifier(nn.Module):
    """Normalisation -> backbone -> linear head. Takes images in [0, 1]."""

    def __init__(self, backbone: Backbone, num_classes: int, arch: str, width: float):
        super().__init__()
        self.arch = arch
        self.width = width
        self.num_classes = num_classes
        self.repr_dim = backbone.out_dim
        self.logit_scale = backbone.logit_scale
        self.backbone = backbone
        self.head = nn.Linear(self.repr_dim, num_classes)
        # Buffers, not constants: they follow .to(device/dtype) and land in the state dict.
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std  # out of place: attacks hold on to x

    def features(self, x: Tensor, fake_relu: bool = False) -> Tensor:
        """The penultimate representation; `fake_relu`: its last ReLU passes gradients unchanged
        (`FakeReLU`), for the architectures that have it (`FAKE_RELU_ARCHS`)."""
        if not fake_relu:
            return self.backbone(self.normalize(x))
        if self.arch not in FAKE_RELU_ARCHS:
            raise ValueError(f"fake_relu is not implemented for {self.arch}; it is for {', '.join(FAKE_RELU_ARCHS)}")
        return self.backbone(self.normalize(x), fake_relu=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)) * self.logit_scale


INITS = ("torch", "he")


def he_init(model: nn.Module) -> nn.Module:
    """He-normal convs, and every ResNet residual branch starting as its shortcut (its last BN scale
    zero: with He init the residual sums would otherwise grow with depth; Goyal et al. 2017)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.conv2[1].weight)
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.conv3[1].weight)
    return model


def make_model(arch: str, num_classes: int = 10, width: float = 1.0, init: str = "torch") -> Classifier:
    """A fresh classifier; `init` as in the module's docstring (the pipeline trains "torch")."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; accepted: {', '.join(INITS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; accepted names: {', '.join(ARCHS)}")
    try:
        width = float(width)  # also accepts numpy scalars and numeric strings from configs
    except (TypeError, ValueError):
        raise ValueError(f"width must be a number > 0 (it multiplies channel counts), got {width!r}") from None
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0 (it multiplies channel counts), got {width!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = Classifier(ARCHS[arch](width), num_classes, arch, width)
    return he_init(model) if init == "he" else model
