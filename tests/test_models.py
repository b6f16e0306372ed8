import math

import pytest
import torch
import torch.nn.functional as F

from notbugs.models import ARCHS, CIFAR_MEAN, CIFAR_STD, FAKE_RELU_ARCHS, Classifier, make_model

ALL_ARCHS = ["resnet18", "resnet50", "vgg16", "densenet121", "inception_v3", "resnet9"]
SMALL = 0.125  # narrow enough that every arch runs a batch of 2 in milliseconds on CPU


def small_model(arch: str, seed: int = 0, init: str = "he", **kwargs) -> Classifier:
    """Untrained: He init, so that every arch in eval mode responds at O(1) (see notbugs.models)."""
    torch.manual_seed(seed)
    return make_model(arch, width=SMALL, init=init, **kwargs)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registry_has_exactly_the_six_archs():
    assert sorted(ARCHS) == sorted(ALL_ARCHS), "list every notbugs.archs.ARCHS entry in this module's ALL_ARCHS"


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_small_models_give_logits_and_features(arch):
    model = small_model(arch)
    x = images()
    logits = model(x)
    feats = model.features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, model.repr_dim)
    assert model.arch == arch and model.width == SMALL and model.num_classes == 10
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()


def test_num_classes_sets_head_size():
    model = small_model("resnet9", num_classes=7)
    assert model(images()).shape == (2, 7)
    assert model.num_classes == 7


@pytest.mark.parametrize(
    "arch, repr_dim, min_params, max_params",
    [
        ("resnet18", 512, 11.0e6, 11.3e6),
        ("resnet50", 2048, 23.4e6, 23.6e6),
        ("densenet121", 1024, 6.9e6, 7.0e6),
        ("vgg16", 512, 14.6e6, 14.8e6),
        ("inception_v3", 2048, 21.0e6, 22.5e6),
        ("resnet9", 512, 6.5e6, 6.6e6),
    ],
)
def test_full_width_sizes_match_the_reference_architectures(arch, repr_dim, min_params, max_params):
    model = make_model(arch)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.repr_dim == repr_dim
    assert min_params <= n_params <= max_params, f"{arch}: {n_params:,} parameters"


@pytest.mark.parametrize("arch, n_params", [("resnet18", 11_173_962), ("resnet50", 23_520_842)])
def test_resnets_are_the_cifar_variants(arch, n_params):
    """The reference's CIFAR ResNets: a 3x3 stride-1 stem, no max-pool, a 32 -> 16 -> 8 -> 4 grid, and
    kuangliu's exact parameter count. An ImageNet stem (7x7, stride 2, max-pool) adds only 7.7k
    parameters to ResNet-50, which the size range above would let pass."""
    model = make_model(arch)
    assert sum(p.numel() for p in model.parameters()) == n_params
    stem = model.backbone.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in model.modules())
    grids = []
    hooks = [b.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape[2:]))) for b in model.backbone.blocks]
    with torch.no_grad():
        model.eval()(images())
    for h in hooks:
        h.remove()
    assert grids[0] == (32, 32) and grids[-1] == (4, 4)
    assert sorted(set(grids), reverse=True) == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_width_multiplies_channel_counts():
    # ResNet-18 at width 0.25 has 16 base channels, hence 16 * 8 = 128 at the last stage.
    assert make_model("resnet18", width=0.25).repr_dim == 128
    assert make_model("resnet50", width=0.25).repr_dim == 512
    assert make_model("vgg16", width=0.5).repr_dim == 256
    # Tiny widths still leave at least one channel everywhere and the model still runs.
    tiny = make_model("inception_v3", width=1e-3)
    assert tiny(images()).shape == (2, 10)


def test_wider_densenet_has_more_parameters():
    # DenseNet's width acts on the growth rate, so the parameter count must grow with it.
    def count(width):
        return sum(p.numel() for p in make_model("densenet121", width=width).parameters())

    assert count(0.125) < count(0.25) < count(0.5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet9", "inception_v3"])
def test_normalisation_happens_inside_the_model(arch):
    model = small_model(arch).eval()
    x = images()
    mean = torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        manual = model.head(model.backbone((x - mean) / std)) * model.logit_scale
        unnormalised = model.head(model.backbone(x)) * model.logit_scale
        torch.testing.assert_close(model(x), manual)
        assert not torch.allclose(model(x), unnormalised)
        before = model(x)
        model.mean.add_(0.1)
        assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_untrained_eval_model_responds_to_its_input(arch):
    # With fresh BN statistics a badly scaled init collapses every image to the same output; attacks on
    # untrained models in fast tests would then see no signal. What init="he" is for.
    model = small_model(arch, init="he").eval()
    with torch.no_grad():
        feats = model.features(images(n=8))
    spread = feats.std(dim=0).mean() / feats.pow(2).mean().sqrt()
    assert 1e-3 < feats.pow(2).mean().sqrt() < 1e3
    assert spread > 1e-3


def test_resnet9_scales_its_logits():
    model = small_model("resnet9").eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), 0.125 * model.head(model.features(x)))


def test_normalisation_buffers_follow_dtype_and_state_dict():
    model = small_model("resnet9").eval()
    assert {"mean", "std"} <= set(dict(model.named_buffers()))
    assert "mean" in model.state_dict()
    model = model.to(torch.float64)
    assert model.mean.dtype == torch.float64 and model.std.dtype == torch.float64
    out = model(images().double())
    assert out.dtype == torch.float64


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_input_gradient_is_finite_nonzero_and_input_untouched(arch):
    model = small_model(arch).eval()
    x = images()
    x_before = x.clone()
    x.requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.tensor([3, 7]))
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert torch.equal(x.detach(), x_before)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_train_mode_backward_reaches_every_parameter(arch):
    # An unused module would silently never train (and breaks DistributedDataParallel).
    model = small_model(arch).train()
    F.cross_entropy(model(images()), torch.tensor([0, 1])).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_channels_last_matches_contiguous(arch):
    model = small_model(arch).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "inception_v3", "resnet9"])
def test_runs_under_bf16_autocast_with_input_grad(arch):
    # CPU stand-in for the CUDA bf16 autocast used in training.
    model = small_model(arch).to(memory_format=torch.channels_last)
    x = images().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    (grad,) = torch.autograd.grad(logits.float().sum(), x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_unknown_arch_is_rejected_with_the_accepted_names():
    with pytest.raises(ValueError, match="resnet1000") as info:
        make_model("resnet1000")
    for name in ALL_ARCHS:
        assert name in str(info.value)


@pytest.mark.parametrize("width", [0, -0.5, math.nan, math.inf, "wide", None])
def test_non_positive_or_non_finite_width_is_rejected(width):
    with pytest.raises(ValueError, match="width"):
        make_model("resnet18", width=width)


def test_same_seed_gives_same_weights_and_other_seed_does_not():
    a = small_model("resnet18", seed=0).state_dict()
    b = small_model("resnet18", seed=0).state_dict()
    c = small_model("resnet18", seed=1).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _fan_in(conv: torch.nn.Conv2d) -> int:
    return conv.weight[0].numel()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16", "resnet9"])
def test_the_trained_init_is_pytorch_s_default_and_he_is_he(arch):
    """The pipeline trains PyTorch's default init (the reference code's): conv weights uniform with
    std 1 / sqrt(3 fan_in), every BN scale 1. init="he": std sqrt(2 / fan_in), and each ResNet residual
    branch's last BN scale 0 (the block starts as its shortcut)."""
    torch.manual_seed(0)
    default = make_model(arch, width=0.5)
    torch.manual_seed(0)
    he = make_model(arch, width=0.5, init="he")
    for model, std in ((default, lambda c: (3 * _fan_in(c)) ** -0.5), (he, lambda c: (2 / _fan_in(c)) ** 0.5)):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4096]
        assert convs
        for c in convs:
            assert abs(c.weight.std().item() / std(c) - 1) < 0.1, (arch, c)
    assert all(torch.all(m.weight == 1) for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d))
    zero = [m for m in he.modules() if isinstance(m, torch.nn.BatchNorm2d) and torch.all(m.weight == 0)]
    residual_branches = {"resnet18": 8, "resnet50": 16}.get(arch, 0)  # ResNet-9's residuals stay as they are
    assert len(zero) == residual_branches


def test_unknown_init_is_rejected_with_the_accepted_names():
    with pytest.raises(ValueError, match="torch, he"):
        make_model("resnet18", init="xavier")


def _feature_gradient(model, x, weights, fake_relu):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model.features(x, fake_relu=fake_relu) * weights).sum(), x)
    return grad


# The architectures of FAKE_RELU_ARCHS whose representation has no ReLU after it, so that fake_relu has nothing to
# replace and the gradient is the true one (resnet9's is a max-pool of a residual sum)
NO_LAST_RELU = ("resnet9",)


@pytest.mark.parametrize("arch", FAKE_RELU_ARCHS)
def test_fake_relu_changes_the_gradient_not_the_representation(arch):
    """Every architecture that takes fake_relu: the same representation, and (but where its representation has
    no last ReLU) another gradient. An architecture listed in FAKE_RELU_ARCHS whose forward ignores fake_relu
    fails here. PyTorch's init: He's starts each residual branch at zero, so the last sum of a ResNet is a ReLU
    output, never negative, and the two gradients would agree."""
    model = small_model(arch, init="torch").eval()
    x = images(4)
    weights = torch.randn(model.repr_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.features(x, fake_relu=True), model.features(x))
    fake, true = _feature_gradient(model, x, weights, True), _feature_gradient(model, x, weights, False)
    assert torch.isfinite(fake).all() and fake.abs().sum() > 0
    if arch in NO_LAST_RELU:
        assert torch.equal(fake, true)
    else:
        assert not torch.allclose(fake, true)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fake_relu_is_the_gradient_of_the_pre_relu_sum(arch):
    """The reference's FakeReLU on the last block's output: the gradient of the pre-ReLU sum, as if that ReLU
    were not there (its true gradient drops the features that are off)."""
    model = small_model(arch, init="torch").eval()
    x = images(4)
    weights = torch.randn(model.repr_dim, generator=torch.Generator().manual_seed(2))
    fake = _feature_gradient(model, x, weights, True)

    def pre_relu_pooled(z):  # the backbone with its last ReLU taken out
        h = model.backbone.stem(model.normalize(z))
        *body, last = model.backbone.blocks
        for block in body:
            h = block(h)
        inner = last.conv3(last.conv2(last.conv1(h))) if arch == "resnet50" else last.conv2(last.conv1(h))
        return (inner + last.shortcut(h)).mean(dim=(2, 3))

    z = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((pre_relu_pooled(z) * weights).sum(), z)
    assert torch.allclose(fake, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - set(FAKE_RELU_ARCHS)))
def test_fake_relu_is_refused_where_not_implemented(arch):
    with pytest.raises(ValueError, match=f"fake_relu is not implemented for {arch}"):
        small_model(arch).features(images(), fake_relu=True)


def test_inception_is_the_references_cifar_inception():
    """The `robustness` library's cifar_models/inception.py: its parameter count at 10 classes, its
    unpadded reductions (a 32 -> 30 -> 14 -> 6 grid) and dropout on the representation in training only."""
    model = make_model("inception_v3")
    assert sum(p.numel() for p in model.parameters()) == 22_133_738
    grids = []
    for block in [model.backbone.stem, *model.backbone.blocks]:
        block.register_forward_hook(lambda module, args, out: grids.append(out.shape[-1]))
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    rep = model.features(x)
    assert grids == [30, 30, 30, 30, 14, 14, 14, 14, 14, 6, 6, 6]
    assert torch.equal(model.features(x), rep)  # eval: no dropout, the same representation
    model.train()
    dropped = model.features(x)
    model.backbone.dropout.eval()  # the same training-mode network without its dropout
    whole = model.features(x)
    on = whole != 0
    assert 0.4 < (dropped[on] == 0).float().mean() < 0.6  # about half the units dropped
    kept = on & (dropped != 0)
    assert torch.allclose(dropped[kept], 2 * whole[kept], rtol=1e-4)  # the others doubled


def test_each_architecture_s_code_is_the_shared_files_and_its_own_module():
    """What a step hashes for a model (`arch_code`): models.py, layers.py and the module of notbugs/archs/ that
    builds it; ResNet-18 and ResNet-50 share theirs. A builder in the ARCHS table's own file is refused (no
    step would hash it)."""
    from pathlib import Path

    from notbugs.models import MODEL_CODE, arch_code

    package = Path(__file__).resolve().parents[1] / "notbugs"
    for arch in ALL_ARCHS:
        *shared, own = arch_code(arch)
        assert tuple(shared) == MODEL_CODE
        assert own.startswith("archs/") and own != "archs/__init__.py" and (package / own).is_file(), arch
    known = {"resnet18": "archs/resnet.py", "resnet50": "archs/resnet.py", "vgg16": "archs/vgg.py",
             "densenet121": "archs/densenet.py", "inception_v3": "archs/inception.py", "resnet9": "archs/resnet9.py"}
    assert {arch: arch_code(arch)[-1] for arch in known} == known
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        arch_code("vit")


def test_a_builder_outside_an_architecture_module_is_refused_or_followed(monkeypatch):
    """A functools.partial is followed to its function's module; a builder written in the ARCHS table's own
    file (notbugs/archs/__init__.py), which no step hashes, is refused."""
    import functools

    from notbugs.archs.resnet9 import resnet9
    from notbugs.models import arch_code

    monkeypatch.setitem(ARCHS, "wide9", functools.partial(resnet9, 2.0))
    assert arch_code("wide9")[-1] == "archs/resnet9.py"
    table = {}
    exec("def tiny9(width=1.0):\n    return resnet9(width)", {"resnet9": resnet9, "__name__": "notbugs.archs"}, table)
    monkeypatch.setitem(ARCHS, "tiny9", table["tiny9"])  # as if written in notbugs/archs/__init__.py
    with pytest.raises(ValueError, match=r"builder of 'tiny9' is defined in notbugs/archs/__init__\.py"):
        arch_code("tiny9")


def test_architecture_modules_import_blocks_from_layers_only():
    """A step hashes the one module of each architecture it builds (`arch_code`): a block borrowed from another
    architecture's module would change without rerunning it, and a checkpoint of the old code would be resumed
    as done. Blocks that two families share belong in notbugs/layers.py."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "notbugs"
    for path in [*sorted((package / "archs").glob("*.py")), package / "layers.py", package / "models.py"]:
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        ours = sorted(m for m in imported if m.split(".")[0] == "notbugs")
        if path.name == "__init__.py":  # the table imports every architecture module
            allowed = {m for m in ours if m == "notbugs.archs" or m.startswith("notbugs.archs.")}
        elif path.name == "models.py":
            allowed = {"notbugs.archs", "notbugs.layers"}
        elif path.name == "layers.py":
            allowed = set()
        else:
            allowed = {"notbugs.layers"}
        assert set(ours) <= allowed, f"{path.relative_to(package.parent)} imports {sorted(set(ours) - allowed)}"


def test_every_library_package_is_installed():
    """pyproject.toml lists its packages by name: a subpackage missing there (notbugs.archs, say) would be
    left out of a wheel (`pip install .`), and every model with it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = [".".join(p.parent.relative_to(root).parts) for p in (root / "notbugs").rglob("__init__.py")]
    assert sorted(listed) == sorted(found)
