"""Throughput of notbugs against a faithful re-implementation of the reference computation.

WHAT IS MEASURED. Five stages, each run once with our library code ("ours") and once with the
computation the authors' MadryLab `robustness` library performs ("reference"), on the same
architecture, the same initial weights and the same (random) data; the table prints both rates and
ours / reference.

  match (image-steps/s; how D_R and D_NR are built)
    ours  notbugs.attacks.match_representation: 1 forward + 1 backward per step, channels_last, bf16
          autocast where the device has it natively (--precision); both sides differentiate
          through the fake ReLU (models.FakeReLU) where the architecture has one, as the `paper`
          profile and the reference's inversion loss do. Every "ours" attack keeps the
          best iterate (use_best, as the `paper` profile does; since 2026-12-06: earlier figures
          ran without it, one forward fewer per attack in pgd, adv_train and eval).
    ref   robustness Attacker.forward with the authors' custom inversion loss, fp32: per step the model
          runs on the iterate inside calc_loss (output unused) and again inside the custom loss, so
          2 forwards + 1 backward; use_best bookkeeping, one more loss evaluation and the output
          forward of AttackerModel at the end.
  pgd (image-steps/s; D_rand / D_det)
    ours  notbugs.construct.targeted_pgd_batch, as a shard runs it: pgd_l2(targeted=True) with use_best's final
          loss forward, then the success check.
    ref   Attacker.forward, targeted, cross-entropy: 1 forward + 1 backward per step (no custom loss,
          hence no second forward: see attacker.py calc_loss), use_best, final loss and output forward.
  train (images/s; SGD step with the paper's augmentation)
    ours  notbugs.train.train(): data on the device, batched augment(), bf16 (--precision) + channels_last.
    ref   robustness.train._model_loop: DataLoader over PIL images with torchvision per-image
          transforms (RandomCrop 32 pad 4, flip, ColorJitter .25, RandomRotation 2, ToTensor),
          `--workers` processes, pin_memory on GPU, fp32, loss.item() every step, SGD with weight
          decay on every parameter.
  adv_train (images/s; the robust source model, 7-step l2 PGD eps 0.5 step 0.1 inside)
    ours  train(adversarial=...), no random start.  ref  the same loop with make_adv (use_best).
  eval (images/s; 20-step l2 PGD at eps 0.25, step 2.5 * eps / 20)
    ours  notbugs.evaluate.robust_correct.  ref  _model_loop('val', adv=True): attack, output, accuracy.

The reference side is written here from the `robustness` source (attacker.py, attack_steps.py,
train.py); it is not that library (which needs cox, dill, tqdm and CUDA), but the same operations in
the same order. Its "fp32" is PyTorch's default on CUDA, where cuDNN convolutions may use TF32
(torch.backends.cudnn.allow_tf32 = True); --strict-fp32 turns that off for the reference runs.

WHY. The protocol's reference recipe costs about 10 GPU-hours (shared/docs/protocol.md, "Cost of the
reference recipe"): D_R alone is 50,000 x 1,000 matching steps. Our speed-ups come from one forward
per matching step instead of two, bf16, channels_last, augmentation on the device and (optionally)
torch.compile; this script measures each of those claims per stage instead of assuming them, and
checks that both matchings reach the same representation distance from the same batch.

FLOP/s. Forward FLOPs per image are counted with hooks (2 x multiply-adds of every Conv2d and
Linear; BatchNorm, ReLU, pooling ignored). Rule: a backward that needs only the input gradient
(attacks) costs 1x a forward; a training backward (input + weight gradients) costs 2x, so a training
step is 3x forward. Per image: match ours 2*S + 3 forwards per call of S steps (target, start and final
distances), reference 3*S + 4; pgd ours 2*S + 2 (use_best's final loss, and the success check that
building a shard runs), reference 2*S + 2; train 3; adv_train (A attack steps) 2*A + 1 + 3 both;
eval (E steps) 2*E + 2 both. "% peak" is against the card's bf16 dense peak (H100 SXM / H200: 989
TFLOP/s) whatever ours' precision (an fp32 run's share is of a peak it cannot reach); n/a on CPU or an
unknown card. The input-gradient rule holds for the reference too: torch.autograd.grad(loss, [x])
computes no weight gradients even where the parameters require them.

PROFILES. --profile NAME runs every stage as that profile of params.yaml runs it in the pipeline: its
architecture and width; construction's batch and `compile` (torch's default mode, the matching graph
through the fake ReLU) for match and pgd; training's batch and `compile_train` for train and
adv_train; evaluation's batch, eager, for eval; its `precision`; its adversarial-training attack and
evaluation steps on both sides (the same work; the training augmentation is ours' profile's and the
reference's own). Without it, one --batch and one --compile setting serve every stage.

MEMORY FORMAT AND PRECISION. Ours uses channels_last in every stage on every device, as the library
does (train() converts the model and its batches, load_model() returns it in channels_last for
construction and evaluation); --no-channels-last measures the default format for the attack and eval
stages (train() converts anyway). --precision is a profile's `precision`: auto (the default) is bf16
autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere.

HARDWARE. Measured on one H100 80GB HBM3 (torch 2.11) and on a 2-core CPU: bench/README.md
"Measured", raw JSON and logs in bench/measured/.

Run: python bench/bench.py --tiny            (CPU smoke, seconds)
     python bench/bench.py --profile paper --json out.json   (GPU: the paper profile's throughput run)
     python bench/bench.py --arch resnet50 --batch 512 --compile --json out.json   (GPU)
Needs only torch, torchvision (and its pillow), numpy; --profile also PyYAML.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import shlex
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

try:  # notbugs.config imports yaml at module level (for params.yaml, which only --profile reads);
    import yaml  # noqa: F401  # GPU machines with only torch/numpy/pandas/pyarrow have no pyyaml
except ImportError:
    _stub = types.ModuleType("yaml")  # enough for config's module body, which subclasses yaml.SafeLoader
    _stub.SafeLoader = object
    sys.modules["yaml"] = _stub

from notbugs.compiling import try_compile  # noqa: E402
from notbugs.attacks import PRECISIONS, frozen, match_representation, use_bf16  # noqa: E402
from notbugs.config import AdversarialConfig, AugmentConfig, TrainConfig  # noqa: E402
from notbugs.construct import targeted_pgd_batch  # noqa: E402
from notbugs.evaluate import robust_correct  # noqa: E402
from notbugs.models import FAKE_RELU_ARCHS, make_model  # noqa: E402
from notbugs.storage import write_json  # noqa: E402
from notbugs.train import train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (bench/roofline.py, a sibling script: the cards' peaks)

STAGES = ("match", "pgd", "train", "adv_train", "eval")
UNITS = {"match": "image-steps/s", "pgd": "image-steps/s", "train": "images/s", "adv_train": "images/s",
         "eval": "images/s"}
MATCH_STEP, PGD_EPS, PGD_STEP = 0.1, 0.5, 0.1  # paper: D_R step 0.1; D_rand / D_det eps 0.5, step 0.1
ADV = AdversarialConfig(eps=0.5, steps=7, step_size=0.1, random_start=False, use_best=True)  # paper's robust model
EVAL_EPS, EVAL_STEPS, EVAL_FACTOR = 0.25, 20, 2.5
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # "default": torch's
PAPER_TRAIN = TrainConfig(epochs=1, batch_size=0, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                          schedule="step", milestones=(50, 100), gamma=0.1, warmup=0.0, label_smoothing=0.0,
                          augment=AugmentConfig(crop_pad=4, flip=True, jitter=0.25, rotate=2.0), decay="all")


def peak_bf16_tflops(device: torch.device) -> float | None:
    """Dense bf16 tensor-core peak of the card (roofline.CARDS), from its name; None where unknown (or CPU)."""
    if device.type != "cuda":
        return None
    card = roofline.card_of(torch.cuda.get_device_name(device))
    return roofline.CARDS[card][0] / 1e12 if card else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops_per_image(model: nn.Module, device: torch.device) -> float:
    """2 x multiply-adds of every Conv2d and Linear for one 32x32 image (hooks on an eager copy)."""
    macs = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal macs
        macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal macs
        macs += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32, device=device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return 2.0 * macs


def reset(model: nn.Module, init: list[torch.Tensor]) -> None:
    """Same initial weights and BN statistics for every stage (state_dict order, so a compiled
    backbone whose keys carry `_orig_mod.` still lines up)."""
    with torch.no_grad():
        for t, v in zip(model.state_dict().values(), init):
            t.copy_(v)


@contextlib.contextmanager
def quiet():
    """The library's progress bars write to stderr; keep the benchmark output to the table."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# ---------------------------------------------------------------------------------------------
# The reference computation (robustness library: attacker.py, attack_steps.L2Step, train.py)
# ---------------------------------------------------------------------------------------------


def ref_attack(model, x, target, *, constraint, eps, step_size, iterations, targeted, custom_loss=None,
               use_best=True):
    """robustness.attacker.Attacker.forward with constraint '2' (L2Step), no random start, no restarts."""
    assert constraint == "2"
    orig = x.detach()
    m = -1 if targeted else 1
    criterion = nn.CrossEntropyLoss(reduction="none")

    def calc_loss(inp, target):
        output = model(inp)  # always run (normalisation is inside our Classifier) ...
        if custom_loss:
            return custom_loss(model, inp, target)  # ... and run again inside a custom loss
        return criterion(output, target), output

    def replace_best(loss, bloss, x, bx):
        if bloss is None:
            return loss.clone().detach(), x.clone().detach()
        replace = m * bloss < m * loss
        bx[replace] = x[replace].clone().detach()
        bloss[replace] = loss[replace]
        return bloss, bx

    best_loss, best_x = None, None
    for _ in range(iterations):
        x = x.clone().detach().requires_grad_(True)
        losses, out = calc_loss(x, target)
        loss = torch.mean(losses)
        (grad,) = torch.autograd.grad(m * loss, [x])
        with torch.no_grad():
            best_loss, best_x = replace_best(losses, best_loss, x, best_x) if use_best else (losses, x)
            g_norm = torch.norm(grad.view(grad.shape[0], -1), dim=1).view(-1, 1, 1, 1)  # L2Step.step
            x = x + grad / (g_norm + 1e-10) * step_size
            diff = (x - orig).renorm(p=2, dim=0, maxnorm=eps)  # L2Step.project
            x = torch.clamp(orig + diff, 0, 1)
    if not use_best:
        return x.clone().detach()
    losses, _ = calc_loss(x, target)
    best_loss, best_x = replace_best(losses, best_loss, x, best_x)
    return best_x


def inversion_loss(model, inp, targ):
    """The custom loss of the authors' D_R construction: relative distance of representations,
    through the fake ReLU (`model(inp, with_latent=True, fake_relu=True)` in the library's docs)."""
    rep = model.features(inp, fake_relu=model.arch in FAKE_RELU_ARCHS)
    return torch.div(torch.norm(rep - targ, dim=1), torch.norm(targ, dim=1)), None


def ref_make_adv(model, inp, target, **attack_kwargs):
    """AttackerModel.forward(make_adv=True): attack in eval mode, then the output on the result."""
    prev_training = bool(model.training)
    model.eval()
    adv = ref_attack(model, inp, target, **attack_kwargs)
    if prev_training:
        model.train()
    return model(adv), adv


def ref_match(model, start, target_images, steps):
    """D_R construction: target representation once per batch, then the targeted inversion attack."""
    with torch.no_grad():
        targ = model.features(target_images)
    _, z = ref_make_adv(model, start, targ, constraint="2", eps=1000.0, step_size=MATCH_STEP, iterations=steps,
                        targeted=True, custom_loss=inversion_loss)
    return z


class RefDataset(torch.utils.data.Dataset):
    """Like torchvision's CIFAR10: uint8 HWC arrays -> PIL image -> per-image transforms."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray):
        from PIL import Image
        from torchvision import transforms

        self.pil = Image.fromarray
        self.images, self.labels = images_nhwc, labels
        self.transform = transforms.Compose([  # robustness.data_augmentation.TRAIN_TRANSFORMS_DEFAULT(32)
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(.25, .25, .25),
            transforms.RandomRotation(2),
            transforms.ToTensor(),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.pil(self.images[i])), int(self.labels[i])



def ref_train_step(model, opt, inp, target, device, adv: AdversarialConfig | None) -> None:
    """One iteration of robustness.train._model_loop('train'); `adv`: the attack of adversarial training
    (the library's use_best default, whatever ours does)."""
    inp = inp.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if adv is not None:
        output, _ = ref_make_adv(model, inp, target, constraint="2", eps=adv.eps, step_size=adv.step_size,
                                 iterations=adv.steps, targeted=False, use_best=True)
    else:
        output = model(inp)
    loss = F.cross_entropy(output, target)
    _, pred = output.topk(min(5, output.shape[-1]), 1, True, True)  # helpers.accuracy: top-1 and top-5
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    _ = correct[:1].float().sum() * 100.0 / len(target), correct.float().sum() * 100.0 / len(target)
    _ = loss.item()  # losses.update(loss.item(), ...): a host sync every step
    opt.zero_grad()
    loss.backward()
    opt.step()


def ref_eval_batch(model, x, y, steps: int, factor: float) -> int:
    """One iteration of robustness.train._model_loop('val', adv=True): attack, output, loss, accuracy."""
    output, _ = ref_make_adv(model, x, y, constraint="2", eps=EVAL_EPS, step_size=factor * EVAL_EPS / steps,
                             iterations=steps, targeted=False, use_best=True)
    _ = F.cross_entropy(output, y).item()  # losses.update(...)
    return (output.argmax(1) == y).sum().item()


# ---------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--arch", default=None, help="default resnet50 on GPU, resnet9 on CPU")
    p.add_argument("--width", type=float, default=None, help="channel multiplier; default 1.0 GPU, 0.125 CPU")
    p.add_argument("--batch", type=int, default=None, help="default 512 GPU, 16 CPU")
    p.add_argument("--steps", type=int, default=None, help="timed iterations per stage; default 20 GPU, 2 CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first; default 5 GPU, 1 CPU")
    p.add_argument("--attack-steps", type=int, default=None,
                   help="matching / PGD steps in one iteration of the match and pgd stages; default 10 GPU, 5 CPU")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers; default 8 GPU, 0 CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile our model's backbone (falls back to eager)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile's mode with --compile; reduce-overhead adds CUDA graphs on a GPU")
    p.add_argument("--no-channels-last", action="store_true",
                   help="ours in the default memory format (train() converts anyway: that is the library)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="ours: bf16 autocast, fp32, or auto (bf16 where native; the default, and the profiles')")
    p.add_argument("--strict-fp32", action="store_true", help="reference with cuDNN TF32 convolutions off")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--profile", default=None,
                   help="run each stage as this profile of --params runs it (batch, compile, precision, attacks); "
                        "--arch, --width, --batch, --precision given explicitly still win")
    p.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    p.add_argument("--eager", action="store_true", help="with --profile: compile nothing (a CPU smoke test)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke preset: resnet9 width 0.0625, batch 8, steps 1, warmup 0, 3 attack steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(auto if args.device == "auto" else args.device)
    gpu = args.device.type == "cuda"
    args.batch_given = args.batch is not None
    args.profile_params = None
    if args.profile is not None:
        from notbugs.config import ConfigError, load_params
        try:
            prof = load_params(args.params, args.profile).profile
        except ConfigError as e:
            p.error(str(e))
        args.profile_params = prof
        if args.compile:
            p.error("--compile with --profile: the profile says what compiles (--eager for nothing)")
        args.arch = args.arch or prof.arch
        args.width = args.width or prof.width
        args.precision = args.precision or prof.precision
    elif args.eager:
        p.error("--eager goes with --profile (without it nothing compiles unless --compile)")
    tiny = dict(arch="resnet9", width=0.0625, batch=8, steps=1, warmup=0, attack_steps=3, workers=0)
    defaults = dict(arch="resnet50" if gpu else "resnet9", width=1.0 if gpu else 0.125, batch=512 if gpu else 16,
                    steps=20 if gpu else 2, warmup=5 if gpu else 1, attack_steps=10 if gpu else 5,
                    workers=8 if gpu else 0)
    for k, v in (tiny if args.tiny else defaults).items():
        if getattr(args, k) is None:  # explicit options win over the preset
            setattr(args, k, v)
    args.precision = args.precision or "auto"
    if args.compile_mode != "default" and not args.compile:  # else a run meant to measure a mode measures eager
        p.error("--compile-mode needs --compile")
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    return args


def maybe_compile(model, device, batch: int, fmt: torch.memory_format, bf16: bool, notes: list[str],
                  mode: str | None = None, fake_relu: bool = False, what: str = "--compile") -> bool:
    """Compile the backbone in place with the library's helper, probed in eval mode (input gradient,
    through the fake ReLU where matching uses it) and train mode (weight gradients) at the stage's batch
    size and memory format (others would make dynamo recompile); on any error, note it and measure
    eager instead."""
    example = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    reason = try_compile(model, example, train=True, bf16=bf16, mode=mode, fake_relu=fake_relu)
    if reason is not None:
        notes.append(f"{what} failed ({reason}); ours runs eager")
    return reason is None


@dataclasses.dataclass(frozen=True)
class StagePlan:
    batch: int
    compile_mode: str | None  # None: eager; "default": torch's default mode


def stage_plans(args) -> dict[str, StagePlan]:
    """Each stage's batch and compile mode: the profile's (--profile) or the command line's."""
    prof = args.profile_params
    if prof is None:
        mode = args.compile_mode if args.compile else None
        return {s: StagePlan(args.batch, mode) for s in STAGES}
    construct = StagePlan(prof.construct.batch_size, "default" if prof.compile else None)
    training = StagePlan(prof.train.batch_size, None if prof.compile_train == "eager" else prof.compile_train)
    evaluation = StagePlan(prof.evaluate.batch_size, None)  # the pipeline evaluates eager
    plans = {"match": construct, "pgd": construct, "train": training, "adv_train": training, "eval": evaluation}
    return {s: StagePlan(args.batch if args.batch_given else plan.batch, None if args.eager else plan.compile_mode)
            for s, plan in plans.items()}


def timed(fn, warmup: int, iters: int, device) -> tuple[float, object]:
    """Seconds per call of fn after `warmup` untimed calls, and the last call's result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / iters, out


@dataclasses.dataclass
class Bench:
    """Everything the stages share: both models, the data and the options."""

    args: argparse.Namespace
    dev: torch.device
    ours: nn.Module
    ref: nn.Module
    fmt: torch.memory_format  # ours' memory format
    bf16: bool  # ours' precision
    images_u8: np.ndarray  # (N, 32, 32, 3) uint8, what the reference DataLoader reads
    labels_np: np.ndarray
    images: torch.Tensor  # the same images as floats on the device, what ours reads
    labels: torch.Tensor
    tf32_default: bool
    train_cfg: TrainConfig  # ours' training recipe (the paper's, or the profile's)
    adv: AdversarialConfig  # adversarial training's attack, both sides
    eval_steps: int
    eval_factor: float

    def ref_mode(self):
        torch.backends.cudnn.allow_tf32 = self.tf32_default and not self.args.strict_fp32
        torch.backends.cudnn.benchmark = False  # the robustness library leaves it off

    def ours_mode(self):
        torch.backends.cudnn.allow_tf32 = self.tf32_default
        torch.backends.cudnn.benchmark = True  # as notbugs.train.pick_device sets it for the pipeline


# Each stage returns (units per iteration, s/iter ours, s/iter ref, forward passes per iteration ours,
# forward passes per iteration ref), in forward-pass equivalents per the FLOP rule of the header.


def stage_match(b: Bench, check: dict):
    B, S, a = b.args.batch, b.args.attack_steps, b.args
    x, start = b.images[:B], b.images[B:2 * B]  # another image as the start, as for D_R
    xo, so = x.contiguous(memory_format=b.fmt), start.contiguous(memory_format=b.fmt)
    fake = b.ours.arch in FAKE_RELU_ARCHS
    b.ours_mode()
    with frozen(b.ours):
        s_ours, (z_ours, _) = timed(lambda: match_representation(b.ours, so, xo, S, MATCH_STEP, bf16=b.bf16,
                                                                          use_best=True, fake_relu=fake),
                                    a.warmup, a.steps, b.dev)
    b.ref_mode()
    b.ref.eval()
    s_ref, z_ref = timed(lambda: ref_match(b.ref, start, x, S), a.warmup, a.steps, b.dev)
    # Show it, don't assume: the same objective from the same batch should land in the same place.
    with torch.no_grad():
        target = b.ref.features(x)
        tnorm = target.norm(dim=1)
        d0, d_o, d_r = ((b.ref.features(z.float().contiguous()) - target).norm(dim=1) for z in (start, z_ours, z_ref))
    check.update({
        "steps": S, "step_size": MATCH_STEP, "batch": B, "fake_relu": fake, "measured_with": "reference model, fp32",
        "start_distance": d0.mean().item(), "ours_final_distance": d_o.mean().item(),
        "reference_final_distance": d_r.mean().item(), "start_relative": (d0 / tnorm).mean().item(),
        "ours_final_relative": (d_o / tnorm).mean().item(), "reference_final_relative": (d_r / tnorm).mean().item(),
        "mean_abs_pixel_difference": (z_ours.float() - z_ref).abs().mean().item(),
    })
    return B * S, s_ours, s_ref, B * (2 * S + 3), B * (3 * S + 4)


def stage_pgd(b: Bench, check: dict):
    B, S, a = b.args.batch, b.args.attack_steps, b.args
    x = b.images[:B]
    xo = x.contiguous(memory_format=b.fmt)
    t = torch.from_numpy(np.random.default_rng(a.seed).integers(0, 10, B)).to(b.dev)  # D_rand's random targets
    b.ours_mode()
    with frozen(b.ours):
        # what building a D_rand / D_det batch runs: the attack, then its success check
        s_ours, _ = timed(lambda: targeted_pgd_batch(b.ours, xo, t, PGD_EPS, S, PGD_STEP, True, b.bf16), a.warmup,
                          a.steps, b.dev)
    b.ref_mode()
    b.ref.eval()
    s_ref, _ = timed(lambda: ref_make_adv(b.ref, x, t, constraint="2", eps=PGD_EPS, step_size=PGD_STEP, iterations=S,
                                          targeted=True), a.warmup, a.steps, b.dev)
    return B * S, s_ours, s_ref, B * (2 * S + 2), B * (2 * S + 2)


def _train_stage(b: Bench, adv: bool):
    B, a = b.args.batch, b.args
    cfg = dataclasses.replace(b.train_cfg, epochs=1, batch_size=B)
    adversarial = b.adv if adv else None
    b.ours_mode()
    with quiet():
        if a.warmup:  # a separate short run: train() has no "untimed steps" option
            train(b.ours, b.images[:a.warmup * B], b.labels[:a.warmup * B], cfg, a.seed, b.dev, adversarial=adversarial,
                  bf16=b.bf16)
        sync(b.dev)
        t0 = time.perf_counter()
        train(b.ours, b.images[:a.steps * B], b.labels[:a.steps * B], cfg, a.seed + 1, b.dev, adversarial=adversarial,
              bf16=b.bf16)
        sync(b.dev)
        s_ours = (time.perf_counter() - t0) / a.steps

    b.ref_mode()
    n = (a.warmup + a.steps) * B
    loader = torch.utils.data.DataLoader(RefDataset(b.images_u8[:n], b.labels_np[:n]), batch_size=B, shuffle=True,
                                         num_workers=a.workers, pin_memory=b.dev.type == "cuda")
    b.ref.train()
    opt = torch.optim.SGD(b.ref.parameters(), PAPER_TRAIN.lr, momentum=PAPER_TRAIN.momentum,
                          weight_decay=PAPER_TRAIN.weight_decay)
    batches = iter(loader)  # worker start-up happens before the timed steps, as in a long epoch
    for _ in range(a.warmup):
        ref_train_step(b.ref, opt, *next(batches), b.dev, adversarial)
    # The workers prefetched up to prefetch_factor (2) batches each while the warm-up ran: take them
    # untimed, so that the timed steps wait for the per-image transforms as in an epoch's steady state.
    for _ in range(prefetched(a.workers)):
        next(batches)
    sync(b.dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        ref_train_step(b.ref, opt, *next(batches), b.dev, adversarial)
    sync(b.dev)
    s_ref = (time.perf_counter() - t0) / a.steps
    del batches, loader
    if adv:  # A attack steps (forward + input backward), use_best's extra forward, training step
        ours_fwd = 2 * b.adv.steps + int(b.adv.use_best) + 3
        return B, s_ours, s_ref, B * ours_fwd, B * (2 * b.adv.steps + 1 + 3)
    return B, s_ours, s_ref, B * 3, B * 3


def prefetched(workers: int) -> int:
    """Batches a DataLoader's workers hold ready at most (torch's default prefetch_factor, 2, each)."""
    return 2 * workers


def stage_train(b: Bench, check: dict):
    return _train_stage(b, adv=False)


def stage_adv_train(b: Bench, check: dict):
    return _train_stage(b, adv=True)


def stage_eval(b: Bench, check: dict):
    B, a = b.args.batch, b.args
    x, y = b.images[:B], b.labels[:B]
    xo = x.contiguous(memory_format=b.fmt)
    b.ours_mode()
    with quiet():
        s_ours, _ = timed(lambda: robust_correct(b.ours, xo, y, EVAL_EPS, b.eval_steps, b.eval_factor, 1, B, b.dev,
                                                 bf16=b.bf16, use_best=True), a.warmup, a.steps, b.dev)
    b.ref_mode()
    b.ref.eval()
    s_ref, _ = timed(lambda: ref_eval_batch(b.ref, x, y, b.eval_steps, b.eval_factor), a.warmup, a.steps, b.dev)
    return B, s_ours, s_ref, B * (2 * b.eval_steps + 2), B * (2 * b.eval_steps + 2)


STAGE_FUNCS = {"match": stage_match, "pgd": stage_pgd, "train": stage_train, "adv_train": stage_adv_train,
               "eval": stage_eval}


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev, gpu = args.device, args.device.type == "cuda"
    notes: list[str] = []
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # One-time process costs out of every timed region: the first torch.optim optimizer imports
    # torch._dynamo (over a second on a small CPU), and train() builds its optimizer inside our timing.
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)

    # random weights, attacked in eval mode: the He init keeps every network's response O(1) (notbugs.models),
    # so that the matching check compares distances well above rounding; the speed does not depend on it
    ours = make_model(args.arch, 10, args.width, init="he").to(dev)
    ref = copy.deepcopy(ours)  # the reference's model: fp32, default memory format, eager
    init = [t.detach().clone() for t in ours.state_dict().values()]
    fwd = forward_flops_per_image(ref, dev)
    channels_last = not args.no_channels_last
    bf16 = use_bf16(args.precision, dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours.to(memory_format=fmt)
    plans = {stage: plan for stage, plan in stage_plans(args).items() if stage in args.stages}
    compiled_models: dict[tuple, tuple[nn.Module, bool]] = {}

    def model_for(stage: str) -> tuple[nn.Module, bool]:
        """Ours for this stage: the eager model, or a copy compiled at the stage's batch and mode."""
        plan = plans[stage]
        if plan.compile_mode is None:
            return ours, False
        key = (plan.compile_mode, plan.batch, stage == "match" and ours.arch in FAKE_RELU_ARCHS)
        if key not in compiled_models:
            model = copy.deepcopy(ours)
            mode = None if plan.compile_mode == "default" else plan.compile_mode
            what = "--compile" if args.profile is None else f"{stage}: compile ({plan.compile_mode})"
            ok = maybe_compile(model, dev, plan.batch, fmt, bf16, notes, mode, fake_relu=key[2], what=what)
            compiled_models[key] = (model, True) if ok else (ours, False)
        return compiled_models[key]

    prof = args.profile_params
    adv = prof.adversarial if prof else ADV
    if adv.method != "pgd":
        notes.append(f"adversarial training method {adv.method}: the reference side runs PGD's {adv.steps} steps")

    # Random images: their content does not change the speed. Enough for every stage's warm-up, prefetch
    # drain and timed steps, and two batches for matching (target and start).
    n = max(max((args.warmup + args.steps + (prefetched(args.workers) if s in ("train", "adv_train") else 0))
                * plan.batch, 2 * plan.batch) for s, plan in plans.items())
    images_u8 = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels_np = rng.integers(0, 10, n).astype(np.int64)
    images = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(255).contiguous().to(dev)
    b = Bench(args, dev, ours, ref, fmt, bf16, images_u8, labels_np, images, torch.from_numpy(labels_np).to(dev),
              torch.backends.cudnn.allow_tf32, train_cfg=prof.train if prof else PAPER_TRAIN, adv=adv,
              eval_steps=prof.evaluate.steps if prof else EVAL_STEPS,
              eval_factor=prof.evaluate.step_factor if prof else EVAL_FACTOR)

    peak = peak_bf16_tflops(dev)
    results: dict[str, dict] = {}
    check: dict = {}
    out = {
        "command": shlex.join([sys.executable, *sys.argv] if argv is None else ["bench/bench.py", *argv]),
        "device": torch.cuda.get_device_name(dev) if gpu else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "arch": args.arch, "width": args.width, "profile": args.profile,
        "batch": args.batch if args.profile is None else None,  # a profile's batches are per stage
        "steps": args.steps, "warmup": args.warmup, "attack_steps": args.attack_steps, "ref_workers": args.workers,
        "channels_last": channels_last, "ours_precision": "bf16 autocast" if bf16 else "fp32",
        "reference_precision": "fp32" if not gpu else
        "fp32, TF32 convolutions off" if args.strict_fp32 or not b.tf32_default else
        "fp32 (cuDNN may use TF32 for convolutions: PyTorch default)",
        "forward_gflops_per_image": fwd / 1e9, "peak_bf16_tflops": peak,
        "stages": results, "match_check": None, "notes": notes, "complete": False,
    }
    for stage in args.stages:
        model, compiled = model_for(stage)
        reset(model, init)  # every stage starts from the same weights for both
        reset(ref, init)
        stage_bench = dataclasses.replace(b, ours=model, args=argparse.Namespace(**{**vars(args),
                                                                                   "batch": plans[stage].batch}))
        units, s_ours, s_ref, fwd_ours, fwd_ref = STAGE_FUNCS[stage](stage_bench, check)
        b.ours_mode()
        r = {"unit": UNITS[stage], "ours": units / s_ours, "reference": units / s_ref, "ratio": s_ref / s_ours,
             "ours_s_per_iter": s_ours, "reference_s_per_iter": s_ref,
             "ours_tflops": fwd_ours * fwd / s_ours / 1e12, "reference_tflops": fwd_ref * fwd / s_ref / 1e12,
             "batch": plans[stage].batch, "compiled": compiled,
             "compile_mode": plans[stage].compile_mode if compiled else None}  # a fallback ran eager
        r["ours_pct_peak"] = 100 * r["ours_tflops"] / peak if peak else None
        results[stage] = r
        # each stage's figures as soon as it is done: a run cut short (a device call's limit, `timeout`)
        # keeps the stages it finished, in its log and in its JSON
        print(f"done: {stage_row(stage, r)}", flush=True)
        _summarise(out, check)
        if args.json:  # replaced whole: a reader never sees half of it
            write_json(args.json, out)
    if args.warmup == 0 and any(r["compiled"] for r in results.values()):
        notes.append("compiled with --warmup 0: ours' timed iterations include compilation")
    _summarise(out, check)
    out["complete"] = True
    print_report(out)
    if args.json:
        write_json(args.json, out)
    return out


def _summarise(out: dict, check: dict) -> None:
    """The run-level fields that depend on the stages measured so far."""
    results = out["stages"]
    modes = {r["compile_mode"] for r in results.values() if r["compiled"]}
    out["compiled"] = any(r["compiled"] for r in results.values())
    out["compile_mode"] = modes.pop() if len(modes) == 1 else None  # else per stage in `stages`
    out["match_check"] = check or None


def stage_row(name: str, r: dict) -> str:
    pct = f"{r['ours_pct_peak']:.1f}" if r["ours_pct_peak"] is not None else "n/a"
    how = r["compile_mode"] if r["compiled"] else "eager"
    return (f"{name:<10} {r['unit']:<14} {r['batch']:>6} {how:<16} {r['ours']:>12,.1f} {r['reference']:>12,.1f} "
            f"{r['ratio']:>6.2f}x {r['ours_tflops']:>9.4f} {pct:>7} {r['reference_tflops']:>11.4f}")


def print_report(out: dict) -> None:
    print(f"command: {out['command']}")
    setting = f"profile {out['profile']} (batch per stage)" if out.get("profile") else f"batch {out['batch']}"
    print(f"device: {out['device']} | torch {out['torch']} | {out['arch']} width {out['width']} | "
          f"{setting} | {out['steps']} timed + {out['warmup']} warm-up iterations per stage | "
          f"attack steps {out['attack_steps']}")
    mode = f" (mode {out['compile_mode']})" if out.get("compile_mode") else ""
    print(f"ours: {out['ours_precision']}, channels_last {out['channels_last']}, compiled {out['compiled']}{mode} | "
          f"reference: {out['reference_precision']}, DataLoader workers {out['ref_workers']} | "
          f"forward {out['forward_gflops_per_image']:.4f} GFLOP/image")
    head = (f"{'stage':<10} {'unit':<14} {'batch':>6} {'ours compiled':<16} {'ours':>12} {'reference':>12} "
            f"{'ratio':>7} {'TFLOP/s':>9} {'% peak':>7} {'ref TFLOP/s':>11}")
    print(head)
    print("-" * len(head))
    for name, r in out["stages"].items():
        print(stage_row(name, r))
    m = out["match_check"]
    if m:
        print(f"representation matching, {m['steps']} steps of {m['step_size']} from the same {m['batch']} start "
              f"images (distance ||g(z) - g(x)|| by the fp32 reference model, mean; relative to ||g(x)||):")
        print(f"  start {m['start_distance']:.4f} ({m['start_relative']:.4f}) -> ours {m['ours_final_distance']:.4f} "
              f"({m['ours_final_relative']:.4f}), reference {m['reference_final_distance']:.4f} "
              f"({m['reference_final_relative']:.4f}); mean |z_ours - z_ref| {m['mean_abs_pixel_difference']:.2e}")
    for note in out["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
