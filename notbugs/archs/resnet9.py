"""ResNet-9: Page's DAWNBench network, as in airbench, for the quick profiles."""

from torch import Tensor, nn

from notbugs.layers import Backbone, conv_bn, scaled


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
        c1, c2, c3, c4 = (scaled(c, width) for c in (64, 128, 256, 512))
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
