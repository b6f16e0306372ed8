"""l2 PGD and representation matching, batched on the device, one forward and one backward per step.

Conventions follow the paper and the authors' `robustness` library: images in [0, 1]; a step moves
along the per-example l2-normalised gradient; after each step the perturbation is projected onto the
l2 ball of radius eps around the centre and the image clipped to [0, 1].

Representation matching (how D_R and D_NR are built) minimises ||g(z) - g(x)||_2 from a start image
with the same normalised steps and no distance bound. The target representation g(x) is computed
once per batch, so each step costs one forward and one backward (the reference code runs two
forwards per step).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class NonFiniteError(FloatingPointError):
    """A loss, gradient or attack produced NaN or inf."""


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def normalised(grad: torch.Tensor) -> torch.Tensor:
    return grad / _l2(grad)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each perturbation back onto the l2 ball of radius eps if it left it."""
    norm = _l2(delta)
    return delta * torch.clamp(eps / norm, max=1.0)


def l2_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float) -> torch.Tensor:
    """One l2 PGD step of the perturbation `delta` of images `x` (negative `step_size`: descent).

    Along the per-example normalised gradient, projected onto the eps ball, x + delta clipped to [0, 1].
    """
    delta = delta.detach() + step_size * normalised(grad)
    delta = project_l2(delta, eps)
    return (x + delta).clamp(0, 1) - x


def random_in_ball(shape, eps: float, g: torch.Generator | None, device) -> torch.Tensor:
    """The `robustness` library's l2 random start: noise uniform in [-1/2, 1/2] per pixel, each image's
    scaled down to norm eps if longer. On a CIFAR image such noise has norm about 16, so the start lies on
    the sphere of radius eps for any eps used here. (Until 2026-12-07 ours drew the radius uniform in
    [0, eps]. No profile uses it: every `random_start` is off and every `restarts` is 1.)"""
    return (torch.rand(shape, generator=g, device=device) - 0.5).renorm(p=2, dim=0, maxnorm=eps)


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and no parameter gradients while attacking; restores the previous state."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively: CUDA GPUs with bf16, and CPUs whose oneDNN kernels
    have bf16 instructions (AVX512-BF16 or AMX on x86). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """A profile's `precision` on this device: bf16 autocast or fp32. `auto` is bf16 where it is native."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return native_bf16(device) if precision == "auto" else precision == "bf16"


def precision_name(bf16: bool) -> str:
    """How results record a resolved precision."""
    return "bf16" if bf16 else "fp32"


def bf16_or_default(bf16: bool | None, device: torch.device) -> bool:
    """`None` is the default of callers that do not say: bf16 on CUDA, fp32 on the CPU. The stages
    always pass the profile's resolved `precision`."""
    return device.type == "cuda" if bf16 is None else bf16


def autocast(device: torch.device, bf16: bool | None = None):
    """bf16 autocast or plain fp32 (`bf16` as for `bf16_or_default`)."""
    if bf16_or_default(bf16, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NonFiniteError(f"{what} is NaN or inf")


def as_in_the_steps(fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x), detached, computed as the attack steps compute it: grad mode on, x requiring a gradient.
    A compiled backbone then runs the graph it compiled for the steps, where torch.no_grad() would
    have it compile another on the first shard (2.7-3.1 s on the 2-core CPU, bench/first_shard.py;
    the H200 run's first D_R shard took 5.4 s longer than the others); the cost is a forward that
    keeps its activations until they are dropped here."""
    with torch.enable_grad():
        return fn(x.detach().requires_grad_(True)).detach()


def keep_best(best: tuple | None, value: torch.Tensor, z: torch.Tensor, better) -> tuple:
    """Per example, the iterate whose `value` is best so far (`better(new, old)`: a boolean mask).

    The reference's `use_best` (the `robustness` library's default, in training, evaluation and
    construction alike): an attack returns its worst-case iterate, not its last one."""
    value, z = value.detach(), z.detach()
    if best is None:
        return value.clone(), z.clone()
    best_value, best_z = best
    replace = better(value, best_value)
    return torch.where(replace, value, best_value), torch.where(replace[:, None, None, None], z, best_z)


def pgd_l2(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
           targeted: bool = False, random_start: bool = False, g: torch.Generator | None = None,
           bf16: bool | None = None, use_best: bool = False) -> torch.Tensor:
    """l2 PGD. Untargeted: raise the loss of label y. Targeted: lower the loss of target y.

    `use_best`: return, per example, the iterate (the start and the last included) with the highest loss
    (targeted: the lowest), as the reference's `use_best` does; one more forward, for the last iterate.
    The model should be in eval mode with frozen parameters (see `frozen`); returns x_adv, detached.
    A NaN or inf gradient is a `NonFiniteError`, checked once on the result (it carries the NaN
    through the normalisation, projection and clipping), not at every step: on a GPU a check per
    step would make the host wait for the device each step.
    """
    x = x.detach()
    delta = random_in_ball(x.shape, eps, g, x.device) if random_start else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    sign = -1.0 if targeted else 1.0

    def losses(z: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, bf16):
            logits = model(z)
        return F.cross_entropy(logits.float(), y, reduction="none")

    def stronger(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:  # a higher loss (targeted: lower)
        return sign * new > sign * old

    kept = None
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = losses(x + delta)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        if use_best:
            kept = keep_best(kept, loss, delta, stronger)
        delta = l2_step(x, delta, grad, sign * step_size, eps)
    _check_finite(delta, "PGD result (a gradient along the way)")  # before `use_best` could pass over a NaN
    if use_best:
        _, delta = keep_best(kept, as_in_the_steps(losses, x + delta), delta, stronger)
    return (x + delta).detach()


def representation_distance(model, z: torch.Tensor, target: torch.Tensor, bf16: bool | None = None,
                            fake_relu: bool = False) -> torch.Tensor:
    """Per-example ||g(z) - target||_2 (`fake_relu`: differentiated as the reference does, see
    `models.FakeReLU`; the value is the same)."""
    with autocast(z.device, bf16):
        rep = model.features(z, fake_relu=fake_relu)
    return (rep.float() - target).flatten(1).norm(dim=1)


def match_representation(model, start: torch.Tensor, target_images: torch.Tensor, steps: int,
                         step_size: float, final_step_size: float | None = None,
                         bf16: bool | None = None, momentum: float = 0.0,
                         use_best: bool = False, fake_relu: bool = False) -> tuple[torch.Tensor, dict]:
    """Move `start` so that the model's representation matches that of `target_images`.

    Normalised gradient descent on ||g(z) - g(x)||_2, z clipped to [0, 1], no distance bound. The
    step size decays linearly from `step_size` to `final_step_size` (equal: constant, the paper).
    With `momentum` m > 0 (not the paper's rule) each step goes along the normalised velocity
    v = m v + g / ||g|| instead of g / ||g||: the same step length, a smoother direction.
    `fake_relu`: the gradient passes the representation's last ReLU unchanged, as in the reference's
    representation-inversion loss (`models.FakeReLU`).
    `use_best`: return, per example, the iterate (the start and the last included) nearest the target
    representation, as the reference's `use_best`: no extra forward or backward (each step computes its
    distance anyway), one per-image select over the batch per step.
    Returns z and statistics: mean start / final distance, absolute and relative to ||g(x)||.
    The target and the two distances go through the steps' own forward (`as_in_the_steps`, with
    their `fake_relu`: the same values, and the one graph a compiled backbone has for them). A NaN
    or inf gradient is a `NonFiniteError`, checked once on z (as in `pgd_l2`).
    """
    final_step_size = step_size if final_step_size is None else final_step_size
    with autocast(start.device, bf16):
        target = as_in_the_steps(lambda z: model.features(z, fake_relu=fake_relu), target_images).float()

    def distance(z: torch.Tensor) -> torch.Tensor:
        return representation_distance(model, z, target, bf16, fake_relu)

    target_norm = target.flatten(1).norm(dim=1).clamp_min(1e-12)
    z = start.detach().clone()
    velocity = torch.zeros_like(z) if momentum else None
    d0 = as_in_the_steps(distance, z)
    kept = None
    for i in range(steps):
        lr = step_size + (final_step_size - step_size) * (i / max(steps - 1, 1))
        z.requires_grad_(True)
        dist = distance(z)
        (grad,) = torch.autograd.grad(dist.sum(), z)
        if use_best:
            kept = keep_best(kept, dist, z, torch.lt)
        direction = normalised(grad)
        if velocity is not None:
            velocity = momentum * velocity + direction
            direction = normalised(velocity)
        z = (z.detach() - lr * direction).clamp(0, 1)
    _check_finite(z, "representation-matched images (a gradient along the way)")
    d1 = as_in_the_steps(distance, z)
    if use_best:
        d1, z = keep_best(kept, d1, z, torch.lt)
    stats = {
        "start_distance": d0.mean().item(), "final_distance": d1.mean().item(),
        "start_relative": (d0 / target_norm).mean().item(), "final_relative": (d1 / target_norm).mean().item(),
    }
    return z.detach(), stats
