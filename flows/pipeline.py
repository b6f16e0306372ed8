"""The pipeline as Prefect flows. Each flow is the matching `notbugs.stages` function with its units
(models, shards, evaluations) run as tasks, so every unit shows up, retries and logs on its own.

On a machine with several GPUs, independent units (shards, transfer models) run side by side, one
per GPU; on one GPU or a CPU they run one after the other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from notbugs import stages as S
from notbugs.config import DATASETS, load_params
from notbugs.train import pick_device
from tasks import build_shard, evaluate_model, fetch_data, publish_table, render_report, train_model

RUNNER = ThreadPoolTaskRunner(max_workers=max(torch.cuda.device_count(), 1))


def devices(device: str) -> list[str]:
    """All visible GPUs when device is auto and there are several, else the one device asked for."""
    if device == "auto" and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(pick_device(device))]


def _rows(metrics: dict, **key) -> list[dict]:
    return [{**key, "metric": k, "value": v} for k, v in metrics.items()]


@flow(name="fetch", log_prints=True)
def fetch_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
               device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    manifest = fetch_data(params, data_dir, device)
    publish_table("fetch", [{"split": s, "images": n} for s, n in manifest["counts"].items()],
                  f"CIFAR-10 from {manifest['origin']}")
    return manifest["counts"]


@flow(name="source", flow_run_name="source-{kind}", log_prints=True)
def source_flow(kind: str, params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    dev = pick_device(device)
    spec = S.source_spec(params, kind)
    with S.recorded_run(f"source@{kind}", params, data_dir, dev, [Path(data_dir) / "cifar10/manifest.json"]) as run_id:
        split = S.load_split(params, data_dir)
        out = train_model(params, spec, split.train_x, split.train_y, data_dir, dev, run_id)
        model_id = out["meta"]["model_id"]
        metrics = evaluate_model(params, out["model"], model_id, split, params.profile.evaluate, data_dir, dev, run_id)
    S._write_metrics(data_dir, f"source_{kind}", metrics)
    publish_table(f"source-{kind}", _rows(metrics, model=model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


@flow(name="construct", flow_run_name="construct-{name}", log_prints=True, task_runner=RUNNER)
def construct_flow(name: str, params_path: str = "params.yaml", profile: str | None = None,
                   data_dir: str = "data", device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    devs = devices(device)
    src = "robust" if name == "d_r" else "standard"
    with S.recorded_run(f"construct@{name}", params, data_dir, pick_device(devs[0]),
                        [S.model_dir(data_dir, src) / "meta.json"]) as run_id:
        jobs = [S.prepare_construct(params, name, data_dir, d) for d in devs]  # one model copy per GPU
        (jobs[0].out_dir / "manifest.json").unlink(missing_ok=True)
        pending = jobs[0].pending()
        futures = [build_shard.submit(jobs[i % len(jobs)], k) for i, k in enumerate(pending)]
        shard_stats = [f.result() for f in futures]
        stats = S.finish_construct(params, jobs[0], data_dir, run_id)
    S._write_metrics(data_dir, f"construct_{name}", {k: round(v, 4) for k, v in stats.items()})
    publish_table(f"construct-{name}", [{"shard": k, **s} for k, s in zip(pending, shard_stats)] or [stats],
                  f"{name}: per-shard statistics of this run (shards built earlier were kept)")
    return stats


@flow(name="train", flow_run_name="train-{name}", log_prints=True)
def train_flow(name: str, params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
               device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    dev = pick_device(device)
    p = params.profile
    spec = S.train_spec(params, name)
    with S.recorded_run(f"train@{name}", params, data_dir, dev,
                        [S.dataset_dir(data_dir, name) / "manifest.json"]) as run_id:
        x, y = S.load_training_set(data_dir, name)
        split = S.load_split(params, data_dir)
        out = train_model(params, spec, x, y, data_dir, dev, run_id)
        model_id = out["meta"]["model_id"]
        metrics = evaluate_model(params, out["model"], model_id, split, p.evaluate, data_dir, dev, run_id)
        metrics["train_acc_final"] = round(out["history"][-1]["train_acc"], 4)
    S._write_metrics(data_dir, f"train_{name}", metrics)
    publish_table(f"train-{name}", _rows(metrics, model=model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


@flow(name="transfer", log_prints=True, task_runner=RUNNER)
def transfer_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                  device: str = "auto") -> dict:
    """Figure 3. The models train side by side when there are several GPUs, then the rates are measured."""
    params = load_params(params_path, profile)
    devs = devices(device)
    p = params.profile
    with S.recorded_run("transfer", params, data_dir, pick_device(devs[0]),
                        [S.model_dir(data_dir, "standard") / "meta.json",
                         S.dataset_dir(data_dir, "d_det") / "manifest.json",
                         S.model_dir(data_dir, "d_det") / "meta.json"]) as run_id:
        split = S.load_split(params, data_dir)
        det_x, det_y = S.load_training_set(data_dir, "d_det")
        dev = pick_device(devs[0])
        new = S.transfer_to_train(params)  # the other Figure 3 models are reused main models
        futures = []
        for i, spec in enumerate(new):
            x, y = (split.train_x, split.train_y) if spec.train_set == "d" else (det_x, det_y)
            futures.append(train_model.submit(params, spec, x, y, data_dir, pick_device(devs[i % len(devs)]), run_id))
        trained = {spec.name: f.result() for spec, f in zip(new, futures)}
        trained.update(S.reused_models(params, data_dir, dev))
        for spec in new:
            out = trained[spec.name]
            out["model"].to(dev)
            evaluate_model(params, out["model"], out["meta"]["model_id"], split, p.evaluate, data_dir, dev, run_id)
        metrics = S.measure_transfer(params, trained, split, data_dir, dev, run_id)
    S._write_metrics(data_dir, "transfer", metrics)
    publish_table("transfer", [{"arch": a, **m} for a, m in metrics.items()],
                  "Figure 3: transfer success from the standard source model vs accuracy after training on D_det")
    return metrics


@flow(name="report", log_prints=True)
def report_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                out_dir: str | None = None, device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    paths = render_report(params, data_dir, out_dir, device)
    publish_table("report", [{"file": k, "path": v} for k, v in paths.items()], "the rendered report")
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key="report", markdown=Path(paths["markdown"]).read_text(),
                                 description="the report (Markdown version)")
    except (KeyError, OSError):
        pass
    return paths


@flow(name="reevaluate", log_prints=True)
def reevaluate_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                    device: str = "auto") -> dict:
    """Re-score every trained model under the current `reevaluate` suite; rows are appended."""
    params = load_params(params_path, profile)
    dev = pick_device(device)
    summary = {}
    with S.recorded_run("reevaluate", params, data_dir, dev) as run_id:
        split = S.load_split(params, data_dir)
        for path in S.trained_models(data_dir):
            model, meta = S.load_model(path, dev)
            if meta.get("profile") != params.profile.name:
                continue
            summary[meta["model_id"]] = evaluate_model(params, model, meta["model_id"], split,
                                                       params.profile.reevaluate, data_dir, dev, run_id)
    publish_table("reevaluate", [{"model": m, **v} for m, v in summary.items()] or [{"model": "none"}],
                  "re-evaluation of every trained model")
    return summary


@flow(name="reproduce", log_prints=True)
def reproduce(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
              device: str = "auto") -> dict:
    """The whole DAG from Prefect alone (for users who drive everything from the UI)."""
    kw = {"params_path": params_path, "profile": profile, "data_dir": data_dir, "device": device}
    fetch_flow(**kw)
    for kind in ("standard", "robust"):
        source_flow(kind, **kw)
    for name in DATASETS:
        construct_flow(name, **kw)
    for name in DATASETS:
        train_flow(name, **kw)
    transfer_flow(**kw)
    return report_flow(**kw)
