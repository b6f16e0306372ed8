"""Per-operation times of one eager step, against each operation's roofline bound (bench/roofline.py).

bench.py measured ResNet-50's eager attack step on an H100 at 36% of its eager roofline bound (the
compiled one at 54% of its own): this script says which operations of an eager step lose the time. It runs the very step
roofline.py counts (same code, on a real device), times every ATen operation it dispatches (CUDA
events around each operation's kernels on a GPU, the wall clock on a CPU), and prints per operation
kind: calls per step, measured milliseconds per step, the bound's milliseconds for the same calls
(max of FLOPs / peak and bytes / bandwidth) and the share of the bound reached.

Also the step timed whole without the per-operation timing: on a GPU the gap between that and
the sum of the operations' times is time the device waits for the host (launches). The timing
itself slows the host (a Python hook per operation), not the kernels it brackets.

    python bench/op_times.py --arch resnet50 --batch 512 --card h100-sxm --json out.json   # on the GPU
    python bench/op_times.py --arch resnet9 --width 0.125 --batch 8 --steps 1 --warmup 0    # CPU smoke test

Eager only: torch.compile fuses operations into kernels this hook does not see. It needs torch only
(and notbugs's models).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (bench/roofline.py, a sibling script)


class OpTimer(roofline.OpRecorder):
    """An OpRecorder that also times each operation; `times` (seconds) runs parallel to `ops`."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.cuda = device.type == "cuda"
        self.marks: list = []  # per recorded operation: (start, end) events on CUDA, seconds on the CPU

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = func(*args, **kwargs)
            end.record()
            mark = (start, end)
        else:
            t0 = time.perf_counter()
            out = func(*args, **kwargs)
            mark = time.perf_counter() - t0
        op = roofline.op_cost(func, args, kwargs, out)
        if op is not None:
            self.ops.append(op)
            self.marks.append(mark)
        return out

    def times(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1e3 for s, e in self.marks]
        return list(self.marks)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(model, stage: str, batch: int, steps: int, warmup: int, card: str | None) -> dict:
    device = next(model.parameters()).device
    for _ in range(warmup):  # cuDNN's autotuning and the allocator settle here
        roofline.run_step(model, stage, batch)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):  # the step whole, with no hook per operation
        roofline.run_step(model, stage, batch, recorder=contextlib.nullcontext())
    sync(device)
    step_s = (time.perf_counter() - t0) / steps

    per_kind: dict[str, dict] = collections.defaultdict(lambda: {"calls": 0, "measured_s": 0.0, "bound_s": 0.0,
                                                                 "bytes": 0.0, "flops": 0.0})
    peak, bandwidth = roofline.CARDS[card] if card else (None, None)
    for _ in range(steps):
        timer = OpTimer(device)
        roofline.run_step(model, stage, batch, recorder=timer)
        for op, seconds in zip(timer.ops, timer.times()):
            k = per_kind[op.name]
            k["calls"] += 1
            k["measured_s"] += seconds / steps
            k["bytes"] += op.bytes / steps
            k["flops"] += op.flops / steps
            if card:
                k["bound_s"] += max(op.flops / peak, op.bytes / bandwidth) / steps
    for k in per_kind.values():
        k["calls"] //= steps
    ops_s = sum(k["measured_s"] for k in per_kind.values())
    return {"stage": stage, "unit": "images/s" if stage == "train" else "image-steps/s",
            "step_s": step_s, "rate": batch / step_s, "ops_s": ops_s,
            "bound_s": sum(k["bound_s"] for k in per_kind.values()) if card else None,
            "kinds": dict(sorted(per_kind.items(), key=lambda kv: -kv[1]["measured_s"]))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--stages", default="match,train")
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--card", default=None, help=f"the card, for the bounds: {', '.join(roofline.CARDS)} "
                   "(default: from the GPU's name; none on a CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.stages = args.stages.split(",")
    for stage in args.stages:
        if stage not in roofline.STAGES:
            p.error(f"unknown stage {stage!r}; known: {', '.join(roofline.STAGES)}")
    if args.card is not None and args.card not in roofline.CARDS:
        p.error(f"unknown card {args.card!r}; known: {', '.join(roofline.CARDS)}")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    card = args.card
    if card is None and device.type == "cuda":
        card = roofline.card_of(torch.cuda.get_device_name(device))
    torch.backends.cudnn.benchmark = True  # as the library's training does
    model = roofline.bf16_model(args.arch, args.width, device=str(device))
    out = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "card": card, "torch": torch.__version__, "arch": args.arch, "width": args.width,
           "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "stages": {}}
    print(f"device {out['device']} (bounds: {card or 'none'}) | torch {torch.__version__} | {args.arch} width "
          f"{args.width} | batch {args.batch} | bf16 weights, channels_last, eager | {args.steps} timed steps")
    for stage in args.stages:
        r = time_stage(model, stage, args.batch, args.steps, args.warmup, card)
        out["stages"][stage] = r
        print(f"\n{stage}: {1e3 * r['step_s']:.2f} ms a step whole ({r['rate']:,.0f} {r['unit']}); "
              f"its operations {1e3 * r['ops_s']:.2f} ms" + (f", their bound {1e3 * r['bound_s']:.2f} ms "
              f"({100 * r['bound_s'] / r['ops_s']:.0f}% reached)" if card else ""))
        print(f"  {'operation':<34} {'calls':>5} {'ms':>8} {'share':>6} {'bound ms':>9} {'reached':>8} {'GB/s':>8}")
        for name, k in r["kinds"].items():
            reached = f"{100 * k['bound_s'] / k['measured_s']:7.0f}%" if card and k["measured_s"] > 0 else f"{'-':>8}"
            bound = f"{1e3 * k['bound_s']:9.3f}" if card else f"{'-':>9}"
            gbs = k["bytes"] / k["measured_s"] / 1e9 if k["measured_s"] > 0 else 0.0
            share = 100 * k["measured_s"] / r["ops_s"]
            ms = 1e3 * k["measured_s"]
            print(f"  {name:<34} {k['calls']:>5} {ms:8.3f} {share:5.1f}% {bound} {reached} {gbs:8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
