"""The pipeline's units of work as Prefect tasks. Each is one call into the plain library."""

from __future__ import annotations

import logging

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from notbugs import stages as S
from notbugs.attacks import NonFiniteError
from notbugs.config import ConfigError
from notbugs.data import DataError, DownloadError
from notbugs.deadline import Stopped
from notbugs.record import Busy
from notbugs.storage import ArtefactError
from notbugs.units import ConstructJob, ModelSpec, evaluate_unit, train_unit

log = logging.getLogger("notbugs")

# Errors that a second try would meet again: damaged or missing data and artefacts (their message
# names the file and the command that rebuilds it), a diverged training, bad parameters, a job out of time,
# the same step already running on the data folder (for minutes or hours, not the 10 s of a retry's delay).
REPEATS = (ArtefactError, DataError, NonFiniteError, ConfigError, Stopped, Busy)
# CUDA errors after which the process's CUDA context is unusable: a retry in the same process fails the same
# way (PyTorch's messages for them).
STICKY_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
               "illegal instruction")


def worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition: retry anything but the errors that would repeat. A failed download is
    worth a retry (a dropped connection, a timeout) though its class is a DataError."""
    error = state.data
    if isinstance(error, DownloadError):
        return True
    if isinstance(error, RuntimeError) and any(text in str(error) for text in STICKY_CUDA):
        return False
    return not isinstance(error, REPEATS)


# Transient failures (a preempted GPU, a flaky filesystem) get retried; the units resume from their
# checkpoints and finished shards, so a retry costs at most one checkpoint interval. Tensors flow
# between tasks in-process, so results are not cached or persisted by Prefect (cache_policy=NONE).
RETRY = {"retries": 2, "retry_delay_seconds": 10, "cache_policy": NONE, "retry_condition_fn": worth_retrying}


@task(name="fetch CIFAR-10", **RETRY)
def fetch_data(params, data_dir: str, device: str) -> dict:
    return S.stage_fetch(params, data_dir, device)


@task(name="train model", task_run_name="train {spec.name}", **RETRY)
def train_model(params, spec: ModelSpec, x, y, data_dir: str, device, run_id: str, deadline=None) -> dict:
    return train_unit(params, spec, x, y, data_dir, device, run_id, deadline)


@task(name="evaluate model", task_run_name="evaluate {model_id}", **RETRY)
def evaluate_model(params, model, model_id: str, checkpoint_sha256: str, split, cfg, data_dir: str, device,
                   run_id: str) -> dict:
    return evaluate_unit(params, model, model_id, checkpoint_sha256, split, cfg, data_dir, device, run_id)


@task(name="build shard", task_run_name="build {job.name} shard {k}", **RETRY)
def build_shard(job: ConstructJob, k: int) -> dict:
    return job.build(k)


@task(name="render report", **RETRY)
def render_report(params, data_dir: str, out_dir, device: str) -> dict:
    return S.stage_report(params, data_dir, out_dir, device)


def publish_table(params, key: str, rows: list[dict], description: str) -> None:
    """A table artifact on the current flow run (shown in the Prefect UI's Artifacts tab), keyed by profile
    and stage (`cpu-train-d-r`), so that a key's history follows one profile's results."""
    safe = f"{params.profile.name}-{key}".replace("_", "-").replace("@", "-").lower()
    create_table_artifact(key=safe, table=rows, description=description)
