"""The pipeline as Prefect flows. Each flow calls its `notbugs.stages` function with `units()`, so the
stage's units (models, shards, evaluations) run as Prefect tasks: every unit shows up, retries and
logs on its own, and the stage's sequence lives in one place, the library.

On a machine with several GPUs, independent units (shards, transfer models) run side by side, one
per GPU; on one GPU or a CPU they run one after the other, in the flow's thread (see `units`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from notbugs import stages as S
from notbugs import warmup
from notbugs.config import DATASETS, load_params
from notbugs.storage import read_json
from tasks import build_shard, evaluate_model, fetch_data, publish_table, render_report, train_model

RUNNER = ThreadPoolTaskRunner(max_workers=max(torch.cuda.device_count(), 1))


def submit_all(task, calls: list[tuple]) -> list:
    """Submit every call to the flow's task runner (one worker per GPU), then wait for all of them."""
    futures = [task.submit(*args) for args in calls]
    return [f.result() for f in futures]


def units(device: str = "auto", gpu_tag: str | None = None) -> S.Units:
    """A stage's unit runners as Prefect tasks.

    Independent units (shards, transfer models) go to the flow's task runner only when the stage
    spreads them over several GPUs. On one device they run in order in the flow's own thread, each
    still a task run: torch work in a second thread gives the process a second OpenMP team, and
    libgomp, then seeing more OpenMP threads than cores, stops spin-waiting at its barriers (on our
    2-core CPU, training steps at 0.74-0.83x the main thread's rate; bench/measured/cpu-2026-11-27/
    prefect-overhead/).

    With `gpu_tag`, the units that use the accelerator carry that tag, so that a server-side tag
    concurrency limit (`prefect concurrency-limit create gpu N`) bounds them across flows sharing
    GPUs. Off by default because a tag is not free: with Prefect 3.9 every tagged task asks the
    server for a slot lease, and one that follows a long tagged task waited about 2 s for it, even
    with no limit defined (0.003 s untagged; same folder).
    """
    train, evaluate, build = train_model, evaluate_model, build_shard
    if gpu_tag:
        train, evaluate, build = (t.with_options(tags=[gpu_tag]) for t in (train, evaluate, build))
    several = len(S.stage_devices(device, parallel=True)) > 1  # the stage's own rule
    return S.Units(train=train, evaluate=evaluate, build=build, map=submit_all if several else S.run_in_order,
                   parallel=True)


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
                device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    metrics = S.stage_source(params, kind, data_dir, device, units(device, gpu_tag))
    model_id = S.source_spec(params, kind).model_id(params.profile.name)
    publish_table(f"source-{kind}", _rows(metrics, model=model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


@flow(name="construct", flow_run_name="construct-{name}", log_prints=True, task_runner=RUNNER)
def construct_flow(name: str, params_path: str = "params.yaml", profile: str | None = None,
                   data_dir: str = "data", device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    stats = S.stage_construct(params, name, data_dir, device, units(device, gpu_tag))
    out = S.dataset_dir(data_dir, name)
    shards = [{"shard": k, **read_json(out / f"shard-{k:05d}.json")["stats"]}
              for k in range(len(read_json(out / "manifest.json")["shards"]))]
    publish_table(f"construct-{name}", shards or [stats], f"{name}: per-shard statistics")
    return stats


@flow(name="train", flow_run_name="train-{name}", log_prints=True)
def train_flow(name: str, params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
               device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    metrics = S.stage_train(params, name, data_dir, device, units(device, gpu_tag))
    model_id = S.train_spec(params, name).model_id(params.profile.name)
    publish_table(f"train-{name}", _rows(metrics, model=model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


@flow(name="transfer", log_prints=True, task_runner=RUNNER)
def transfer_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                  device: str = "auto", gpu_tag: str | None = None) -> dict:
    """Figure 3. The models train side by side when there are several GPUs, then the rates are measured."""
    params = load_params(params_path, profile)
    metrics = S.stage_transfer(params, data_dir, device, units(device, gpu_tag))
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
                    device: str = "auto", gpu_tag: str | None = None) -> dict:
    """Re-score every trained model under the current `reevaluate` suite; rows are appended."""
    params = load_params(params_path, profile)
    summary = S.stage_reevaluate(params, data_dir, device, units(device, gpu_tag))
    publish_table("reevaluate", [{"model": m, **v} for m, v in summary.items()] or [{"model": "none"}],
                  "re-evaluation of every trained model")
    return summary


@flow(name="reproduce", log_prints=True)
def reproduce(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
              device: str = "auto", gpu_tag: str | None = None) -> dict:
    """The whole DAG from Prefect alone (for users who drive everything from the UI)."""
    kw = {"params_path": params_path, "profile": profile, "data_dir": data_dir, "device": device}
    fetch_flow(**kw)
    # construction's compile in a second process beside the source models, as `notbugs all` does
    params = load_params(params_path, profile)
    todo = {"source@standard", "source@robust", *(f"construct@{n}" for n in DATASETS)}  # this flow reruns them all
    dev = S.pick_device(device)
    ahead = warmup.sets_to_warm(params, todo, dev)
    warming = warmup.start(params, ahead, data_dir, dev) if ahead else None
    try:
        for kind in ("standard", "robust"):
            source_flow(kind, **kw, gpu_tag=gpu_tag)
        warmup.finish(warming)
    finally:
        warmup.stop(warming)
    for name in DATASETS:
        construct_flow(name, **kw, gpu_tag=gpu_tag)
    for name in DATASETS:
        train_flow(name, **kw, gpu_tag=gpu_tag)
    transfer_flow(**kw, gpu_tag=gpu_tag)
    return report_flow(**kw)
