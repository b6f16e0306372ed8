"""Optional torch.compile of a model's backbone, with a fallback to eager.

Measured on an H100 (bench/measured/h100-2026-11-26): compiling the ResNet-50 backbone takes
representation matching from 10,800 to 24,500 image-steps/s (batch 512, bf16, channels_last), while
training at batch 512 gains only 7%. So `compile: true` compiles the model for construction (one
compile per constructed set, at its batch shape). Training at the paper's batch of 128 is another
matter: launch-bound eager, it gains 1.9x from CUDA graphs (H200, bench/measured/h200-2026-11-27-b),
so `compile_train` compiles training, with torch.compile's mode, at the training batch's shape.
Evaluation is too short to pay for a compile: a trained model is evaluated (and saved) eager.
A compiler that is missing or fails (no C++ toolchain, an unsupported op) only
costs the speed-up: the caller logs the reason and runs eager. So does a compiled model whose
input gradient is not finite or far from the eager one on the probe batch: torch 2.14.1's inductor
on a CPU gave NaN input gradients for the bf16 ResNet-9 (2026-11-27) where eager bf16 was fine.
The speed-up is the only effect: the same weights are used, and numerics differ by rounding only.
What is compiled is cached in the data folder (`keep_compiled_kernels`), so that a resumed job on
another machine does not compile it again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from notbugs.attacks import autocast, bf16_or_default, frozen

# The pipeline's `compile_train` settings: eager (no compile), or torch.compile's mode.
TRAIN_COMPILE = ("eager", "default", "reduce-overhead")

# The variable naming the folder of torch.compile's on-disk caches (inductor's compiled graphs, Triton
# kernels, autotuning results); torch's default folder is under /tmp, which is per node on a cluster.
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

# How far (relative l2 distance) the compiled model's input gradient may be from the exact (fp32,
# eager) one, beyond the distance of the eager gradient at the same precision: a looser bound would let
# a wrong kernel through, a tighter one reject rounding. In bf16 the eager gradient is itself 16-18%
# from fp32 for the `paper` ResNet-50 in miniature on the CPU, and a compiled one as near (15-17.5%) but
# 14-15% from eager's; compared with eager's alone it was refused (docs/measurements.md, 2026-12-06).
GRADIENT_TOLERANCE = 0.1


def _input_gradient(model, example: torch.Tensor, bf16: bool | None, chunk: int | None = None,
                    fake_relu: bool = False) -> torch.Tensor:
    """What the attacks differentiate: d sum(features) / d input, in eval mode (through the fake
    ReLU where matching uses it); `chunk` images at a time where given (an eager model only: each
    image's gradient is its own, and fp32 on a whole attack batch could need twice the memory the
    bf16 attack does)."""
    if chunk is not None and len(example) > chunk:
        return torch.cat([_input_gradient(model, part, bf16, fake_relu=fake_relu) for part in example.split(chunk)])
    x = example.detach().clone().requires_grad_(True)
    with frozen(model), autocast(x.device, bf16):
        (grad,) = torch.autograd.grad(model.features(x, fake_relu=fake_relu).float().sum(), x)
    return grad


def _gap(grad: torch.Tensor, exact: torch.Tensor) -> float:
    return ((grad - exact).norm() / exact.norm().clamp_min(1e-12)).item()


def keep_compiled_kernels(data_dir) -> str:
    """Have torch.compile cache what it compiles in `<data_dir>/work/compile-cache`, unless
    $TORCHINDUCTOR_CACHE_DIR names another folder than torch's default; returns the folder in use. A
    job that resumes a profile (capped jobs, often on another node of a cluster, whose /tmp is not the
    last job's) then finds the kernels of the jobs before it with the rest of their work, instead of
    compiling again (ResNet-50's training graphs take minutes). Torch reads the variable at every
    compile, and writes its default there on first use (creating an optimizer will do), so the
    default is not taken for a choice; the first data folder of a process wins."""
    current = os.environ.get(CACHE_ENV)
    if current is None or os.path.abspath(current) == _torch_default_cache():
        os.environ[CACHE_ENV] = current = str(Path(data_dir).resolve() / "work" / "compile-cache")
    return current


def _torch_default_cache() -> str | None:
    try:  # not public API: where it moved, a folder torch chose is kept as if the user had
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def try_compile(model, example: torch.Tensor, train: bool = False, bf16: bool | None = None,
                mode: str | None = None, fake_relu: bool = False) -> str | None:
    """Replace `model.backbone` by its compiled version and run it once at the example's shape and
    memory format and precision (`bf16`, as for `autocast`): an input gradient in eval mode (what
    attacks do) and, with `train`, a training backward in train mode. Returns None when it works and
    its input gradient is as near the exact (fp32, eager) one as the eager model's at the same
    precision, within GRADIENT_TOLERANCE; else the reason, with the eager backbone back in place.
    `features()` and `forward()` both go through the backbone. `mode` is torch.compile's
    (None: torch's default): "reduce-overhead" adds CUDA graphs on a GPU, for steps that are bound by
    kernel launches (ResNet-50 training at batch 128); on a CPU it is an ordinary compile. `fake_relu`:
    the gradient probed goes through the fake ReLU, as representation matching with it does (the
    graph the steps then run is the one compiled and checked here)."""
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    eager = model.backbone
    was_training = model.training
    # The train-mode probe moves the BatchNorm running statistics (all in the backbone). Saved from and
    # restored into the eager module: a compiled wrapper shares its tensors but names them `_orig_mod.*`.
    saved = {k: v.detach().clone() for k, v in eager.state_dict().items()} if train else None
    exact = _input_gradient(model, example, False, chunk=256, fake_relu=fake_relu)
    rounding = (_gap(_input_gradient(model, example, bf16, fake_relu=fake_relu), exact)
                if bf16_or_default(bf16, example.device) else 0.0)
    try:
        model.backbone = torch.compile(eager, dynamic=False, mode=mode)
        grad = _input_gradient(model, example, bf16, fake_relu=fake_relu)
        if not torch.isfinite(grad).all():
            raise FloatingPointError("the compiled model's input gradient is NaN or inf")
        gap = _gap(grad, exact)
        if gap > rounding + GRADIENT_TOLERANCE:
            raise FloatingPointError(f"the compiled model's input gradient is {gap:.0%} away from eager fp32's, "
                                     f"eager's at this precision {rounding:.0%}")
        if train:
            model.train()
            with autocast(example.device, bf16):
                model(example.detach()).float().sum().backward()
            model.zero_grad(set_to_none=True)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
        model.backbone = eager
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        if saved is not None:
            eager.load_state_dict(saved)
        model.train(was_training)
    return None


def uncompiled(model):
    """Put the eager backbone back in place of a compiled one (the same tensors) and return the model:
    for saving, and for evaluation, which runs at other batch shapes and is too short to pay for a compile."""
    model.backbone = getattr(model.backbone, "_orig_mod", model.backbone)
    return model


@contextlib.contextmanager
def eager_view(model):
    """The model with its eager backbone for the duration: its state_dict keys are then the eager
    model's (no `_orig_mod.`), so that checkpoints of compiled and eager runs are interchangeable."""
    backbone = model.backbone
    uncompiled(model)
    try:
        yield model
    finally:
        model.backbone = backbone
