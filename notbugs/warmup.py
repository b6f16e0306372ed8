"""Compile construction's graphs ahead, in a second process, while the source models train.

A compiled construction pays for its compile before its first shard: with an empty compile cache, 19 s
of the `fast` profile's D_R on an H200 (2026-11-27). On the 2-core CPU a ResNet-18 at width 1/4
compiles in 27.9 s cold and 6.5 s from its cached kernels (bench/first_shard.py). The graphs depend on
the architecture, the batch shape, the precision and the fake ReLU only, not on the source models'
weights. So `notbugs all` starts this module as a second process while the source models are still to
train on a GPU, when the profile says so (`compile_ahead`). It compiles the same graphs for a model of the same
architecture with random weights into the same cache (`keep_compiled_kernels`). The construct stage
then loads them instead of compiling. It only fills a cache: if it fails or is stopped, construction
compiles as it would have.

    python -m notbugs.warmup --arch resnet18 --width 1 --batch 2500 --precision bf16 --fake-relu 1,0
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("notbugs.warmup")

WAIT_S = 600  # longest the construct stage waits for the warm-up before compiling itself


def beside_training(device: torch.device) -> bool:
    """Whether compiling beside the source models' training can save time on `device`: only where the
    training runs on an accelerator, so that the compile's CPU work uses cores the training leaves idle.
    On a CPU the training already uses every core. The `fast` profile in miniature on the 2-core CPU
    (bench/preflight.py, 2,000 images, 4 epochs, up to the constructed sets) took 141.9-142.5 s with
    the warm-up beside it and 117.8-122.7 s without (docs/measurements.md, 2026-12-06)."""
    return device.type != "cpu"


def sets_to_warm(params, todo: set[str], device: torch.device) -> list[str]:
    """The constructed sets to compile ahead, given the steps still to run ("source@robust",
    "construct@d_r", ...): those still to build, when the profile compiles construction and asks for it
    (`compile_ahead`), a source model is still to train (else there is nothing to overlap with), and
    the training runs on an accelerator (`beside_training`)."""
    from notbugs.config import DATASETS

    p = params.profile
    if not (p.compile and p.compile_ahead and any(step.startswith("source@") for step in todo)):
        return []
    if not beside_training(device):
        log.info("compile ahead: not beside training on a CPU, which uses every core; construction compiles itself")
        return []
    return [n for n in DATASETS if f"construct@{n}" in todo]


def graphs(params, names) -> list[bool]:
    """The fake-ReLU flag of each distinct graph that building the sets `names` compiles: matching sets
    differentiate through the fake ReLU when the recipe says so, PGD sets never."""
    from notbugs.config import construct_params
    from notbugs.sets import set_spec

    p = params.profile
    return sorted({set_spec(name).kind == "match" and construct_params(p, name).fake_relu for name in names},
                  reverse=True)


def command(params, names, device: torch.device) -> list[str]:
    """The command line that compiles what building `names` on `device` will compile (see
    `notbugs.stages.prepare_construct`: the source model's architecture, eval mode, channels_last, a
    batch of the construction's size, the profile's precision)."""
    from notbugs.attacks import precision_name
    from notbugs.record import bf16_for
    from notbugs.units import training_images

    p = params.profile
    batch = min(p.construct.batch_size, training_images(params))
    return [sys.executable, "-m", "notbugs.warmup", "--arch", p.arch, "--width", repr(p.width),
            "--batch", str(batch), "--precision", precision_name(bf16_for(params, device)),
            "--fake-relu", ",".join(str(int(f)) for f in graphs(params, names)), "--device", str(device)]


def start(params, names, data_dir, device: torch.device) -> subprocess.Popen | None:
    """Start the warm-up for the sets `names`; its output goes to <data_dir>/work/compile-ahead.log.
    None, with a warning, where it cannot start (the log not writable, no process to spare): the job
    goes on without it."""
    import notbugs
    from notbugs.compiling import CACHE_ENV, keep_compiled_kernels

    env = dict(os.environ)
    env[CACHE_ENV] = keep_compiled_kernels(data_dir)  # the cache the construct stage will read
    package_root = str(Path(notbugs.__file__).resolve().parents[1])  # also from a checkout not installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # Leave cores to the training it runs beside (the setting is not part of the cache's key)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    path = Path(data_dir) / "work" / "compile-ahead.log"
    cmd = command(params, names, device)
    log.info("compiling construction ahead, beside the source models: %s (log: %s)", " ".join(cmd[1:]), path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as out:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    except OSError as e:
        log.warning("compile ahead: cannot start (%s); construction compiles itself", e)
        return None


def finish(proc: subprocess.Popen | None, wait_s: float = WAIT_S) -> int | None:
    """Wait for a started warm-up (at most `wait_s`, then stop it) and log how it ended; its exit code,
    None when there was none or it was stopped. Either way the construct stage goes on."""
    if proc is None:
        return None
    t = time.perf_counter()
    try:
        rc = proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        log.warning("compile ahead: still running after %.0f s more, stopped; construction compiles itself", wait_s)
        return None
    waited = time.perf_counter() - t
    if rc == 0:
        log.info("compile ahead: done (waited %.1f s for it)", waited)
    else:
        log.warning("compile ahead: exit %d (see work/compile-ahead.log); construction compiles itself", rc)
    return rc


def stop(proc: subprocess.Popen | None) -> None:
    """End a warm-up that is still running (the job stops or failed): it only fills a cache."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def warm(arch: str, width: float, batch: int, bf16: bool, fake_relus: list[bool], device: torch.device) -> list:
    """Compile, as `try_compile` for construction does, one graph per fake-ReLU flag; (flag, seconds,
    None or the reason it runs eager) for each."""
    from notbugs.compiling import try_compile, uncompiled
    from notbugs.models import make_model
    from notbugs.train import ready_to_attack

    torch.manual_seed(0)
    model = ready_to_attack(make_model(arch, 10, width), device)  # as `load_model` hands it to construction
    example = torch.rand(batch, 3, 32, 32, device=device)  # as the stage's images: contiguous NCHW
    out = []
    for fake_relu in fake_relus:
        t = time.perf_counter()
        reason = try_compile(model, example, bf16=bf16, fake_relu=fake_relu)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append((fake_relu, time.perf_counter() - t, reason))
        uncompiled(model)
    return out


def main(argv=None) -> int:
    from notbugs.attacks import PRECISIONS
    from notbugs.train import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True)
    ap.add_argument("--width", type=float, required=True)
    ap.add_argument("--batch", type=int, required=True, help="the construction's batch size")
    ap.add_argument("--precision", choices=[p for p in PRECISIONS if p != "auto"], required=True)
    ap.add_argument("--fake-relu", default="0", help="comma-separated 1/0: one graph per flag")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if hasattr(os, "nice"):
        os.nice(10)  # the training beside it comes first
    device = pick_device(args.device)  # the same cuDNN settings as the stages
    flags = [bool(int(f)) for f in args.fake_relu.split(",") if f]
    failed = 0
    for fake_relu, seconds, reason in warm(args.arch, args.width, args.batch, args.precision == "bf16", flags, device):
        print(f"{args.arch} width {args.width:g}, batch {args.batch}, {args.precision}, fake_relu {fake_relu}: "
              f"{'compiled' if reason is None else 'eager (' + reason + ')'} in {seconds:.1f} s", flush=True)
        failed += reason is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
