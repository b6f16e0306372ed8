"""The pipeline's stages as plain functions: fetch, source, construct, train, transfer, reevaluate, report.

Each stage reads its recipe from a `Params`, its inputs from `data_dir`, writes its artefacts there
atomically, appends rows to the result tables and a metrics JSON for DVC, and records one `runs`
row with its provenance (`notbugs.record.recorded_run`). The command line (`notbugs.cli`) and the
Prefect flows (`flows/`) both call these functions. A stage runs its finer units (one model, one
shard, one evaluation: `notbugs.units`) through a `Units`: by default here, one after the other; the
flows pass Prefect tasks instead, so that every unit is a task of its own and independent units can
run on several GPUs side by side.

Layout under data_dir (default `data/`):
  cifar10/                 canonical arrays + manifest            (fetch)
  models/<name>/           model.pt + meta.json                   (source, train, transfer)
  models/<set>/trainee-<k>/  the set's other models (`trainees`)   (train)
  datasets/<name>/         shards + manifest.json                 (construct)
  work/<name>/             in-progress checkpoints (resume)
  metrics/<stage>.json     DVC metrics;  plots/<name>.csv: training curves
  results/<table>/         Parquet result tables (append-only)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import statistics
from pathlib import Path

import torch

from notbugs import construct as C
from notbugs import data as D
from notbugs import results
from notbugs.attacks import precision_name
from notbugs.compiling import keep_compiled_kernels, try_compile
from notbugs.config import Params, construct_params
from notbugs.deadline import Deadline, Stopped, expired
from notbugs.evaluate import make_transfer_examples, predict, transfer_success
from notbugs.models import arch_code
from notbugs.record import (bf16_for, dataset_dir, exclusive, model_dir, recorded_run, results_root, trainee_dirs,
                            write_metrics)
from notbugs.sets import construction, set_spec, trainee_number, trainee_path
from notbugs.subset import balanced_subset
from notbugs.storage import ArtefactError, atomic_write_bytes, package_digest, read_json, sha256_bytes, write_json
from notbugs.train import load_model, pick_device
from notbugs.units import (LOCAL, ConstructJob, ModelSpec, Split, Units, load_made_model, load_split, models_row,
                           rebuild_command, stage_devices)

log = logging.getLogger("notbugs")


# ---------------------------------------------------------------- stages

def _record_dataset(params: Params, data_dir, run_id: str, name: str, path: Path, n_images: int,
                    source_meta: dict | None, recipe: dict, stats: dict) -> None:
    """Append the `datasets` row of D ("d", no source model) or of a constructed set."""
    results.append("datasets", [{
        "dataset_id": f"{params.profile.name}/{name}", "profile": params.profile.name, "name": name,
        "recipe": results.to_json(recipe),
        "source_model_id": None if source_meta is None else source_meta["model_id"],
        "source_model_sha256": None if source_meta is None else source_meta["checkpoint_sha256"], "n_images": n_images,
        "stats": results.to_json(stats), "path": str(path), "run_id": run_id, "created_at": results.now_utc()}],
        results_root(data_dir))


def stage_fetch(params: Params, data_dir="data", device: str = "auto") -> dict:
    d = params.data
    root = Path(data_dir) / "cifar10"
    with recorded_run("fetch", params, data_dir, pick_device(device)) as run_id:
        used = D.resolve_source(d.source, d.mirror)
        log.info("fetching CIFAR-10 from the %s source (%s)%s", used, d.mirror if used == "mirror" else D.OFFICIAL_URL,
                 ", data.source auto" if d.source == "auto" else "")
        manifest = D.fetch(d.source, d.mirror, root, d.train_per_class, d.test_per_class)
        if manifest["canonical"] is False:  # verified counts and shapes, yet other images or another order
            log.warning("the fetched arrays are not the canonical CIFAR-10: SHA-256 %s, expected %s (notbugs.data."
                        "CANONICAL_SHA256); results will not compare with runs on the canonical arrays",
                        manifest["array_sha256"], D.CANONICAL_SHA256)
        # D itself: which arrays every model and set of this data folder comes from
        _record_dataset(params, data_dir, run_id, "d", root, manifest["counts"]["train"], None,
                        {"source": manifest["source"], "requested": d.source, "origin": manifest["origin"],
                         "train_per_class": d.train_per_class, "test_per_class": d.test_per_class},
                        {"counts": manifest["counts"], "array_sha256": manifest["array_sha256"],
                         "canonical": manifest["canonical"]})
        write_metrics(data_dir, "fetch", {"train": manifest["counts"]["train"], "test": manifest["counts"]["test"]})
    return manifest


def source_spec(params: Params, kind: str) -> ModelSpec:
    p = params.profile
    if kind == "standard":
        return ModelSpec("standard", p.arch, p.width, "d", "standard", p.source_on["standard"])
    if kind == "robust":
        return ModelSpec("robust", p.arch, p.width, "d", "adversarial", p.source_on["robust"], p.adversarial)
    raise ValueError(f"unknown source model {kind!r}; accepted: standard, robust")


def stage_source(params: Params, kind: str, data_dir="data", device: str = "auto", units: Units = LOCAL,
                 deadline: Deadline | None = None, split: Split | None = None) -> dict:
    """Train the standard (C) or the l2-adversarially trained (C_R) source model on D."""
    dev = pick_device(device)
    spec = source_spec(params, kind)
    with recorded_run(f"source@{kind}", params, data_dir, dev, [Path(data_dir) / "cifar10/manifest.json"],
                      bf16_for(params, dev)) as run_id:
        split = split or load_split(params, data_dir)
        out = units.train(params, spec, split.train_x, split.train_y, data_dir, dev, run_id, deadline)
        metrics = units.evaluate(params, out["model"], out["meta"]["model_id"], out["meta"]["checkpoint_sha256"],
                                 split, params.profile.evaluate, data_dir, dev, run_id)
        write_metrics(data_dir, f"source_{kind}", metrics)
    return metrics


def construct_source(name: str) -> str:
    """The source model a constructed set is built from (its entry in notbugs/sets.py)."""
    return set_spec(name).source


def construct_recipe(params: Params, name: str, source_meta: dict, bf16: bool) -> dict:
    """What builds set `name`'s images, hashed into its recipe hash: its construction parameters (its kind's
    section of the profile with its construct_on overrides), the set's own entry (not the table's: a new set
    leaves this hash alone), the source model, and the code's digest."""
    c, s = params.profile.construct, set_spec(name)
    recipe = {"name": name, "seed": c.seed, "precision": precision_name(bf16), "batch_size": c.batch_size,
              "shard_size": c.shard_size, "subset": dataclasses.asdict(params.profile.subset),
              "set": construction(name),
              "source_model_id": source_meta["model_id"], "source_model_sha256": source_meta["checkpoint_sha256"],
              "code": package_digest(*C.CONSTRUCT_CODE, *arch_code(source_meta["arch"]))}
    # the set's parameters (its kind's, with its construct_on overrides), under its kind's name: "match" or
    # "pgd" (config.check_sets refuses any other at load)
    recipe[s.kind] = dataclasses.asdict(construct_params(params.profile, name))
    return recipe


def prepare_construct(params: Params, name: str, data_dir="data", device: str | torch.device = "auto",
                      deadline: Deadline | None = None, split: Split | None = None) -> ConstructJob:
    s = set_spec(name)
    dev = pick_device(device)
    c = params.profile.construct
    model, meta = load_made_model(model_dir(data_dir, s.source), dev, rebuild_command(s.source, "d"))
    split = split or load_split(params, data_dir)
    labels = split.train_y.numpy()
    bf16 = bf16_for(params, dev)
    recipe = construct_recipe(params, name, meta, bf16)
    recipe_hash = sha256_bytes(results.to_json(recipe).encode())[:16]
    out_dir = dataset_dir(data_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = ConstructJob(name, model, meta, split.train_x, labels, split.train_index,
                       C.assignments(name, labels, c.seed), recipe, recipe_hash,
                       C.shard_ranges(len(labels), c.shard_size), out_dir, dev, deadline)
    if params.profile.compile and job.pending():  # compiled once for every shard left to build
        keep_compiled_kernels(data_dir)
        reason = try_compile(model, split.train_x[:min(c.batch_size, len(labels))].to(dev), bf16=bf16,
                             fake_relu=s.kind == "match" and construct_params(params.profile, name).fake_relu)
        log.info("%s: construction runs %s", name, "compiled" if reason is None else f"eager ({reason})")
    return job


def finish_construct(params: Params, job: ConstructJob, data_dir, run_id: str) -> dict:
    """Write the manifest once every shard is done; record the `datasets` row."""
    missing = job.pending()
    if missing:
        raise RuntimeError(f"{job.name}: shards {missing} are not built yet")
    for stale in job.out_dir.glob("shard-*"):  # shards (and partial shards) of an earlier, larger plan
        if int(stale.name[6:11]) >= len(job.ranges):
            stale.unlink()
    shards, per_shard = [], []
    for k in range(len(job.ranges)):
        meta = read_json(job.out_dir / f"shard-{k:05d}.json")
        shards.append({"file": f"shard-{k:05d}.npz", "sha256": meta["sha256"], "n": meta["stats"]["n"]})
        per_shard.append(meta["stats"])
    n = sum(s["n"] for s in per_shard)
    keys = [k for k in per_shard[0] if k not in ("n", "wall_s")]
    stats = {k: sum(s[k] * s["n"] for s in per_shard) / n for k in keys}
    stats["wall_s"] = sum(s["wall_s"] for s in per_shard)
    manifest = {"name": job.name, "recipe": job.recipe, "recipe_hash": job.recipe_hash, "n": n,
                "shards": shards, "stats": stats, "dtype": "float16", "run_id": run_id}
    earlier = _manifest_if_readable(job.out_dir / "manifest.json")
    if earlier is not None and (earlier.get("recipe_hash"), earlier.get("shards")) == (job.recipe_hash, shards):
        # A rerun that found every shard built (a UI rerun, --redo): the set is the one an earlier run made, so
        # its manifest stays, with that run's id. Rewritten, it would change under DVC (the set's folder is a
        # persistent output) and make the next `dvc repro` rerun every step after it; dvc.yaml reruns every
        # construct stage when notbugs/sets.py changes (a set added), and this keeps that from retraining.
        log.info("%s: every shard was built already, by run %s; its manifest is kept", job.name, earlier.get("run_id"))
        rows = results.load("datasets", results_root(data_dir))
        if not ((rows["name"] == job.name) & (rows["run_id"] == earlier.get("run_id"))).any():  # tables wiped
            _record_dataset(params, data_dir, str(earlier.get("run_id")), job.name, job.out_dir, n, job.source_meta,
                            job.recipe, earlier["stats"])
        return earlier["stats"]
    write_json(job.out_dir / "manifest.json", manifest)
    _record_dataset(params, data_dir, run_id, job.name, job.out_dir, n, job.source_meta, job.recipe, stats)
    return stats


def _manifest_if_readable(path: Path) -> dict | None:
    try:
        manifest = read_json(path)
    except (OSError, ArtefactError):
        return None
    return manifest if isinstance(manifest, dict) and "stats" in manifest else None


def shard_stats(data_dir, name: str) -> list[dict]:
    """Each shard's statistics of built set `name`, in order, with its index under "shard"."""
    out = dataset_dir(data_dir, name)
    return [{"shard": k, **read_json(out / f"shard-{k:05d}.json")["stats"]}
            for k in range(len(read_json(out / "manifest.json")["shards"]))]


def stage_construct(params: Params, name: str, data_dir="data", device: str = "auto", units: Units = LOCAL,
                    deadline: Deadline | None = None, split: Split | None = None) -> dict:
    """Build constructed set `name` (notbugs/sets.py); finished shards (and batches) of an interrupted run are
    kept."""
    devs = stage_devices(device, units.parallel)
    with recorded_run(f"construct@{name}", params, data_dir, devs[0],
                      [model_dir(data_dir, construct_source(name)) / "meta.json"], bf16_for(params, devs[0])) as run_id:
        jobs = [prepare_construct(params, name, data_dir, d, deadline, split) for d in devs]  # a model copy per device
        pending = jobs[0].pending()
        if pending:  # the set is being changed: no manifest may claim it whole until it is
            (jobs[0].out_dir / "manifest.json").unlink(missing_ok=True)
        if len(pending) < len(jobs[0].ranges):
            log.info("%s: %d of %d shards already built, resuming", name, len(jobs[0].ranges) - len(pending),
                     len(jobs[0].ranges))
        units.map(units.build, [(jobs[i % len(jobs)], k) for i, k in enumerate(pending)])
        stats = finish_construct(params, jobs[0], data_dir, run_id)
        write_metrics(data_dir, f"construct_{name}", {k: round(v, 4) for k, v in stats.items()})
    return stats


def load_training_set(data_dir, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = C.load_constructed(dataset_dir(data_dir, name))
    return torch.from_numpy(arrays["images"]).float(), torch.from_numpy(arrays["labels"])


def train_spec(params: Params, name: str) -> ModelSpec:
    """The profile's architecture, trained (standard training) on constructed set `name`."""
    p = params.profile
    return ModelSpec(name, p.arch, p.width, name, "standard", p.train_on[name])


def train_specs(params: Params, name: str) -> list[ModelSpec]:
    """The profile's `trainees` models of set `name`: the first (models/<name>, the one every table shows), then
    the others, models/<name>/trainee-<k>: the same recipe, each from a seed of its own (units.model_seed)."""
    first = train_spec(params, name)
    return [first] + [dataclasses.replace(first, name=trainee_path(name, k), trainee=k)
                      for k in range(2, params.profile.trainees + 1)]


def retire_trainees(data_dir, name: str, keep: int) -> list[Path]:
    """Delete the model folders of set `name`'s trainees beyond the first `keep` (a profile that trains fewer
    than a run before), which DVC would otherwise keep in the set's output and the report count. Their finished
    checkpoints stay in work/<name>/trainee-<k>/: a run that trains that many again restores them."""
    gone = [path for path in trainee_dirs(data_dir, name) if trainee_number(path.name) > keep]
    for path in gone:
        shutil.rmtree(path)
        (Path(data_dir) / "plots" / name / f"{path.name}.csv").unlink(missing_ok=True)  # its training curve
        log.info("%s: removed; the profile trains %d model(s) on %s (its checkpoint stays in work/)", path, keep, name)
    return gone


def spread(scores: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1) of each metric over the trainees' scores ({metric: accuracy})."""
    out: dict = {"n": len(scores)}
    for key in scores[0]:
        values = [float(s[key]) for s in scores]
        out[key] = {"mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4)}
    return out


def stage_train(params: Params, name: str, data_dir="data", device: str = "auto", units: Units = LOCAL,
                deadline: Deadline | None = None, split: Split | None = None) -> dict:
    """Standard training of the profile's architecture on a constructed set; test on the real test set. With the
    profile's `trainees` above 1, as many models from seeds of their own, each scored as soon as it is trained (a
    job stopped in a later one leaves none unscored), and the metrics add their mean and spread (`trainees`)."""
    set_spec(name)  # an unknown set's error names notbugs/sets.py
    dev = pick_device(device)
    p = params.profile
    specs = train_specs(params, name)
    inputs = [dataset_dir(data_dir, name) / "manifest.json"]
    with recorded_run(f"train@{name}", params, data_dir, dev, inputs, bf16_for(params, dev)) as run_id:
        retire_trainees(data_dir, name, len(specs))  # under the step's lock: a run under way may be saving them
        x, y = load_training_set(data_dir, name)
        split = split or load_split(params, data_dir)
        scores = []
        for spec in specs:  # one after another, on one device, even where a parallel runner could spread them
            out = units.train(params, spec, x, y, data_dir, dev, run_id, deadline)
            scores.append(units.evaluate(params, out["model"], out["meta"]["model_id"],
                                         out["meta"]["checkpoint_sha256"], split, p.evaluate, data_dir, dev, run_id))
            if spec.trainee == 1:
                first_train_acc = round(out["history"][-1]["train_acc"], 4)
        metrics = {**scores[0], "train_acc_final": first_train_acc}
        if len(scores) > 1:
            metrics["trainees"] = spread(scores)
        write_metrics(data_dir, f"train_{name}", metrics)
    return metrics


def transfer_specs(params: Params) -> list[ModelSpec]:
    """Figure 3: each architecture trained on D (transfer target) and on D_det.

    The profile's own architecture trained on D_det is the model `train@d_det` already made with the
    same recipe: it is reused (its spec has no "transfer" group) instead of trained a second time.
    Its D target is trained anew: the standard source model itself would be a white-box target.
    """
    p, t = params.profile, params.profile.transfer
    specs = []
    for arch in t.archs:
        specs.append(ModelSpec(f"transfer/{arch}-d", arch, t.width, "d", "standard", p.source_on["standard"],
                               group="transfer"))
        if arch == p.arch and t.width == p.width:
            specs.append(ModelSpec("d_det", arch, p.width, "d_det", "standard", p.train_on["d_det"]))
        else:
            specs.append(ModelSpec(f"transfer/{arch}-d_det", arch, t.width, "d_det", "standard", p.train_on["d_det"],
                                   group="transfer"))
    return specs


def reused_models(params: Params, data_dir, device) -> dict:
    """The main models that Figure 3 reuses (see `transfer_specs`), by spec name, in the shape
    `train_unit` returns."""
    out = {}
    for spec in transfer_specs(params):
        if spec.group != "transfer":
            model, meta = load_made_model(model_dir(data_dir, spec.name), device,
                                          rebuild_command(spec.name, spec.train_set))
            out[spec.name] = {"model": model, "meta": meta, "history": []}
    return out


def transfer_to_train(params: Params) -> list[ModelSpec]:
    """Figure 3's models that the transfer stage trains itself."""
    return [spec for spec in transfer_specs(params) if spec.group == "transfer"]


def measure_transfer(params: Params, trained: dict, split: Split, data_dir, device, run_id: str) -> dict:
    """Figure 3 from trained transfer models ({spec name: train_unit output}): transfer success of
    D_det-style examples made on the standard source model, and accuracy after training on D_det."""
    p, t = params.profile, params.profile.transfer
    source, source_meta = load_made_model(model_dir(data_dir, "standard"), device, rebuild_command("standard", "d"))
    # n / 10 test images of each class (the test arrays are sorted by class: their first n would not be)
    pick = torch.from_numpy(balanced_subset(split.test_y.numpy(), t.n, p.subset.seed))
    n = len(pick)
    pgd = construct_params(p, "d_det")  # D_det's construction, as Figure 3's "D_det-style" says
    bf16 = bf16_for(params, device)
    adv, targets = make_transfer_examples(source, split.test_x[pick], split.test_y[pick], pgd.eps, pgd.steps,
                                          pgd.step_size, p.evaluate.batch_size, device, bf16=bf16,
                                          use_best=pgd.use_best)
    metrics, rows = {}, []
    for spec in transfer_specs(params):
        model = trained[spec.name]["model"].to(device)
        if spec.train_set == "d":
            rate = transfer_success(model, adv, targets, p.evaluate.batch_size, device, bf16)
            rows.append({"source_model_id": source_meta["model_id"], "target_model_id": spec.model_id(p.name),
                         "target_arch": spec.arch, "profile": p.name, "attack": "pgd_l2_targeted_next",
                         "eps": pgd.eps, "steps": pgd.steps, "step_size": pgd.step_size, "use_best": pgd.use_best,
                         "success_rate": rate, "n": n,
                         "run_id": run_id, "created_at": results.now_utc(),
                         "source_checkpoint_sha256": source_meta["checkpoint_sha256"],
                         "target_checkpoint_sha256": trained[spec.name]["meta"]["checkpoint_sha256"]})
            metrics.setdefault(spec.arch, {})["transfer_success"] = round(rate, 4)
            log.info("transfer from the standard %s to %s: %.1f%% reach the target", source_meta["arch"],
                     spec.arch, 100 * rate)
        else:
            correct = (predict(model, split.test_x, p.evaluate.batch_size, device, bf16) == split.test_y).float()
            metrics.setdefault(spec.arch, {})["d_det_clean"] = round(correct.mean().item(), 4)
    results.append("transfer", rows, results_root(data_dir))
    return metrics


def stage_transfer(params: Params, data_dir="data", device: str = "auto", units: Units = LOCAL,
                   deadline: Deadline | None = None, split: Split | None = None) -> dict:
    """Train each architecture on D and on D_det, evaluate them, then measure transfer (Figure 3).
    With a parallel runner and several GPUs, the models train side by side."""
    devs = stage_devices(device, units.parallel)
    dev = devs[0]
    p = params.profile
    with recorded_run("transfer", params, data_dir, dev, [model_dir(data_dir, "standard") / "meta.json",
                                                          dataset_dir(data_dir, "d_det") / "manifest.json",
                                                          model_dir(data_dir, "d_det") / "meta.json"],
                      bf16_for(params, dev)) as run_id:
        split = split or load_split(params, data_dir)
        det_x, det_y = load_training_set(data_dir, "d_det")
        sets = {"d": (split.train_x, split.train_y), "d_det": (det_x, det_y)}
        new = transfer_to_train(params)
        calls = [(params, spec, *sets[spec.train_set], data_dir, devs[i % len(devs)], run_id, deadline)
                 for i, spec in enumerate(new)]
        trained = dict(zip([spec.name for spec in new], units.map(units.train, calls)))
        for spec in new:
            model, meta = trained[spec.name]["model"].to(dev), trained[spec.name]["meta"]
            units.evaluate(params, model, meta["model_id"], meta["checkpoint_sha256"], split, p.evaluate, data_dir,
                           dev, run_id)
        trained.update(reused_models(params, data_dir, dev))  # trained and evaluated by their own stage
        metrics = measure_transfer(params, trained, split, data_dir, dev, run_id)
        write_metrics(data_dir, "transfer", metrics)
    return metrics


def trained_models(data_dir) -> list[Path]:
    return sorted(p.parent for p in (Path(data_dir) / "models").rglob("meta.json"))


def stage_reevaluate(params: Params, data_dir="data", device: str = "auto", units: Units = LOCAL,
                     deadline: Deadline | None = None) -> dict:
    """Re-score every trained model under the profile's `reevaluate` suite; rows are appended.

    A pass keeps the models it has scored in work/reevaluate.json, so that a pass cut short (killed,
    or out of time: `deadline`) continues with the models left; the file goes when the pass ends. One pass
    at a time per data folder (a second raises Busy): two would share that file and score models twice.
    Weights on disk that the `models` table does not list as the model's latest (put back by `dvc checkout`
    or DVC's run cache, which run no code and so write no rows) are recorded there first, so that the rows
    scored now are matched to them."""
    with exclusive(Path(data_dir) / "work" / "reevaluate.lock", "a reevaluate pass on this data folder"):
        return _reevaluate(params, data_dir, device, units, deadline)


def _reevaluate(params: Params, data_dir, device: str, units: Units, deadline: Deadline | None) -> dict:
    dev = pick_device(device)
    progress_path = Path(data_dir) / "work" / "reevaluate.json"
    suite = sha256_bytes(f"{params.profile.name} {params.profile.reevaluate!r}".encode())[:16]
    progress = {"suite": suite, "scored": {}}
    if progress_path.exists():
        with contextlib.suppress(ArtefactError):
            earlier = read_json(progress_path)
            if isinstance(earlier, dict) and earlier.get("suite") == suite:
                progress = earlier
    folders = trained_models(data_dir)
    inputs = [Path(data_dir) / "cifar10/manifest.json", *(path / "meta.json" for path in folders)]
    with recorded_run("reevaluate", params, data_dir, dev, inputs, bf16_for(params, dev)) as run_id:
        split = load_split(params, data_dir)
        damaged = []  # (folder, error): one damaged model must not cost the others their scores

        def note_damaged(path: Path, e: ArtefactError) -> None:
            log.error("%s: not scored, going on with the others: %s", path, e)
            damaged.append((path, e))

        metas = []
        for path in folders:
            try:
                meta = read_json(path / "meta.json")
            except ArtefactError as e:  # whose model it is cannot be told: it counts against this pass
                note_damaged(path, e)
                continue
            if meta.get("profile") == params.profile.name:  # other profiles' models saw other data subsets
                metas.append((path, meta))
        recorded = _latest_checkpoints(data_dir)
        carried = []  # (model_id, run id) of the models an earlier, cut job of this pass scored
        for i, (path, meta) in enumerate(metas):
            scored = progress["scored"].get(meta["model_id"])
            if scored is not None and scored["sha256"] == meta["checkpoint_sha256"]:
                log.info("%s: scored by this pass already, before it was cut", meta["model_id"])
                carried.append((meta["model_id"], scored.get("run_id")))
                continue
            try:
                model, meta = load_model(path, dev)
            except ArtefactError as e:
                note_damaged(path, e)
                continue
            if recorded.get(meta["model_id"]) != meta["checkpoint_sha256"]:
                _record_weights_on_disk(data_dir, path, meta)
            metrics = units.evaluate(params, model, meta["model_id"], meta["checkpoint_sha256"], split,
                                     params.profile.reevaluate, data_dir, dev, run_id)
            progress["scored"][meta["model_id"]] = {"sha256": meta["checkpoint_sha256"], "metrics": metrics,
                                                    "run_id": run_id}
            write_json(progress_path, progress)
            if i + 1 < len(metas) and expired(deadline):
                raise Stopped(f"reevaluate: {deadline.reason} after {i + 1} of {len(metas)} models; the scored "
                              f"ones are listed in {progress_path}")
        _rows_again(data_dir, carried, run_id)
        if damaged:  # the pass fails, its progress kept: once they are rebuilt, a rerun scores only them
            raise ArtefactError(f"reevaluate: {len(damaged)} model folder(s) could not be read; every other model "
                                "was scored: " + "; ".join(str(e) for _, e in damaged))
    progress_path.unlink(missing_ok=True)
    return {model_id: scored["metrics"] for model_id, scored in progress["scored"].items()}


def clean_checkpoints(data_dir, dry_run: bool = False) -> dict:
    """Delete the training checkpoints that runs of another recipe, data or code set aside
    (`data/work/**/checkpoint-<signature>.pt`: train.py keeps them rather than overwrite hours of work). Not a
    run's own `checkpoint.pt`, which the next run of the same recipe resumes. `dry_run`: list them only."""
    found = sorted((Path(data_dir) / "work").rglob("checkpoint-*.pt"))
    sizes = {str(path): path.stat().st_size for path in found}
    if not dry_run:
        for path in found:
            path.unlink(missing_ok=True)
            log.info("removed %s (%.1f MB)", path, sizes[str(path)] / 1e6)
    return {"removed" if not dry_run else "would_remove": list(sizes), "bytes": sum(sizes.values())}


def _latest_checkpoints(data_dir) -> dict[str, str]:
    """{model_id: the checkpoint SHA-256 of its latest `models` row}."""
    models = results.load("models", results_root(data_dir)).sort_values("created_at", kind="stable")
    return dict(zip(models["model_id"], models["checkpoint_sha256"], strict=True))


def _record_weights_on_disk(data_dir, path: Path, meta: dict) -> None:
    """A `models` row for the checkpoint in `path`, from its meta.json: weights that the model's latest row
    does not describe (put back by DVC without running a stage). The row keeps the run its meta.json names
    (the last to save them); its time is now, when they became the model's current weights again."""
    log.info("%s: the weights in %s (saved by run %s) are not the latest the models table lists; recorded",
             meta["model_id"], path, meta["run_id"])
    results.append("models", [models_row(path, meta)], results_root(data_dir))


def _rows_again(data_dir, carried: list[tuple[str, str | None]], run_id: str) -> None:
    """The evaluation rows that cut jobs of a pass wrote for `carried` (model id, their run id),
    appended again under this job's run id (one read, one part file), so that the job that ends the
    pass (runs.status ok) holds the rows of every model the pass scored."""
    carried = [(m, r) for m, r in carried if r is not None and r != run_id]
    if not carried:
        return
    wanted = set(carried)
    rows = results.load("evaluations", results_root(data_dir)).to_dict("records")
    again = [{**r, "run_id": run_id} for r in rows if (r["model_id"], r["run_id"]) in wanted]
    results.append("evaluations", again, results_root(data_dir))


def stage_report(params: Params, data_dir="data", out_dir: str | None = None, device: str = "auto") -> dict:
    from notbugs.report import build_report

    out = Path(out_dir) if out_dir else Path(data_dir) / "report"
    with recorded_run("report", params, data_dir, pick_device(device)):
        paths = build_report(results_root(data_dir), data_dir, out, params.profile.name, params.deviations())
        paths.update(write_plot_tables(paths["summary"], out))
    return {k: str(v) for k, v in paths.items()}


def write_plot_tables(summary_path: Path, out: Path) -> dict:
    """Figure 2 and Figure 3 as CSV files, for `dvc plots` (ours and the paper's side by side)."""
    summary = read_json(summary_path)

    def cell(value) -> str:  # a value not measured (yet) is an empty cell, which dvc plots skips
        return "" if value is None else str(value)

    fig2 = ["label,set,source,clean,robust"]
    # Table 1's D is Figure 2's standard model: listed once
    table1 = [(key, row) for key, row in summary["table1"].items() if key != "d"]
    for key, row in list(summary["figure2"].items()) + table1:
        for source, clean, robust in (("ours", row.get("clean"), row.get("robust")),
                                      ("paper", row.get("paper_clean"), row.get("paper_robust"))):
            fig2.append(f"{key} ({source}),{key},{source},{cell(clean)},{cell(robust)}")
    fig3 = ["arch,transfer_success,d_det_acc"]
    fig3 += [f"{arch},{cell(p['transfer_success'])},{cell(p['d_det_acc'])}"
             for arch, p in summary["figure3"]["points"].items()]
    paths = {"figure2_csv": out / "figure2.csv", "figure3_csv": out / "figure3.csv"}
    atomic_write_bytes(paths["figure2_csv"], ("\n".join(fig2) + "\n").encode())
    atomic_write_bytes(paths["figure3_csv"], ("\n".join(fig3) + "\n").encode())
    return paths
