"""Roofline bounds: how fast can one step of each costly stage run on a card, at best?

Issue 4 asks for 35% of the card's bf16 peak on the attack steps and 20,000 images/s of ResNet-50
training on an H100; bench/bench.py measured 14.8% and 12,839 images/s. Both depend on how much of
a step is bound by memory rather than by the tensor cores: a CIFAR network at 32x32 runs many
convolutions with few channels over large activations (ResNet-50's 1x1 convolutions of 64 channels
do about 51 FLOPs per byte moved, where an H100 needs about 295 to be compute-bound), and every
BatchNorm, ReLU and residual add moves a whole activation for no tensor-core work.

This script runs one step of a stage on the `meta` device (shapes only, no arithmetic, so it runs
anywhere in seconds), records every ATen operation the step dispatches with its FLOPs (convolutions
and matrix products; elementwise work is negligible next to them) and the bytes it must read and
write at least, and gives two bounds per card:

- `eager`: one kernel per operation, as eager PyTorch runs the step: the sum over operations of
  max(FLOPs / peak, bytes / bandwidth), plus autocast's per-forward cast of the fp32 weights to
  bf16 and, for training, the SGD update (fp32 weights, gradients and momentum).
- `ideal`: perfect fusion: only the convolutions and matrix products, each reading its inputs and
  weights and writing its output once; every BatchNorm, activation, add and loss is free, folded
  into their prologues and epilogues, and the weights are already bf16. No implementation that
  keeps activations in device memory between convolutions can beat it.

- `compiled` (with `--inductor`): the convolutions as in `ideal`, plus every byte the kernels that
  torch.compile's Inductor fuses around them move, as Inductor counts them (`inductor_bytes`), plus
  the weight traffic of `eager`. Inductor compiles the network here, on the CPU backend: its fusion
  is decided by the same scheduler as on a GPU, but not always identically, so this is an
  indication for a GPU, not a measurement. `eager` charges each operation one pass; Inductor's counts
  are of its real kernels, so where a fused kernel must pass over an activation more than once (a
  train-mode BatchNorm's statistics before its normalisation) `compiled` can come near `eager`.

All three are bounds, not predictions: they assume every kernel runs at the card's peak FLOP rate or
at its full memory bandwidth, whichever binds, with no launch overhead. A measured rate divided by a
bound is the share of that bound reached.

The step is the pipeline's (notbugs.attacks, notbugs.train), rebuilt from the same operations with
the network in bf16 (autocast's compute dtype; autocast itself has no meta backend):
- `match`: representation matching, one forward of the backbone to the representation, the l2
  distance to the target, one backward to the image (eval mode, frozen weights), the step.
- `pgd`: l2 PGD, one forward to the logits, cross-entropy, one backward to the image, the step.
- `train`: one SGD step, train-mode forward and cross-entropy, backward to every weight. The GPU
  augmentation (crop and flip) is not counted.

    python bench/roofline.py                                    # ResNet-50 and ResNet-18, batch 512, H100 and H200
    python bench/roofline.py --archs resnet50 --batch 128 --cards h100-sxm
    python bench/roofline.py --measured bench/measured/h100-2026-11-26/*.json   # measured rates against the bounds
    python bench/roofline.py --layers --archs resnet50 --stages match         # where the time goes, per operation kind
    python bench/roofline.py --profile paper                                  # a profile's whole run at the bounds
    python bench/roofline.py --inductor --measured bench/measured/h*/bench_*.json   # and the compiled bound (minutes)

`--profile` adds up a profile's work from params.yaml (needs pyyaml): the two source trainings (the
adversarial one as its attack steps plus the training step), the four constructions, the four
trainings on them and the robust evaluation of the six models, each at the bound of its network,
stage and batch size; then, apart, Figure 3's trainings (each architecture on D and on D_det) and
its transfer examples. Left out: data loading, checkpoints, compilation, clean evaluations,
use_best's extra forward: the time is a floor, not an estimate.

It needs torch only (and notbugs's models; `--inductor` a C++ compiler, as torch.compile on a CPU does).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import logging
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

try:  # notbugs.config imports yaml at module level; a GPU machine may lack pyyaml
    import yaml  # noqa: F401
except ImportError:
    sys.modules["yaml"] = types.ModuleType("yaml")

from notbugs.config import construct_params  # noqa: E402
from notbugs.models import make_model  # noqa: E402
from notbugs.sets import SETS  # noqa: E402

# Dense bf16 tensor-core peak (FLOP/s) and memory bandwidth (bytes/s), from the vendors' data sheets.
# bench.py reads its peaks from here too, so that the two scripts cannot disagree about a card.
CARDS = {
    "h100-sxm": (989e12, 3.35e12),   # H100 80GB HBM3 (SXM5): the card bench.py ran on
    "h200": (989e12, 4.8e12),        # same tensor cores as the H100 SXM, HBM3e
    "gh200": (989e12, 4.0e12),       # GH200 480GB (96 GB HBM3)
    "gh200-144gb": (989e12, 4.9e12),  # GH200 with 144 GB HBM3e
    "h100-nvl": (835e12, 3.9e12),
    "h100-pcie": (756e12, 2.0e12),
    "a100-80gb": (312e12, 2.039e12),
    "a100-40gb": (312e12, 1.555e12),
}


def card_of(device_name: str) -> str | None:
    """The CARDS key for a CUDA device name (torch.cuda.get_device_name, bench.py's JSON "device");
    None for a CPU or a card not listed, which then gets no bound rather than a wrong one."""
    if "GH200" in device_name:
        return "gh200-144gb" if "144" in device_name else "gh200"
    if "H200" in device_name:
        return "h200"
    if "H100" in device_name:
        if "NVL" in device_name:
            return "h100-nvl"
        return "h100-pcie" if "PCIe" in device_name else "h100-sxm"
    if "A100" in device_name:
        return "a100-40gb" if "40GB" in device_name else "a100-80gb"
    return None


STAGES = ("match", "pgd", "train")
FLOP_OPS = ("convolution", "convolution_backward", "mm", "addmm")
BF16, FP32 = 2, 4  # bytes per element


@dataclasses.dataclass
class Op:
    name: str      # the ATen overload packet, e.g. "convolution_backward"
    flops: float
    bytes: float
    unread: float = 0.0  # bytes of tensor arguments the operation is passed but need not read


def tensor_bytes(t: torch.Tensor) -> float:
    """Bytes a kernel must touch to read or write `t` once: a broadcast (stride 0) dimension counts once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return float(n * t.element_size())


def conv_flops(out_shape, weight: torch.Tensor) -> float:
    """2 x multiply-adds of a convolution producing `out_shape` (N, C_out, H, W) with `weight`."""
    return 2.0 * math.prod(out_shape) * math.prod(weight.shape[1:])


def op_cost(func, args: tuple, kwargs: dict, out) -> Op | None:
    """FLOPs and the least bytes one operation moves; None for views and allocations, which move none."""
    name = func._overloadpacket.__name__
    schema = func._schema
    if schema.returns and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return None  # a view: no data moves
    if name.startswith("empty") or name in ("detach", "alias", "lift_fresh"):
        return None
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    written = sum(tensor_bytes(t) for t in outs)
    if name == "convolution_backward":
        # args: grad_out, input, weight, ..., output_mask. grad_input reads grad_out and the weight;
        # grad_weight reads grad_out and the input. Each costs the forward's FLOPs.
        grad_out, inp, weight, mask = args[0], args[1], args[2], args[-1]
        flops = conv_flops(grad_out.shape, weight) * (int(mask[0]) + int(mask[1]))
        read = tensor_bytes(grad_out) + (tensor_bytes(weight) if mask[0] else 0.0)
        read += tensor_bytes(inp) if mask[1] else 0.0
        unread = (0.0 if mask[0] else tensor_bytes(weight)) + (0.0 if mask[1] else tensor_bytes(inp))
        return Op(name, flops, read + written, unread)
    if name == "native_batch_norm_backward" and not args[7]:
        # eval mode: grad_input = grad_out * weight * invstd; the input is not read (weight and the
        # running variance are per channel)
        grad_out, weight = args[0], args[2]
        return Op(name, 0.0, tensor_bytes(grad_out) + tensor_bytes(weight) * 2 + written)
    leaves, _ = tree_flatten((args, kwargs))  # tensors inside lists too (torch.cat's, DenseNet's)
    inputs = {id(t): t for t in leaves if isinstance(t, torch.Tensor)}
    read = sum(tensor_bytes(t) for t in inputs.values())
    flops = 0.0
    if name == "convolution":
        flops = conv_flops(outs[0].shape, args[1])
    elif name == "mm":
        (m, k), n = args[0].shape, args[1].shape[1]
        flops = 2.0 * m * k * n
    elif name == "addmm":
        (m, k), n = args[1].shape, args[2].shape[1]
        flops = 2.0 * m * k * n
    return Op(name, flops, read + written)


class OpRecorder(TorchDispatchMode):
    """Records the cost of every operation dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = op_cost(func, args, kwargs, out)
        if op is not None:
            self.ops.append(op)
        return out


def bf16_model(arch: str, width: float, device: str = "meta") -> torch.nn.Module:
    """The network with its backbone and head in bf16 and the input normalisation in fp32 (as under
    autocast, which casts the normalised image to bf16 at the first convolution); on `meta` by default."""
    with torch.device(device):
        model = make_model(arch, width=width)
    model.backbone.to(torch.bfloat16)
    model.head.to(torch.bfloat16)
    return model.to(memory_format=torch.channels_last)


def run_step(model, stage: str, batch: int, recorder=None) -> list[Op]:
    """One step of `stage` at `batch` images (see the module docstring) on the model's device, inside
    `recorder` (a new OpRecorder by default; contextlib.nullcontext() runs it plain); returns the
    operations recorded."""
    device = next(model.parameters()).device
    x = torch.rand(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    target = torch.rand(batch, model.repr_dim, device=device)
    train = stage == "train"
    model.train(train)
    for p in model.parameters():
        p.requires_grad_(train)
        p.grad = None  # as the optimizer's zero_grad(set_to_none=True): no accumulation into old gradients
    rec = recorder or OpRecorder()
    with rec:
        if train:
            logits = model.head(model.backbone(model.normalize(x).to(torch.bfloat16))) * model.logit_scale
            F.cross_entropy(logits.float(), y).backward()
        else:
            z = x.clone().requires_grad_(True)
            feats = model.backbone(model.normalize(z).to(torch.bfloat16))
            if stage == "match":
                loss = (feats.float() - target).flatten(1).norm(dim=1)
            else:
                loss = F.cross_entropy((model.head(feats) * model.logit_scale).float(), y, reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), z)
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            (z.detach() - 0.1 * step).clamp(0, 1)
    return rec.ops if isinstance(rec, OpRecorder) else []


@functools.cache  # a compile takes tens of seconds; the same network is asked for again
def inductor_bytes(arch: str, width: float, stage: str, batch: int) -> float:
    """Bytes a step's network (backbone, and the head for `pgd` and `train`) moves forward and backward
    when torch.compile's Inductor fuses it, as Inductor itself counts them for the graphs it compiles
    (torch._inductor.metrics, which it fills only while its metrics logger is on). Compiled here for
    the CPU backend, whose fusion decisions are Inductor's scheduler's, as on a GPU, but not always the
    same: an indication of what compiling removes, not a measurement of the GPU's kernels."""
    import torch._dynamo
    import torch._functorch.config
    import torch._inductor.config
    import torch._inductor.metrics as metrics

    model = bf16_model(arch, width, device="cpu")
    train = stage == "train"
    model.train(train)
    for p in model.parameters():
        p.requires_grad_(train)
    net = model.backbone if stage == "match" else torch.nn.Sequential(model.backbone, model.head)
    x = model.normalize(torch.rand(batch, 3, 32, 32)).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    metrics_log = logging.getLogger("torch._inductor.compile_fx.__inductor_metrics")
    level, propagate = metrics_log.level, metrics_log.propagate
    metrics_log.setLevel(logging.INFO)
    metrics_log.propagate = False  # counted, not printed
    metrics_log.addHandler(null := logging.NullHandler())
    try:
        # no cache: a graph loaded from Inductor's caches is not counted
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            torch._dynamo.reset()
            metrics.reset()
            compiled = torch.compile(net)
            if train:
                compiled(x).float().sum().backward()
            else:
                z = x.detach().requires_grad_(True)
                torch.autograd.grad(compiled(z).float().sum(), z)
            counted = metrics.num_bytes_accessed
    finally:
        metrics_log.removeHandler(null)
        metrics_log.setLevel(level)
        metrics_log.propagate = propagate
        torch._dynamo.reset()
    if counted <= 0:
        raise RuntimeError("Inductor counted no bytes: this torch does not fill torch._inductor.metrics")
    return counted / batch


def weight_traffic(model, stage: str) -> float:
    """Bytes per step the recorded ops leave out: autocast's fp32 -> bf16 weight casts (read 4, write 2
    per weight), and in training the SGD update with weight decay and momentum (fp32: read weight,
    gradient, momentum, write weight, momentum) and the zeroing of the gradients."""
    n = sum(p.numel() for p in model.parameters())
    cast = n * (FP32 + BF16)
    return cast + (n * FP32 * 6 if stage == "train" else 0.0)


def bound_seconds(ops: list[Op], peak: float, bandwidth: float, extra_bytes: float, ideal: bool) -> float:
    kept = [op for op in ops if op.name in FLOP_OPS] if ideal else ops
    seconds = sum(max(op.flops / peak, op.bytes / bandwidth) for op in kept)
    return seconds + (0.0 if ideal else extra_bytes / bandwidth)


def compiled_bytes(arch: str, width: float, stage: str, batch: int, ops: list[Op]) -> float:
    """Bytes of the compiled step's network at `batch` (see `inductor_bytes`), from Inductor's counts at
    batches 4 and 8 (exactly linear in the batch: a fixed part, the weights, and a part per image; a CPU
    runs a small batch in seconds), less what Inductor charges a convolution's backward for arguments
    it need not read (its input, where only the input gradient is computed), counted on `ops`."""
    at4, at8 = (inductor_bytes(arch, width, stage, b) * b for b in (4, 8))
    per_image = (at8 - at4) / 4
    return (at4 - 4 * per_image) + per_image * batch - sum(op.unread for op in ops)


def analyse(arch: str, width: float, stage: str, batch: int, cards: list[str], inductor: bool = False) -> dict:
    """FLOPs, bytes and the bounds of one step per card; with `inductor`, also the `compiled` bound:
    the convolutions as in `ideal`, and everything else Inductor's fused kernels move (compiled on the
    CPU, tens of seconds), plus the weight traffic of `eager`."""
    model = bf16_model(arch, width)
    ops = run_step(model, stage, batch)
    extra = weight_traffic(model, stage)
    flops = sum(op.flops for op in ops)
    conv_bytes = sum(op.bytes for op in ops if op.name in FLOP_OPS)
    row = {
        "arch": arch, "width": width, "stage": stage, "batch": batch,
        "unit": "images/s" if stage == "train" else "image-steps/s",
        "gflop_per_image": flops / batch / 1e9,
        "eager_mb_per_image": (sum(op.bytes for op in ops) + extra) / batch / 1e6,
        "ideal_mb_per_image": conv_bytes / batch / 1e6,
        "kernels": len(ops), "cards": {},
    }
    kinds = ["eager", "ideal"]
    if inductor:
        compiled = compiled_bytes(arch, width, stage, batch, ops)
        row["compiled_mb_per_image"] = (compiled + extra) / batch / 1e6
        kinds.append("compiled")
    for card in cards:
        peak, bandwidth = CARDS[card]
        entry = {}
        for kind in kinds:
            if kind == "compiled":
                seconds = (bound_seconds(ops, peak, bandwidth, 0.0, ideal=True)
                           + (max(compiled - conv_bytes, 0.0) + extra) / bandwidth)
            else:
                seconds = bound_seconds(ops, peak, bandwidth, extra, ideal=kind == "ideal")
            entry[kind] = {"rate": batch / seconds, "pct_peak": 100.0 * flops / seconds / peak}
        row["cards"][card] = entry
    return row


def by_kind(arch: str, width: float, stage: str, batch: int, card: str) -> list[tuple[str, int, float, float]]:
    """(operation, count, eager-bound ms per step, share of the step's FLOPs), largest time first."""
    peak, bandwidth = CARDS[card]
    ops = run_step(bf16_model(arch, width), stage, batch)
    total = sum(op.flops for op in ops) or 1.0
    groups: dict[str, list[Op]] = collections.defaultdict(list)
    for op in ops:
        groups[op.name].append(op)
    rows = [(name, len(g), 1e3 * sum(max(o.flops / peak, o.bytes / bandwidth) for o in g),
             sum(o.flops for o in g) / total) for name, g in groups.items()]
    return sorted(rows, key=lambda r: -r[2])


def profile_work(params) -> list[dict]:
    """A profile's work, piece by piece: what, arch, width, stage, batch, amount (images or image-steps),
    and whether it is Figure 3's (see the docstring)."""
    p = params.profile
    n_train = p.subset.train or 50_000
    n_test = p.subset.test or 10_000
    work = []

    def add(what, stage, batch, amount, arch=p.arch, width=p.width, figure3=False):
        work.append({"what": what, "arch": arch, "width": width, "stage": stage, "batch": batch,
                     "amount": amount, "figure3": figure3})

    for name, cfg in p.source_on.items():
        add(f"source {name}: training", "train", cfg.batch_size, cfg.epochs * n_train)
        if name == "robust":
            add(f"source {name}: {p.adversarial.steps}-step attack", "pgd", cfg.batch_size,
                cfg.epochs * n_train * p.adversarial.steps)
    c = p.construct
    for name, spec in SETS.items():  # a set's kind is its stage here: "match" or "pgd"
        add(f"construct {name}", spec.kind, c.batch_size, n_train * construct_params(p, name).steps)
    for name, cfg in p.train_on.items():
        add(f"train on {name}", "train", cfg.batch_size, cfg.epochs * n_train)
    n_models = len(p.source_on) + len(p.train_on)
    e = p.evaluate
    add(f"evaluate {n_models} models", "pgd", e.batch_size, n_models * n_test * (e.steps * len(e.eps) + 1))
    # Figure 3 (notbugs.stages.transfer_specs): every architecture trained on D and on D_det (the
    # profile's own D_det model is reused), then targeted PGD on the standard source model
    t = p.transfer
    for arch in t.archs:
        std, det = p.source_on["standard"], p.train_on["d_det"]
        add(f"figure 3: {arch} on D", "train", std.batch_size, std.epochs * n_train, arch, t.width, True)
        if not (arch == p.arch and t.width == p.width):
            add(f"figure 3: {arch} on D_det", "train", det.batch_size, det.epochs * n_train, arch, t.width, True)
    # made as D_det's images are (stages.measure_transfer)
    add("figure 3: transfer examples", "pgd", e.batch_size, min(t.n, n_test) * construct_params(p, "d_det").steps,
        figure3=True)
    return work


def project_profile(params, cards: list[str], inductor: bool = False) -> dict:
    """Seconds of each piece of a profile's work at the eager and ideal bounds of each card (and the
    compiled one with `inductor`); totals without Figure 3 (`total_seconds`, issue 4's target) and of
    Figure 3 alone (`figure3_seconds`)."""
    p = params.profile
    kinds = ("eager", "ideal", "compiled") if inductor else ("eager", "ideal")
    rows, bounds = [], {}
    for w in profile_work(params):
        key = (w["arch"], w["width"], w["stage"], w["batch"])
        if key not in bounds:
            bounds[key] = analyse(*key, cards, inductor)["cards"]
        rows.append({**w, "seconds": {card: {kind: w["amount"] / bounds[key][card][kind]["rate"]
                                             for kind in kinds} for card in cards}})

    def total(figure3: bool) -> dict:
        return {card: {kind: sum(r["seconds"][card][kind] for r in rows if r["figure3"] == figure3)
                       for kind in kinds} for card in cards}

    return {"profile": p.name, "arch": p.arch, "width": p.width, "rows": rows,
            "total_seconds": total(False), "figure3_seconds": total(True)}


def print_projection(proj: dict, cards: list[str]) -> None:
    print(f"\nprofile {proj['profile']} ({proj['arch']}, width {proj['width']}) at the bounds (a floor: see "
          "the docstring)")
    kinds = list(proj["total_seconds"][cards[0]])
    head = f"  {'work':<38} {'stage':<6} {'batch':>5} {'amount':>13}"
    head += "".join(f" {card + ' ' + kind:>19}" for card in cards for kind in kinds)
    print(head)
    # minutes for a real profile, seconds where the whole run is shorter than a minute (tiny, cpu)
    unit, scale = ("min", 60.0) if proj["total_seconds"][cards[0]]["eager"] >= 60 else ("s", 1.0)
    totals = [{"what": "total, Figure 2 and Table 1", "seconds": proj["total_seconds"]},
              {"what": "Figure 3", "seconds": proj["figure3_seconds"]}]
    for r in proj["rows"] + totals:
        amount = f"{r['amount']:,}" if "amount" in r else ""
        line = f"  {r['what']:<38} {r.get('stage', ''):<6} {r.get('batch', ''):>5} {amount:>13}"
        for card in cards:
            line += "".join(f" {r['seconds'][card][kind] / scale:>15.1f} {unit:<3}" for kind in kinds)
        print(line)


def measured_rates(paths: list[str]) -> list[dict]:
    """(card, arch, batch, stage, rate, compiled) of bench.py JSON files, for cards this script knows."""
    found = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        if not isinstance(d, dict) or not {"stages", "arch", "width", "batch"} <= d.keys():
            print(f"roofline: {path} is not a bench.py result; skipped")
            continue
        card = card_of(d.get("device", ""))
        if card is None:
            continue
        for stage, s in d["stages"].items():
            if stage in STAGES:
                # per stage since bench.py --profile (each stage at its profile's batch and compile setting)
                found.append({"card": card, "arch": d["arch"], "width": d["width"], "batch": s.get("batch", d["batch"]),
                              "stage": stage, "rate": s["ours"], "compiled": bool(s.get("compiled", d.get("compiled"))),
                              "file": path})
    return found


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet50,resnet18", help="comma-separated notbugs architectures")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--cards", default="h100-sxm,h200", help=f"comma-separated, of: {', '.join(CARDS)}")
    p.add_argument("--measured", nargs="*", default=[], help="bench.py JSON files to set against the bounds")
    p.add_argument("--layers", action="store_true", help="also the eager bound per operation kind (first card)")
    p.add_argument("--inductor", action="store_true",
                   help="also the `compiled` bound: Inductor's fused kernels, compiled on this CPU (tens of seconds "
                        "per network and stage)")
    p.add_argument("--profile", default=None, help="also a profile's whole run at the bounds (reads --params)")
    p.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    args.archs, args.stages, args.cards = (s.split(",") for s in (args.archs, args.stages, args.cards))
    for card in args.cards:
        if card not in CARDS:
            p.error(f"unknown card {card!r}; known: {', '.join(CARDS)}")
    for stage in args.stages:
        if stage not in STAGES:
            p.error(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    if args.profile and not hasattr(sys.modules["yaml"], "safe_load"):
        p.error("--profile reads params.yaml and needs pyyaml, which this Python lacks")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    rows = [analyse(arch, args.width, stage, args.batch, args.cards, args.inductor)
            for arch in args.archs for stage in args.stages]
    kinds = ("eager", "ideal", "compiled") if args.inductor else ("eager", "ideal")
    print(f"roofline bounds, batch {args.batch}, width {args.width}, bf16; cards: "
          + "; ".join(f"{c} {CARDS[c][0] / 1e12:.0f} TFLOP/s, {CARDS[c][1] / 1e12:.2f} TB/s" for c in args.cards))
    head = f"{'arch':<9} {'stage':<6} {'GFLOP/img':>9}" + "".join(f" {'MB/img ' + k:>15}" for k in kinds)
    head += f" {'kernels':>7}" + "".join(f" {card + ' ' + k:>22}" for card in args.cards for k in kinds)
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['arch']:<9} {r['stage']:<6} {r['gflop_per_image']:>9.2f}"
        line += "".join(f" {r[k + '_mb_per_image']:>15.2f}" for k in kinds) + f" {r['kernels']:>7}"
        for card in args.cards:
            for kind in kinds:
                b = r["cards"][card][kind]
                line += f" {b['rate']:>14,.0f} ({b['pct_peak']:>4.1f}%)"
        print(line)
    print("rates: images/s for train, image-steps/s for match and pgd; (% of the bf16 peak at that bound)")
    if args.inductor:
        print("compiled: Inductor's fused kernels as its CPU backend makes them (an indication for a GPU)")

    compared = []
    for m in measured_rates(args.measured):  # each at its own network and batch size
        bounds = analyse(m["arch"], m["width"], m["stage"], m["batch"], [m["card"]],
                         args.inductor and m["compiled"])["cards"][m["card"]]
        for kind in bounds:
            m[f"of_{kind}"] = m["rate"] / bounds[kind]["rate"]
        compared.append(m)
    if compared:
        print("\nmeasured (bench.py) against the bounds:")
        for m in compared:
            of_compiled = f", {100 * m['of_compiled']:5.1f}% of the compiled" if "of_compiled" in m else ""
            print(f"  {m['card']:<9} {m['arch']:<9} {m['stage']:<6} batch {m['batch']:<4} "
                  f"{'compiled' if m['compiled'] else 'eager':<8} "
                  f"{m['rate']:>9,.0f}  = {100 * m['of_eager']:5.1f}% of the eager bound, "
                  f"{100 * m['of_ideal']:5.1f}% of the ideal{of_compiled}  ({m['file']})")

    if args.layers:
        card = args.cards[0]
        for arch in args.archs:
            for stage in args.stages:
                print(f"\n{arch} {stage}, batch {args.batch}, {card}: eager bound per operation kind")
                kinds = by_kind(arch, args.width, stage, args.batch, card)
                step_ms = sum(k[2] for k in kinds)
                for name, count, ms, share in kinds:
                    print(f"  {name:<34} {count:>5} ops {ms:8.3f} ms ({100 * ms / step_ms:4.1f}% of the step) "
                          f"{100 * share:5.1f}% of FLOPs")
    out = {"batch": args.batch, "width": args.width, "cards": {c: CARDS[c] for c in args.cards},
           "rows": rows, "measured": compared}
    if args.profile:
        from notbugs.config import load_params  # here: pyyaml is needed for this option only
        out["projection"] = project_profile(load_params(args.params, args.profile), args.cards, args.inductor)
        print_projection(out["projection"], args.cards)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
