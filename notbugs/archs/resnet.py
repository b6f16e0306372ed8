"""ResNet-18 and ResNet-50, the CIFAR variants of the MadryLab `robustness` library and kuangliu's
pytorch-cifar (3x3 stride-1 stem, no max-pool)."""

from torch import Tensor, nn

from notbugs.layers import Backbone, conv_bn, global_avg_pool, last_relu, scaled


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
        stage_planes = [scaled(c, width) for c in (64, 128, 256, 512)]
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


    def zero_init_residuals(self) -> None:
        # the last BN scale of each residual branch (torchvision's zero_init_residual)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.conv3[1].weight)


def resnet18(width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width)


def resnet50(width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width)
