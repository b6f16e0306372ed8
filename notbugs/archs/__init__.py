"""The architectures, one module a family. A step's code digest holds `notbugs/models.py`,
`notbugs/layers.py` and the module of each architecture it builds (`models.arch_code`), not this table:
adding an architecture here reruns no step that does not build it."""

from collections.abc import Callable

from torch import nn

# the modules, not their builders: `notbugs.archs.resnet9` stays the module, not the function of that name
from notbugs.archs import densenet, inception, resnet, resnet9, vgg

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "vgg16": vgg.vgg16,
    "densenet121": densenet.densenet121,
    "inception_v3": inception.inception_v3,
    "resnet9": resnet9.resnet9,
}

# The architectures whose backbone takes fake_relu (representation matching as the reference's loss does it).
FAKE_RELU_ARCHS = ("resnet18", "resnet50", "resnet9")
