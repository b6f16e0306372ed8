"""Standard and l2 adversarial training (PGD or "free"), with checkpoints that make a killed run resumable.

The whole training set sits on the device; each epoch draws its permutation and augmentation from a
generator seeded by (seed, epoch), so a run resumed from the checkpoint of epoch k replays exactly
what an uninterrupted run does from epoch k (bit-identical on the CPU). The learning rate is a pure
function of the step, so no scheduler state needs saving. A job that runs out of time (see
`notbugs.deadline`) saves a mid-epoch checkpoint, with the generator's state and the epoch's running
sums, so that it too resumes exactly where it stopped.

Adversarial training attacks each batch in one of two ways (`AdversarialConfig.method`):
- `pgd`, the paper's: a fresh `steps`-step l2 PGD attack per batch (model in eval mode, parameters
  frozen), then one SGD step on the adversarial batch: `steps` + 1 backward passes per SGD step.
- `free` (Shafahi et al., NeurIPS 2019, "Adversarial training for free!"): each batch is replayed
  `steps` times; each replay's one backward gives both the SGD step's gradient and an l2 ascent step
  of `step_size` on a perturbation that carries over from replay to replay and from batch to batch
  (reset at each epoch's start, so an epoch-end checkpoint needs no perturbation). One backward per
  SGD step, and `steps` SGD steps per batch: an epoch costs `steps` standard epochs plus the input
  gradients (on our 2-core CPU 8 epochs of 4 replays took as long as 16 epochs of 2-step PGD). The
  attack runs in training mode (batch statistics), as the SGD step does, not in eval mode as `pgd`'s.
  At `cpu` scale it did not pay (docs/measurements.md, "Recipe experiments"); every profile trains with `pgd`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from notbugs.attacks import NonFiniteError, autocast, bf16_or_default, frozen, l2_step, pgd_l2, random_in_ball
from notbugs.augment import augment
from notbugs.compiling import eager_view
from notbugs.config import AdversarialConfig, TrainConfig
from notbugs.deadline import Deadline, Stopped, expired
from notbugs.models import ARCHS, MODEL_CODE, arch_code, make_model
from notbugs.progress import Progress
from notbugs.storage import ArtefactError, load_tensors, package_digest, read_json, save_tensors, sha256_bytes

log = logging.getLogger("notbugs.train")

SYNC_EVERY = 50  # GPU: read the running loss (NaN check, progress) every this many steps


def pick_device(name: str = "auto") -> torch.device:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda":
        # Every stage runs fixed shapes (32x32, a few batch sizes): let cuDNN time its convolution
        # algorithms once and keep the fastest. Speed only; CPU runs stay bit-reproducible.
        torch.backends.cudnn.benchmark = True
    return device


def lr_at(step: int, total: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    warm = int(cfg.warmup * total)
    if step < warm:  # linear warm-up from 0
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(total - warm, 1)
    if cfg.schedule == "linear":
        return cfg.lr * (1 - frac)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))  # onecycle: warm-up then cosine down


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: weight decay on every parameter (`decay: all`, the reference's
    SGD) or on the convolution and linear weights only (`weights`: not on BatchNorm's scales and shifts
    nor on biases, the 1-d tensors, as usual for CIFAR ResNets)."""
    if cfg.decay == "all":
        return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ema_decay(step: int, decay: float) -> float:
    """The average's decay after SGD step `step` (0-based): the plain mean of the weights of every step so
    far until there have been 1 / (1 - decay) of them, then `decay`; so the initial weights never weigh in,
    and a short run averages over the window asked for, not a shorter one."""
    return min(decay, step / (step + 1))


# The library files a trained model depends on, with its architecture's (models.arch_code): a checkpoint made
# by other code is not resumed, as DVC and `notbugs all` rerun a stage whose code changed (steps.STEP_CODE lists
# these and evaluate.py, which scores it)
TRAIN_CODE = ("train.py", "attacks.py", "augment.py")


def model_code(arch: str) -> tuple[str, ...]:
    """`models.arch_code`; for a model built outside the ARCHS table (a Classifier of one's own backbone), the
    shared model code only: its own code is outside the package, and its tensors' shapes are in the signature."""
    return arch_code(arch) if arch in ARCHS else MODEL_CODE


def _signature(model, cfg: TrainConfig, adversarial, seed: int, labels: torch.Tensor, images: torch.Tensor,
               bf16: bool) -> str:
    """What a checkpoint must match to be resumed: recipe, seed, precision, architecture, data and code.
    Without the code, a finished checkpoint would stand in for the retraining that a fix to the
    augmentation or the training loop asks for. The architecture includes its tensors' names and shapes
    (a model changed in memory, not in its file, is not loaded into the wrong shapes)."""
    with eager_view(model):
        layout = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    body = json.dumps({"cfg": repr(cfg), "adv": repr(adversarial), "seed": seed, "bf16": bf16, "arch": model.arch,
                       "code": package_digest(*TRAIN_CODE, *model_code(model.arch)),
                       "width": model.width, "layout": sha256_bytes(repr(layout).encode()), "n": len(labels),
                       "labels": sha256_bytes(labels.cpu().numpy().tobytes()),
                       "images": float(images[:64].double().sum())}, sort_keys=True)
    return sha256_bytes(body.encode())[:16]


def global_rng(device: torch.device) -> dict:
    """The state of torch's global generators, which dropout (Inception-v3's) draws from: a checkpoint carries
    it, so that a resumed run draws the masks an uninterrupted one would."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _progress(state: dict) -> tuple[int, int]:
    """How far a checkpoint's run got: epochs done, then batches of the next one."""
    within = state.get("within")
    return int(state["epoch"]), int(within["batch"]) if within else 0


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, seed: int,
          device: torch.device, adversarial: AdversarialConfig | None = None, workdir: str | Path | None = None,
          desc: str = "train", stop_after_epoch: int | None = None, deadline: Deadline | None = None,
          bf16: bool | None = None, checkpoint_seconds: float = 0.0) -> list[dict]:
    """Train `model` in place on float images (N,3,32,32) in [0,1]; returns one record per epoch.

    With `workdir`, a checkpoint is written at the first epoch end `checkpoint_seconds` after the
    last one (0: every epoch) and after the last epoch, and a matching checkpoint found there is
    resumed. The cadence changes no result: a resumed run equals an uninterrupted one.
    `stop_after_epoch` ends early (tests of resumption). When `deadline` expires, the run saves a
    checkpoint after the current batch and raises `Stopped`.
    `bf16`: bf16 autocast (None: on CUDA only); the model and its inputs are channels_last on every
    device (tensor cores on the GPU; on our 2-core CPU, 1.3-1.6x for ResNet-9 training in fp32 over NCHW).
    """
    bf16 = bf16_or_default(bf16, device)  # resolved here: the checkpoint signature records it
    model.to(device)
    model.to(memory_format=torch.channels_last)
    images = images.to(device)
    labels = labels.to(device)
    opt = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    n = len(labels)
    steps_per_epoch = max(n // cfg.batch_size, 1)  # batches; drop the last partial one: same count per epoch
    free = adversarial is not None and adversarial.method == "free"
    replays = adversarial.steps if free else 1  # SGD steps per batch
    total = steps_per_epoch * cfg.epochs * replays  # SGD steps, which the learning rate follows
    signature = _signature(model, cfg, adversarial, seed, labels, images, bf16)
    # `ema`: the running average of every float tensor of the model's state (BatchNorm statistics too);
    # `live` holds the model's own tensors (views that SGD and BatchNorm update in place)
    with eager_view(model):
        live = [t for t in model.state_dict().values() if t.is_floating_point()]
    average = [t.clone() for t in live] if cfg.ema > 0 else None

    ckpt = Path(workdir) / "checkpoint.pt" if workdir else None
    history: list[dict] = []
    start_epoch, within = 0, None  # within: the running state of a checkpoint taken mid-epoch
    foreign = None  # where a checkpoint of another run goes when this run first saves
    mine = ckpt.with_name(f"checkpoint-{signature}.pt") if ckpt is not None else None
    if mine is not None and mine.exists():
        # this recipe's own checkpoint, set aside by a run of another recipe since (a parameter changed and changed
        # back; `dvc checkout` of an earlier commit): taken up again, and the other one set aside in its turn
        current = load_tensors(ckpt) if ckpt.exists() else None
        if current is not None and current.get("signature") == signature:
            # both this recipe's (the set-aside one from before 2026-12-07, when a diverged run of another recipe
            # moved it and a run of this one started over): the one further along is kept
            if _progress(load_tensors(mine)) > _progress(current):
                mine.replace(ckpt)
            else:
                mine.unlink()
        else:
            if current is not None:
                ckpt.replace(ckpt.with_name(f"checkpoint-{current.get('signature', 'unsigned')}.pt"))
            mine.replace(ckpt)
        log.info("%s: taking up again this recipe's checkpoint, which a run of another recipe had set aside (%s)",
                 desc, mine.name)
    if ckpt is not None and ckpt.exists():
        state = load_tensors(ckpt)
        if state.get("signature") == signature:
            with eager_view(model):
                model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if average is not None:
                for a, saved in zip(average, state["average"]):
                    a.copy_(saved)
            start_epoch, history = int(state["epoch"]), list(state["history"])
            within = state.get("within")
            set_global_rng(state["global_rng"], device)
            at = f", batch {within['batch']}/{steps_per_epoch}" if within else ""
            log.info("%s: resuming from %s at epoch %d/%d%s", desc, ckpt, start_epoch, cfg.epochs, at)
        else:  # this run's first save sets it aside, not over it: hours of GPU work, maybe wanted back
            foreign = ckpt.with_name(f"checkpoint-{state.get('signature', 'unsigned')}.pt")
            log.warning("%s: not resuming checkpoint %s, made with another recipe, data or code (kept as %s)",
                        desc, ckpt, foreign.name)

    def kept() -> str:
        """What a failed run leaves on disk, for its error message."""
        if ckpt is None:
            return "no checkpoint (no work folder)"
        if foreign is not None:  # nothing of this run saved yet: the file there is another recipe's, untouched
            return f"no checkpoint of this run yet; {ckpt}, another recipe's, left as it was"
        return f"the last good checkpoint kept at {ckpt}" if ckpt.exists() else "no checkpoint of this run yet"

    def save(done_epochs: int, within_epoch: dict | None = None) -> None:
        nonlocal foreign
        with eager_view(model):  # the same checkpoint whether the backbone is compiled or not
            weights = model.state_dict()
        # the loss is checked before each step, not after the last one: a step can still leave inf weights.
        # Checked before another recipe's checkpoint is set aside: a run that saves nothing moves nothing.
        if not all_finite([*weights.values(), *(average or ())]):
            raise NonFiniteError(f"{desc}: weights are not finite after {done_epochs} epoch(s) and "
                                 f"{0 if within_epoch is None else within_epoch['batch']} batch(es); not saved, "
                                 f"{kept()}; lower the learning rate")
        if foreign is not None:
            ckpt.replace(foreign)
            foreign = None
        save_tensors(ckpt, {"model": weights, "optimizer": opt.state_dict(), "epoch": done_epochs,
                            "history": history, "signature": signature, "within": within_epoch,
                            "average": average, "global_rng": global_rng(device)})

    def check_finite(loss_sum: torch.Tensor, seen: int, epoch: int, i: int) -> float:
        mean_loss = loss_sum.item() / seen
        if not math.isfinite(mean_loss):
            # every checkpoint on disk was taken at a finite loss (epoch end or a stop): nothing good is lost
            raise NonFiniteError(f"{desc}: loss is {mean_loss} at epoch {epoch + 1}, by step {i + 1} "
                                 f"({kept()}); lower the learning rate or check the training data")
        return mean_loss

    def stop(epoch: int, batch: int) -> Stopped:
        where = f"{ckpt}" if ckpt else "nowhere (no work folder)"
        return Stopped(f"{desc}: {deadline.reason} after batch {batch}/{steps_per_epoch} of epoch {epoch + 1}/"
                       f"{cfg.epochs}; checkpoint saved to {where}")

    def descend(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, steps_per_epoch * replays, cfg)
        with autocast(device, bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            with torch.no_grad():
                torch._foreach_lerp_(average, live, 1 - ema_decay(step, cfg.ema))
        return loss.detach(), logits.detach()

    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g, device=device)
        model.train()
        # Running sums stay on the device: reading them every step would make the host wait for the
        # GPU each step. They are read (and the loss checked for NaN) every `SYNC_EVERY` steps.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen, first, before = 0, 0, 0.0
        delta = None  # free: the perturbation carried from batch to batch, drawn at the epoch's first batch
        if within is not None:  # continue a stopped epoch: same order, generator where it was, same sums
            g.set_state(within["rng"])
            loss_sum.copy_(within["loss_sum"])
            correct.copy_(within["correct"])
            seen, first, before = int(within["seen"]), int(within["batch"]), float(within["wall_s"])
            if within.get("delta") is not None:
                delta = within["delta"].to(device).contiguous(memory_format=torch.channels_last)
            within = None
        bar = Progress(steps_per_epoch, f"{desc} epoch {epoch + 1}/{cfg.epochs}", "batch")
        if first:
            bar.update(first)
        for i in range(first, steps_per_epoch):
            step = (epoch * steps_per_epoch + i) * replays
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = augment(images[idx], cfg.augment, g), labels[idx]
            x = x.contiguous(memory_format=torch.channels_last)
            if adversarial is not None and not free:
                with frozen(model):
                    x = pgd_l2(model, x, y, adversarial.eps, adversarial.steps, adversarial.step_size,
                               random_start=adversarial.random_start, g=g, bf16=bf16, use_best=adversarial.use_best)
            if free and delta is None:
                delta = (random_in_ball(x.shape, adversarial.eps, g, device) if adversarial.random_start
                         else torch.zeros_like(x))
            for r in range(replays):  # free: the batch `steps` times; else once
                x_in = x
                if free:
                    x_in = (x + delta).clamp(0, 1).contiguous(memory_format=torch.channels_last).requires_grad_(True)
                loss, logits = descend(x_in, y, step + r)
                if free:  # the backward that gave the SGD step also gave the input gradient: ascend along it
                    delta = l2_step(x, x_in.detach() - x, x_in.grad, adversarial.step_size, adversarial.eps)
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            last = i + 1 == steps_per_epoch
            if device.type != "cuda" or last or (i + 1) % SYNC_EVERY == 0:
                mean_loss = check_finite(loss_sum, seen, epoch, i)
                bar.update(i + 1 - bar.done, f"loss {mean_loss:.3f} acc {correct.item() / seen:.3f}")
            if not last and expired(deadline):
                check_finite(loss_sum, seen, epoch, i)  # never save a diverged model
                if ckpt is not None:
                    save(epoch, {"batch": i + 1, "rng": g.get_state(), "loss_sum": loss_sum.cpu(),
                                 "correct": correct.cpu(), "seen": seen,
                                 "wall_s": before + time.perf_counter() - t0,
                                 "delta": None if delta is None else delta.detach().cpu()})
                bar.close()
                raise stop(epoch, i + 1)
        bar.close()
        history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                        "lr": opt.param_groups[0]["lr"], "wall_s": before + time.perf_counter() - t0})
        done = epoch + 1
        saved = ckpt is not None and (done == cfg.epochs or time.perf_counter() - last_save >= checkpoint_seconds)
        if saved:
            save(done)
            last_save = time.perf_counter()
        if stop_after_epoch is not None and done >= stop_after_epoch:
            break
        if done < cfg.epochs and expired(deadline):
            if ckpt is not None and not saved:
                save(done)
            raise stop(epoch, steps_per_epoch)
    if average is not None and len(history) == cfg.epochs:  # finished (now or in the run resumed): the average
        with torch.no_grad():
            torch._foreach_copy_(live, average)
    if not all_finite(list(model.state_dict().values())):  # also where no checkpoint is kept
        raise NonFiniteError(f"{desc}: weights are not finite at the end of training; lower the learning rate")
    return history


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point tensor holds only finite values (one device sync for all)."""
    floats = [t for t in tensors if t.is_floating_point()]
    return not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())


def save_model(model: torch.nn.Module, out_dir: str | Path, meta: dict) -> dict:
    """Write model.pt (tensors only) and meta.json (architecture, recipe, SHA-256) atomically."""
    from notbugs.storage import write_json

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sha = save_tensors(out_dir / "model.pt", state)
    meta = {**meta, "arch": model.arch, "width": model.width, "num_classes": model.num_classes,
            "checkpoint_sha256": sha}
    write_json(out_dir / "meta.json", meta)
    return meta


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model from meta.json and model.pt; checksums and architecture are verified."""
    model_dir = Path(model_dir)
    meta = read_json(model_dir / "meta.json")
    state = load_tensors(model_dir / "model.pt", meta.get("checkpoint_sha256"),
                         rebuild=meta.get("rebuild", "dvc repro"))
    model = make_model(meta["arch"], meta.get("num_classes", 10), meta["width"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArtefactError(f"{model_dir}/model.pt does not fit architecture {meta['arch']} "
                            f"(width {meta['width']}): {str(e).splitlines()[0]}") from e
    return ready_to_attack(model, device), meta


def ready_to_attack(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """A trained model as construction and evaluation use it: on `device`, in eval mode, channels_last."""
    # attacks and evaluation run faster in NHWC: on tensor cores, and in oneDNN on the CPU
    return model.to(device).eval().to(memory_format=torch.channels_last)
