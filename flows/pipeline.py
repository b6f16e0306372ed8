"""The pipeline as Prefect flows. Each flow calls its `notbugs.stages` function with `units()`, so the
stage's units (models, shards, evaluations) run as Prefect tasks: every unit shows up, retries and
logs on its own, and the stage's sequence lives in one place, the library.

On a machine with several GPUs, independent units (shards, transfer models) run side by side, one
per GPU; on one GPU or a CPU they run one after the other, in the flow's thread (see `units`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from notbugs import stages as S
from notbugs.cli import run_all
from notbugs.config import load_params
from notbugs.units import Units, run_in_order, stage_devices
from tasks import build_shard, evaluate_model, fetch_data, publish_table, render_report, train_model


def _forward_library_logs(as_script: bool) -> None:
    """The library's `notbugs` logger at INFO, its lines shipped to the Prefect UI. flows/__init__.py asks
    Prefect for it through PREFECT_LOGGING_EXTRA_LOGGERS, but a deployment's worker loads this file as a
    script (not as `flows.pipeline`), after Prefect has set up its logging: then the handler is added here.
    Not otherwise, where it would also take the lines logged outside any flow run (a test's), with a warning
    for each."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("notbugs")
    logger.setLevel(logging.INFO)
    if as_script and not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())


_forward_library_logs(as_script=__name__ != "flows.pipeline")

RUNNER = ThreadPoolTaskRunner(max_workers=max(torch.cuda.device_count(), 1))


def submit_all(task, calls: list[tuple], lanes: int) -> list:
    """Submit every call to the flow's task runner (one worker per GPU), then wait for all of them.

    The stage puts call i on device i % lanes (`notbugs.units.Units`), so each call waits for the one
    before it on its device: never two units on one card, whichever finishes first. (Without the wait, a
    worker freed on card 1 would take the next call in the queue, which may be card 0's.) A call only waits
    for one submitted before it, so the pool cannot deadlock."""
    futures = []
    for i, args in enumerate(calls):
        futures.append(task.submit(*args, wait_for=[futures[i - lanes]] if i >= lanes else None))
    return [f.result() for f in futures]


def units(device: str = "auto", gpu_tag: str | None = None) -> Units:
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
    lanes = len(stage_devices(device, parallel=True))  # the stage's own rule
    spread = functools.partial(submit_all, lanes=lanes) if lanes > 1 else run_in_order
    return Units(train=train, evaluate=evaluate, build=build, map=spread, parallel=True)


def _rows(metrics: dict, **key) -> list[dict]:
    return [{**key, "metric": k, "value": v} for k, v in metrics.items()]


@flow(name="fetch", flow_run_name="fetch", log_prints=True)
def fetch_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
               device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    manifest = fetch_data(params, data_dir, device)
    publish_table(params, "fetch", [{"split": s, "images": n} for s, n in manifest["counts"].items()],
                  f"CIFAR-10 from {manifest['origin']}")
    return manifest["counts"]


@flow(name="source", flow_run_name="source-{kind}", log_prints=True)
def source_flow(kind: str, params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    metrics = S.stage_source(params, kind, data_dir, device, units(device, gpu_tag))
    model_id = S.source_spec(params, kind).model_id(params.profile.name)
    publish_table(params, f"source-{kind}", _rows(metrics, model=model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


@flow(name="construct", flow_run_name="construct-{name}", log_prints=True, task_runner=RUNNER)
def construct_flow(name: str, params_path: str = "params.yaml", profile: str | None = None,
                   data_dir: str = "data", device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    stats = S.stage_construct(params, name, data_dir, device, units(device, gpu_tag))
    shards = S.shard_stats(data_dir, name)
    publish_table(params, f"construct-{name}", shards or [stats], f"{name}: per-shard statistics")
    return stats


@flow(name="train", flow_run_name="train-{name}", log_prints=True)
def train_flow(name: str, params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
               device: str = "auto", gpu_tag: str | None = None) -> dict:
    params = load_params(params_path, profile)
    metrics = S.stage_train(params, name, data_dir, device, units(device, gpu_tag))
    model_id = S.train_spec(params, name).model_id(params.profile.name)
    publish_table(params, f"train-{name}", train_rows(metrics, model_id), "accuracy on the real CIFAR-10 test set")
    return metrics


def train_rows(metrics: dict, model_id: str) -> list[dict]:
    """The train stage's artifact: the first model's metrics, then, with the profile's `trainees` above 1, the mean
    and sd of each over all of them."""
    rows = _rows({k: v for k, v in metrics.items() if k != "trainees"}, model=model_id)
    spread = metrics.get("trainees")
    if spread:
        rows += [{"model": f"all {spread['n']} trainees", "metric": f"{k} ({stat})", "value": v[stat]}
                 for k, v in spread.items() if k != "n" for stat in ("mean", "sd")]
    return rows


@flow(name="transfer", flow_run_name="transfer", log_prints=True, task_runner=RUNNER)
def transfer_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                  device: str = "auto", gpu_tag: str | None = None) -> dict:
    """Figure 3. The models train side by side when there are several GPUs, then the rates are measured."""
    params = load_params(params_path, profile)
    metrics = S.stage_transfer(params, data_dir, device, units(device, gpu_tag))
    publish_table(params, "transfer", [{"arch": a, **m} for a, m in metrics.items()],
                  "Figure 3: transfer success from the standard source model vs accuracy after training on D_det")
    return metrics


@flow(name="report", flow_run_name="report", log_prints=True)
def report_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                out_dir: str | None = None, device: str = "auto") -> dict:
    params = load_params(params_path, profile)
    paths = render_report(params, data_dir, out_dir, device)
    publish_table(params, "report-files", [{"file": k, "path": v} for k, v in paths.items()], "the rendered report")
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=f"{params.profile.name}-report", markdown=Path(paths["markdown"]).read_text(),
                                 description="the report (Markdown version)")
    except (KeyError, OSError):
        pass
    return paths


@flow(name="reevaluate", flow_run_name="reevaluate", log_prints=True)
def reevaluate_flow(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
                    device: str = "auto", gpu_tag: str | None = None) -> dict:
    """Re-score every trained model under the current `reevaluate` suite; rows are appended."""
    params = load_params(params_path, profile)
    summary = S.stage_reevaluate(params, data_dir, device, units(device, gpu_tag))
    publish_table(params, "reevaluate", [{"model": m, **v} for m, v in summary.items()] or [{"model": "none"}],
                  "re-evaluation of every trained model")
    return summary


@flow(name="reproduce", flow_run_name="reproduce", log_prints=True)
def reproduce(params_path: str = "params.yaml", profile: str | None = None, data_dir: str = "data",
              device: str = "auto", gpu_tag: str | None = None, redo: bool = False) -> dict:
    """The whole DAG from Prefect alone (for users who drive everything from the UI), one subflow per step.
    As `notbugs all`: a step done with the same parameters, code and data is skipped (`redo` reruns it), and
    construction compiles ahead while the source models train."""
    params = load_params(params_path, profile)
    kw = {"params_path": params_path, "profile": profile, "data_dir": data_dir, "device": device}
    report = {}

    def run_step(step: str) -> None:
        stage, _, item = step.partition("@")
        if stage == "fetch":
            fetch_flow(**kw)
        elif stage == "source":
            source_flow(item, **kw, gpu_tag=gpu_tag)
        elif stage == "construct":
            construct_flow(item, **kw, gpu_tag=gpu_tag)
        elif stage == "train":
            train_flow(item, **kw, gpu_tag=gpu_tag)
        elif stage == "transfer":
            transfer_flow(**kw, gpu_tag=gpu_tag)
        else:
            report.update(report_flow(**kw))

    run_all(params, data_dir, device, redo=redo, run_step=run_step)
    return report
