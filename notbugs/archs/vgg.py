"""VGG-16 with BatchNorm, kuangliu's pytorch-cifar layout (convs without bias: see `notbugs.models`)."""

from torch import Tensor, nn

from notbugs.layers import Backbone, conv_bn, global_avg_pool, scaled


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
                c_out = scaled(int(v), width)
                layers.append(conv_bn(c_in, c_out))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        # Five max-pools leave a 1x1 grid on 32x32 inputs, so pooling is just a flatten there.
        return global_avg_pool(self.layers(x))


def vgg16(width: float = 1.0) -> VGG:
    return VGG(VGG16_CFG, width)
