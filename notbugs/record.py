"""What a stage run leaves beside its outputs, and what it holds while it runs: the step's lock (`exclusive`,
`Busy`), where a data folder keeps models, sets and result tables, the run's provenance (code version, device,
precision, library versions, the hashes of its inputs), its `runs` row and the marker a finished step leaves
(`recorded_run`), and its metrics JSON for DVC. Plumbing, like stages.py: in no step's code (steps.STEP_CODE),
so an edit here reruns nothing but the report."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import torch

from notbugs import results, steps
from notbugs.attacks import precision_name, use_bf16
from notbugs.config import Params
from notbugs.deadline import Stopped
from notbugs.sets import TRAINEE, trainee_number
from notbugs.storage import sha256_file, write_json

log = logging.getLogger("notbugs")


class Busy(RuntimeError):
    """Another process is doing the same work on the same data folder."""


@contextlib.contextmanager
def exclusive(path: Path, what: str):
    """Hold an exclusive lock on `path` while the block runs, or raise Busy naming the holder. The lock is
    flock's: the kernel drops it when its process dies, so a killed run leaves no stale lock behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise Busy(f"{what} is already running ({holder}; lock file {path}): let it finish, or stop it "
                       f"first") from None
        except OSError as e:  # a file system without flock (NFS without lockd, Lustre without -o flock)
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.warning("%s: %s cannot be locked on this file system (%s); running without the lock, so start no "
                        "second one on this data folder", what, path, e.strerror)
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- paths and provenance

def model_dir(data_dir, name: str) -> Path:
    return Path(data_dir) / "models" / name


def trainee_dirs(data_dir, name: str) -> list[Path]:
    """The folders of the models beyond the first trained on constructed set `name` (the profile's `trainees`),
    data/models/<name>/trainee-<k>, in order of k."""
    found = [p for p in model_dir(data_dir, name).glob(f"{TRAINEE}*") if trainee_number(p.name) is not None]
    return sorted(found, key=lambda p: trainee_number(p.name))


def dataset_dir(data_dir, name: str) -> Path:
    return Path(data_dir) / "datasets" / name


def results_root(data_dir) -> Path:
    return Path(data_dir) / "results"


# What "+dirty" looks at: the code a stage runs. Not dvc.lock, which `dvc repro` rewrites after every stage
# (every stage after the first would read dirty), nor params.yaml, whose values each row records (params_hash,
# the models' recipe). New files count: a module not yet committed may be what ran.
CODE_PATHS = ("notbugs", "flows", "tasks", "pyproject.toml")


def code_version(root: str | Path | None = None) -> str:
    """The commit (12 hex digits) of the git tree holding `root` (the library by default), with "+dirty" when
    CODE_PATHS differ from it; "unknown" outside git."""
    cwd = Path(root) if root is not None else Path(__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=cwd).stdout.strip()
        if not rev:
            return "unknown"
        # ":/path": relative to the top of the tree, wherever `cwd` is in it
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *(f":/{p}" for p in CODE_PATHS)],
                               capture_output=True, text=True, timeout=10, cwd=cwd).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device, bf16: bool | None = None) -> str:
    """What a stage ran on, and in which precision when it computes with a model."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return name if bf16 is None else f"{name}, {precision_name(bf16)}"


def library_versions() -> dict:
    """The versions a result may depend on, and the host: a number measured under torch 2.11 and 2.14 can
    differ (a kernel, a default), and `device` alone does not say which ran."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "platform": platform.platform(), "host": socket.gethostname()}
    for package in ("torchvision", "numpy", "pandas", "pyarrow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def bf16_for(params: Params, device: torch.device) -> bool:
    """The profile's `precision` resolved on this device (auto: bf16 where the device has it natively)."""
    return use_bf16(params.profile.precision, device)


def _input_hashes(paths: list[Path]) -> str:
    """SHA-256 of each input's manifest / meta file (small files that hold the big files' checksums)."""
    out = {str(p): sha256_file(p) for p in paths if Path(p).exists()}
    return results.to_json(out)


@contextlib.contextmanager
def recorded_run(stage: str, params: Params, data_dir, device: torch.device, inputs: list[Path] = (),
                 bf16: bool | None = None):
    """Yield a run id; on exit append the stage's `runs` row, status ok or failed. `bf16`: the
    precision of a stage that computes with a model, recorded beside the device. A step of the pipeline
    (`steps.STEPS`) that finishes leaves its marker, so that `notbugs all` skips it however it was run
    (`notbugs <stage>`, a Prefect deployment, `dvc repro`); with the hash of what it read when it began.
    One run of a step at a time per data folder: a second (the same deployment run twice from the UI, a
    `notbugs` command beside `dvc repro`) raises Busy before it starts, where it would do the same work beside
    the first and append its rows twice."""
    step = stage in steps.STEPS and stage != "report"
    # flock conflicts between two open()s in one process too: a step's run must not start the same step inside it
    lock = Path(data_dir) / "work" / "locks" / f"{stage}.lock"
    with exclusive(lock, f"the step {stage} on this data folder") if step else contextlib.nullcontext():
        with _recorded(stage, params, data_dir, device, inputs, bf16, step) as run_id:
            yield run_id


@contextlib.contextmanager
def _recorded(stage: str, params: Params, data_dir, device: torch.device, inputs, bf16: bool | None, step: bool):
    run_id = results.new_run_id()
    started, t0 = results.now_utc(), time.perf_counter()
    status = "failed"
    step_hash = steps.current_hash(params, data_dir, stage) if step else None
    try:
        yield run_id
        status = "ok"
    except Stopped:
        status = "stopped"  # out of time: progress saved, the next job continues
        raise
    finally:
        try:
            results.append("runs", [{
                "run_id": run_id, "stage": stage, "profile": params.profile.name, "params_hash": params.hash(),
                "code_version": code_version(), "input_hashes": _input_hashes(list(inputs)),
                "device": device_name(device, bf16), "started_at": started, "ended_at": results.now_utc(),
                "wall_s": time.perf_counter() - t0, "status": status,
                "params": results.to_json({"profile": params.raw, "data": dataclasses.asdict(params.data)}),
                "versions": results.to_json(library_versions())}], results_root(data_dir))
        except Exception as e:
            if status == "ok":
                raise
            # The stage's own error (often the same cause, e.g. a full disk) names what it was writing;
            # an error raised here would replace it, and a second traceback would bury it.
            log.error("%s: could not record this %s run in the runs table either (%s)", stage, status, e)
    if step_hash is not None:  # last, once everything the step writes (outputs, metrics, rows) is written
        steps.mark_done(params, data_dir, stage, step_hash)


def write_metrics(data_dir, stage: str, metrics: dict) -> None:
    write_json(Path(data_dir) / "metrics" / f"{stage}.json", metrics)
