"""What a compiled construction pays before its first shard, and whether its shards then run one graph.

Builds a few shards of one constructed set (`notbugs.construct.build_shard`, the pipeline's code) from
a random model (He init, `notbugs.models`) on random images, after `try_compile` as the construct stage does, and
prints the compile probe's time, each shard's time and how many graphs torch.compile compiled (the
probe's one, and any that the shards add: a forward under torch.no_grad() is another graph, which
the attacks avoid, see `notbugs.attacks.as_in_the_steps`). The first shard should take as long as
the others. Set TORCHINDUCTOR_CACHE_DIR to a new folder for a cold start (a fresh machine).

    python bench/first_shard.py --set d_r --steps 5 --batch 100 --shards 6          # CPU, ~1 minute
    python bench/first_shard.py --set d_r --steps 100 --batch 2500 --shards 3 --arch resnet18 --width 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from notbugs import construct as C  # noqa: E402
from notbugs.attacks import PRECISIONS, use_bf16  # noqa: E402
from notbugs.compiling import try_compile  # noqa: E402
from notbugs.config import construct_params, load_params  # noqa: E402
from notbugs.models import make_model  # noqa: E402
from notbugs.sets import SETS  # noqa: E402


def graphs_compiled() -> int | None:
    try:  # not public API; only a count for this report
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="d_r", choices=tuple(SETS))
    ap.add_argument("--profile", default="fast", help="the params.yaml profile whose step rules to use")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=5, help="matching or PGD steps per image")
    ap.add_argument("--batch", type=int, default=100, help="images per batch; a shard is one batch")
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--no-compile", action="store_true", help="eager (the smoke test)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    bf16 = use_bf16(args.precision, dev)
    torch.manual_seed(0)
    model = make_model(args.arch, 10, args.width, init="he").to(dev).eval().to(memory_format=torch.channels_last)
    n = args.shards * args.batch
    images = torch.rand(n, 3, 32, 32)  # contiguous NCHW, as the construct stage's images (the model is channels_last)
    labels = np.random.default_rng(0).integers(0, 10, n)
    # The set's step rule in the profile (as the construct stage passes it: its construct_on overrides applied),
    # with this run's number of steps.
    kind = SETS[args.set].kind
    own = dataclasses.replace(construct_params(load_params(ROOT / "params.yaml", args.profile).profile, args.set),
                              steps=args.steps)
    recipe = {"name": args.set, "precision": "bf16" if bf16 else "fp32", "batch_size": args.batch,
              kind: dataclasses.asdict(own)}
    fake_relu = kind == "match" and own.fake_relu
    out = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "set": args.set, "arch": args.arch, "width": args.width,
           "profile": args.profile, "steps": args.steps, "batch": args.batch, "precision": recipe["precision"]}
    t = time.perf_counter()
    out["compile_reason"] = "not asked (--no-compile)" if args.no_compile else try_compile(
        model, images[:args.batch].to(dev), bf16=bf16, fake_relu=fake_relu)
    out["compile_s"] = time.perf_counter() - t
    out["graphs_after_probe"] = graphs_compiled()
    assign = C.assignments(args.set, labels, 0)
    shard_s = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.shards):
            a, b = k * args.batch, (k + 1) * args.batch
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            C.build_shard(args.set, model, images, labels, np.arange(n), assign, k, a, b, recipe, "bench",
                          Path(tmp), dev)
            shard_s.append(time.perf_counter() - t)  # build_shard reads its result back: synchronised
    out["shard_s"] = shard_s
    out["graphs_after_shards"] = graphs_compiled()
    rest = sorted(shard_s[1:])
    out["first_shard_extra_s"] = shard_s[0] - rest[len(rest) // 2] if rest else None
    print(f"{args.set}, {args.arch} at width {args.width}, batch {args.batch}, {args.steps} steps, {out['device']}: "
          f"compile probe {out['compile_s']:.1f} s ({out['compile_reason'] or 'compiled'}); shards "
          + ", ".join(f"{s:.2f}" for s in shard_s) + " s; graphs compiled: "
          f"{out['graphs_after_probe']} after the probe, {out['graphs_after_shards']} after the shards")
    if out["first_shard_extra_s"] is not None:
        print(f"first shard: {out['first_shard_extra_s']:+.2f} s against the median of the others")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
