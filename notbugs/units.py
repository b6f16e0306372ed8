"""A stage's units of work, and how it runs them: the profile's view of CIFAR-10 (`load_split`), one model trained
and recorded (`train_unit`), one model scored on the real test set (`evaluate_unit`), one shard of a constructed
set (`ConstructJob`, `build_shard`), and `Units`, the runner a stage is given: `LOCAL` runs every unit here, in
order; the Prefect flows pass tasks (tasks/units.py), so that each unit is a task of its own. Plumbing, like
stages.py: in no step's code (steps.STEP_CODE); the science each unit runs (train.py, evaluate.py, construct.py)
is."""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from notbugs import construct as C
from notbugs import data as D
from notbugs import results
from notbugs.attacks import precision_name
from notbugs.compiling import keep_compiled_kernels, try_compile, uncompiled
from notbugs.config import AdversarialConfig, EvalConfig, Params, TrainConfig
from notbugs.deadline import Deadline, Stopped, expired
from notbugs.evaluate import evaluate
from notbugs.models import make_model
from notbugs.record import bf16_for, dataset_dir, model_dir, results_root
from notbugs.sets import first_of, trainee_path
from notbugs.storage import ArtefactError, atomic_write_bytes, read_json
from notbugs.subset import balanced_subset
from notbugs.train import load_model, pick_device, save_model, train

log = logging.getLogger("notbugs")


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class Split:
    """One profile's view of CIFAR-10: float images in [0,1], NCHW, with their canonical indices."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_index: np.ndarray
    test_x: torch.Tensor
    test_y: torch.Tensor


def to_float(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float().div_(255).contiguous()


def training_images(params: Params) -> int:
    """How many training images `load_split` gives this profile, without reading them."""
    everything = 10 * params.data.train_per_class  # fetch verified that many per class
    return everything if params.profile.subset.train == 0 else min(params.profile.subset.train, everything)


def load_split(params: Params, data_dir) -> Split:
    """The profile's training and test images as float tensors. Stages take a loaded one (`split=`)
    so that a process running several of them (`notbugs all`, 11 stages that read it) reads and converts
    the data once: full CIFAR-10 is 600 MB of floats, 0.7-2.1 s a load on the 2-core CPU (5 loads)."""
    cifar = D.load(Path(data_dir) / "cifar10")
    s = params.profile.subset
    tr = balanced_subset(cifar.train_labels, s.train, s.seed)
    te = balanced_subset(cifar.test_labels, s.test, s.seed)
    return Split(to_float(cifar.train_images[tr]), torch.from_numpy(cifar.train_labels[tr]), tr,
                 to_float(cifar.test_images[te]), torch.from_numpy(cifar.test_labels[te]))


# ---------------------------------------------------------------- units: one model, one evaluation

@dataclass(frozen=True)
class ModelSpec:
    name: str        # folder under models/
    arch: str
    width: float
    train_set: str   # "d", or a constructed set (notbugs/sets.py)
    training: str    # standard | adversarial
    recipe: TrainConfig
    adversarial: AdversarialConfig | None = None
    group: str = ""  # "transfer" for Figure 3's models, which must not be mistaken for the main ones
    trainee: int = 1  # k of the profile's `trainees` models on this set: those after the first have ids of their own

    def model_id(self, profile: str) -> str:
        group = f"{self.group}/" if self.group else ""
        first = f"{profile}/{group}{self.training}-{self.train_set}-{self.arch}"
        return trainee_path(first, self.trainee) if self.trainee > 1 else first


def rebuild_command(name: str, train_set: str) -> str:
    """The commands that remake the model in models/<name>, for the error that finds it corrupt or missing."""
    if name.startswith("transfer/"):
        return "dvc repro transfer  (or: notbugs transfer)"
    if train_set == "d":
        return f"dvc repro source@{name}  (or: notbugs source {name})"
    return f"dvc repro train@{train_set}  (or: notbugs train {train_set})"  # name: <set>/trainee-<k> for the others


def load_made_model(folder: Path, device, rebuild: str) -> tuple[torch.nn.Module, dict]:
    """`load_model`, with the command that makes the model in the error where there is none yet (here, not in
    train.py: an edit there is a code change of every training step, and would rerun them all)."""
    if not (Path(folder) / "meta.json").exists():
        raise ArtefactError(f"{folder} holds no trained model (no meta.json); build it with `{rebuild}`")
    return load_model(folder, device)


def _seed(params: Params, name: str) -> int:
    """A distinct, stable seed per model name, derived from the profile's seed."""
    return params.profile.subset.seed * 1_000 + zlib.crc32(name.encode()) % 1_000


def model_seed(params: Params, spec: ModelSpec) -> int:
    """The model's seed: its name's (`_seed`); a set's trainee k > 1 takes its first model's plus k - 1 millions,
    so that no two of a set's trainees share one (seeds drawn from 1,000 by name would, among a few dozen)."""
    if spec.trainee == 1:
        return _seed(params, spec.name)
    return _seed(params, first_of(spec.name)) + 1_000_000 * (spec.trainee - 1)


def train_unit(params: Params, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, data_dir, device,
               run_id: str, deadline: Deadline | None = None) -> dict:
    """Train (or resume) one model, save it, and record its `models` and `epochs` rows.
    Out of time (`deadline`), it raises `Stopped` with a checkpoint saved instead."""
    prof = params.profile.name
    model_id = spec.model_id(prof)
    built_by = train_set_run_id(data_dir, spec.train_set)  # now, beside the caller's load of the set, not hours on
    seed = model_seed(params, spec)
    bf16 = bf16_for(params, device)
    torch.manual_seed(seed)
    model = make_model(spec.arch, width=spec.width, init=spec.recipe.init)
    log.info("training %s (%s, width %g, %s init) on %s, %d images, %d epochs", model_id, spec.arch, spec.width,
             spec.recipe.init, spec.train_set, len(y), spec.recipe.epochs)
    mode = params.profile.compile_train
    if mode != "eager":
        keep_compiled_kernels(data_dir)
        # compiled at the training batch's shape and memory format, on the device, as train() will run it
        model.to(device).to(memory_format=torch.channels_last)
        example = x[:spec.recipe.batch_size].to(device).contiguous(memory_format=torch.channels_last)
        reason = try_compile(model, example, train=True, bf16=bf16, mode=None if mode == "default" else mode)
        log.info("%s: training runs %s", model_id, f"compiled ({mode})" if reason is None else f"eager ({reason})")
    history = train(model, x, y, spec.recipe, seed, device, adversarial=spec.adversarial,
                    workdir=Path(data_dir) / "work" / spec.name, desc=model_id, deadline=deadline, bf16=bf16,
                    checkpoint_seconds=60 * params.profile.checkpoint_minutes)
    uncompiled(model)  # saved and evaluated eager: evaluation's batch shape would need another compile
    out = model_dir(data_dir, spec.name)
    adversarial = dataclasses.asdict(spec.adversarial) if spec.adversarial else None
    recipe = {"train": dataclasses.asdict(spec.recipe), "adversarial": adversarial, "seed": seed, "n_train": len(y),
              "precision": precision_name(bf16)}
    meta = save_model(model, out, {"model_id": model_id, "profile": prof, "train_set": spec.train_set,
                                   "training": spec.training, "recipe": recipe, "run_id": run_id,
                                   "train_set_run_id": built_by,
                                   "rebuild": rebuild_command(spec.name, spec.train_set)})
    _write_curve(Path(data_dir) / "plots" / f"{spec.name}.csv", history)
    root = results_root(data_dir)
    results.append("models", [models_row(out, meta)], root)
    results.append("epochs", [{"model_id": model_id, "profile": prof, "run_id": run_id, **h} for h in history], root)
    return {"model": model, "meta": meta, "history": history}


def train_set_run_id(data_dir, train_set: str) -> str | None:
    """The run that built constructed set `train_set` (its manifest's); None for D, CIFAR-10 itself."""
    if train_set == "d":
        return None
    return read_json(dataset_dir(data_dir, train_set) / "manifest.json").get("run_id")


def _write_curve(path: Path, history: list[dict]) -> None:
    lines = [",".join(["epoch", "train_loss", "train_acc", "lr", "wall_s"])]
    lines += [",".join(f"{h[k]}" for k in ("epoch", "train_loss", "train_acc", "lr", "wall_s")) for h in history]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def models_row(folder: Path, meta: dict) -> dict:
    """The `models` row of the checkpoint in `folder`, from its meta.json (`save_model`'s): the run that saved it
    (a rerun that restores a finished checkpoint saves it again; the report names the first row of its weights
    as their training, `report_tables.trained_run`); the time is now, when the row is written."""
    return {"model_id": meta["model_id"], "profile": meta["profile"], "arch": meta["arch"],
            "width": float(meta["width"]), "train_set": meta["train_set"], "training": meta["training"],
            "recipe": results.to_json(meta["recipe"]), "checkpoint_path": str(folder / "model.pt"),
            "checkpoint_sha256": meta["checkpoint_sha256"], "run_id": meta["run_id"],
            "created_at": results.now_utc(), "train_set_run_id": meta.get("train_set_run_id")}


def _metric_key(row: dict) -> str:
    return "clean" if row["attack"] == "none" else f"{row['attack']}_eps{row['eps']:g}"


def evaluate_unit(params: Params, model, model_id: str, checkpoint_sha256: str, split: Split, cfg: EvalConfig,
                  data_dir, device, run_id: str) -> dict:
    """Clean and robust accuracy on the real test set of the weights `checkpoint_sha256` (their meta.json's);
    rows appended; returns {metric: accuracy}."""
    rows = evaluate(model, model_id, split.test_x, split.test_y, cfg.eps, cfg.steps, cfg.step_factor,
                    cfg.restarts, cfg.batch_size, device, bf16=bf16_for(params, device), use_best=cfg.use_best)
    stamp = results.now_utc()
    for r in rows:
        # the attack's other settings (its step as evaluate.robust_correct takes it), so that rows of suites that
        # differ only in them are told apart
        attacked = r["attack"] != "none"
        r.update(profile=params.profile.name, run_id=run_id, evaluated_at=stamp, checkpoint_sha256=checkpoint_sha256,
                 step_size=cfg.step_factor * r["eps"] / r["steps"] if attacked else 0.0,
                 use_best=cfg.use_best if attacked else False)
    results.append("evaluations", rows, results_root(data_dir))
    metrics = {_metric_key(r): round(r["accuracy"], 4) for r in rows}
    log.info("%s on the real test set: %s", model_id,
             ", ".join(f"{k} {100 * v:.1f}%" for k, v in metrics.items()))
    return metrics


# ---------------------------------------------------------------- how a stage runs its units

@dataclass
class ConstructJob:
    """Everything needed to build the shards of one constructed set; `build(k)` builds shard k."""
    name: str
    model: torch.nn.Module
    source_meta: dict
    images: torch.Tensor
    labels: np.ndarray
    source_index: np.ndarray
    assign: dict
    recipe: dict
    recipe_hash: str
    ranges: list
    out_dir: Path
    device: torch.device
    deadline: Deadline | None = None

    def pending(self) -> list[int]:
        return [k for k in range(len(self.ranges)) if not C.shard_done(self.out_dir, k, self.recipe_hash)]

    def build(self, k: int) -> dict:
        a, b = self.ranges[k]
        stats = C.build_shard(self.name, self.model, self.images, self.labels, self.source_index, self.assign,
                              k, a, b, self.recipe, self.recipe_hash, self.out_dir, self.device, self.deadline)
        # numbered from 0, as the shard's file, its progress bar and its errors are; the count beside it
        log.info("built %s shard %d (%d of %d) from the %s %s: %s", self.name, k, k + 1, len(self.ranges),
                 self.source_meta["training"], self.source_meta["arch"], _describe(stats))
        if expired(self.deadline):  # the shard is whole; the next job starts with the next one
            raise Stopped(f"{self.name} shard {k}: {self.deadline.reason} after finishing the shard")
        return stats


def _describe(stats: dict) -> str:
    if "final_distance" in stats:
        return (f"mean representation distance {stats['start_distance']:.3f} -> {stats['final_distance']:.3f} "
                f"(relative {stats['start_relative']:.2f} -> {stats['final_relative']:.2f})")
    return f"targeted attack success on the source model {100 * stats['success_rate']:.1f}%"


def build_shard(job: ConstructJob, k: int) -> dict:
    return job.build(k)


def run_in_order(fn: Callable, calls: list[tuple]) -> list:
    return [fn(*args) for args in calls]


@dataclass(frozen=True)
class Units:
    """How a stage runs its units of work. `train`, `evaluate` and `build` take the arguments of
    `train_unit` (all eight), `evaluate_unit` and `build_shard`; `map(fn, calls)` runs independent calls of one
    of them and returns their results in order. With `parallel`, a stage asked for device "auto"
    spreads independent units over every visible GPU (only useful when `map` runs calls concurrently):
    call i goes to device i % n of the n that `stage_devices` gives, so a concurrent `map` must not start a
    call before the one n places earlier has finished."""
    train: Callable[..., dict] = train_unit
    evaluate: Callable[..., dict] = evaluate_unit
    build: Callable[..., dict] = build_shard
    map: Callable[[Callable, list[tuple]], list] = run_in_order
    parallel: bool = False


LOCAL = Units()  # every unit here, in order, on one device


def stage_devices(device: str, parallel: bool) -> list[torch.device]:
    """Every visible GPU for a parallel runner asked for "auto" on a machine with several; else one."""
    if parallel and device == "auto" and torch.cuda.device_count() > 1:
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return [pick_device(device)]
