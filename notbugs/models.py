"""CIFAR-10 classifiers used throughout the reproduction: the classifier around a backbone, the registry's
entry point (`make_model`) and what a model's code is (`arch_code`). The backbones are in `notbugs.archs`,
one module a family, their blocks in `notbugs.layers`.

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
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from notbugs.archs import ARCHS, FAKE_RELU_ARCHS
from notbugs.layers import Backbone

__all__ = ["ARCHS", "FAKE_RELU_ARCHS", "CIFAR_MEAN", "CIFAR_STD", "Classifier", "INITS", "MODEL_CODE", "arch_code",
           "he_init", "make_model"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The files of the package every model is built from; each architecture adds the module of its builder
# (`arch_code`), so that an edit to one architecture reruns only the steps that build it.
MODEL_CODE = ("models.py", "layers.py")


def arch_code(arch: str) -> tuple[str, ...]:
    """The files that build `arch`: MODEL_CODE and its builder's module (relative to the package, as
    `storage.package_digest` takes them; absolute for a builder defined outside it, e.g. a test's).
    Not the ARCHS table: point a name at another builder of the same module and no digest sees it; give
    a changed architecture a new name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; accepted names: {', '.join(ARCHS)}")
    builder = getattr(ARCHS[arch], "func", ARCHS[arch])  # a functools.partial's function
    path = Path(sys.modules[builder.__module__].__file__).resolve()
    package = Path(__file__).resolve().parent
    if not path.is_relative_to(package):
        return (*MODEL_CODE, str(path))
    name = path.relative_to(package).as_posix()
    if not name.startswith("archs/") or name == "archs/__init__.py":
        raise ValueError(f"the builder of {arch!r} is defined in notbugs/{name}: define it in a module of "
                         f"notbugs/archs/ (not the ARCHS table's), whose code its steps then hash")
    return (*MODEL_CODE, name)


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
        if isinstance(m, Backbone):
            m.zero_init_residuals()
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
