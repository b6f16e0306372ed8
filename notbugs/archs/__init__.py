"""The architectures, one module a family. A step's code digest holds `notbugs/models.py`,
`notbugs/layers.py` and the module of each architecture it builds (`models.arch_code`), not this table:
adding an architecture here reruns no step that does not build it."""

from collections.abc import Callable

from torch import nn

from notbugs.archs.densenet import densenet121
from notbugs.archs.inception import inception_v3
from notbugs.archs.resnet import resnet18, resnet50
from notbugs.archs.resnet9 import resnet9
from notbugs.archs.vgg import vgg16

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
