"""Fault injection: run a pipeline stage in a subprocess, SIGKILL it at a chosen moment, restart it.

The pieces, used by tests/test_faults.py:

- `stage_command` builds `python -m notbugs <stage> ... --device cpu`; `run_to_end` runs it
  uninterrupted and `run_and_kill` kills it after a delay, or a delay after a file (a glob under
  the data folder) first appears.
- `Ladder`: the uninterrupted reference pipeline, one step at a time, with a snapshot of the data
  folder before and after each step and the step's measured duration.
- Checks on a data folder: `temp_files`, `invalid_files` (every artefact still loads), plus
  readers of the logs (`completed_epochs`, `resumed_epoch`, `shards_resumed`, `shards_built`).

Subprocesses run with one thread: the runs are then bit-identical from one process to the next,
and a two-core machine shared with another job is not oversubscribed (two threads waiting on a
busy core made a tiny run four times slower).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
READY = "INFO notbugs: profile "  # logged by the CLI once imports and parameters are done
POLL_S = 0.001


# ---------------------------------------------------------------- running and killing

@dataclass
class Run:
    rc: int | None          # exit status; -9 when killed
    killed: bool            # SIGKILL arrived before the process ended on its own
    log: str                # stdout and stderr together
    wall_s: float
    ready_s: float | None   # when the READY line appeared (imports done)
    trigger_s: float | None = None  # when the kill trigger fired


@dataclass(frozen=True)
class KillAt:
    """Kill `delay` seconds after the start, or `delay` seconds after `pattern` (a glob under the
    data folder) first matches."""
    delay: float = 0.0
    pattern: str | None = None

    def __str__(self) -> str:
        return f"{self.pattern} +{self.delay:.2f}s" if self.pattern else f"{self.delay:.2f}s"


def stage_command(args: list[str], params: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "notbugs", *args, "--params", str(params), "--data-dir", str(data_dir),
            "--device", "cpu"]


def _launch(cmd: list[str], log_path: Path) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "wb")  # a file, not a pipe: the child never blocks on a full pipe
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT), log


def _watch(cmd: list[str], log_path: Path, should_kill, timeout: float, ready_line: str = READY) -> Run:
    proc, log = _launch(cmd, log_path)
    t0 = time.perf_counter()
    ready = trigger = None
    killed = False
    try:
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if now > timeout:
                proc.kill()
                raise TimeoutError(f"{' '.join(cmd[2:4])} ran past {timeout} s; log: {log_path}")
            if ready is None and ready_line in log_path.read_text(errors="replace"):
                ready = now
            fired = should_kill(now)
            if fired is not None:
                trigger = fired
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(POLL_S)
    finally:
        log.close()
    return Run(proc.returncode, killed, log_path.read_text(errors="replace"), time.perf_counter() - t0, ready,
               trigger)


def run_to_end(cmd: list[str], log_path: Path, timeout: float = 300, ready_line: str = READY) -> Run:
    return _watch(cmd, log_path, lambda now: None, timeout, ready_line)


def run_and_kill(cmd: list[str], log_path: Path, data_dir: Path, at: KillAt, timeout: float = 300,
                 ready_line: str = READY) -> Run:
    """Run `cmd` and SIGKILL it at `at`; a process that ends first is reported with killed=False.
    A file trigger fires on a match that was not there when the process started."""
    state = {"armed": None if at.pattern else 0.0}
    existing = set(Path(data_dir).glob(at.pattern)) if at.pattern else set()

    def should_kill(now):
        if state["armed"] is None and set(Path(data_dir).glob(at.pattern)) - existing:
            state["armed"] = now
        if state["armed"] is not None and now >= state["armed"] + at.delay:
            return now
        return None

    return _watch(cmd, log_path, should_kill, timeout, ready_line)


def kill_when_file_appears(code: str, watch: Path, pattern: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python -c code`, SIGKILL it as soon as `pattern` matches under `watch`."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not any(Path(watch).glob(pattern)):
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended before {pattern} appeared: {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{pattern} did not appear under {watch}")
        time.sleep(POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), "")


# ---------------------------------------------------------------- the reference pipeline

@dataclass
class Step:
    name: str
    args: list[str]
    before: Path
    after: Path
    run: Run


class Ladder:
    """The uninterrupted pipeline, built lazily one step at a time; each step starts from a copy of
    the folder the previous step left (`before`) and leaves its own (`after`)."""

    def __init__(self, root: Path, params: Path, first: Path, steps: dict[str, list[str]]):
        self.root, self.params, self.first, self.order = root, params, first, steps
        self.steps: dict[str, Step] = {}

    def __getitem__(self, name: str) -> Step:
        if name not in self.steps:
            names = list(self.order)
            i = names.index(name)
            before = self[names[i - 1]].after if i else self.first
            after = self.root / f"{i:02d}-{name.replace(' ', '-')}"
            shutil.copytree(before, after)
            cmd = stage_command(self.order[name], self.params, after)
            run = run_to_end(cmd, self.root / f"{i:02d}-{name.replace(' ', '-')}.log")
            assert run.rc == 0, f"reference {name} failed:\n{run.log[-3000:]}"
            self.steps[name] = Step(name, self.order[name], before, after, run)
        return self.steps[name]


# ---------------------------------------------------------------- checks on a data folder

def temp_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in Path(data_dir).rglob("*") if p.name.startswith((".tmp-", ".old-")))


def files(data_dir: Path) -> dict[str, os.stat_result]:
    """Every artefact (temporary files excluded), by path relative to `data_dir`."""
    return {str(p.relative_to(data_dir)): p.stat() for p in Path(data_dir).rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def invalid_files(data_dir: Path) -> list[str]:
    """Artefacts that do not load: a torn JSON, checkpoint, array, shard or result part."""
    from notbugs import results
    from notbugs.storage import load_tensors

    bad = []
    for rel in files(data_dir):
        path = Path(data_dir) / rel
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt":
                load_tensors(path)
            elif path.suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    [z[k] for k in z.files]
            elif path.suffix in (".csv", ".md", ".html", ".svg"):
                assert path.stat().st_size > 0, "empty"
        except Exception as e:  # noqa: BLE001 - any failure to read is what we are looking for
            bad.append(f"{rel}: {type(e).__name__}: {e}")
    for table in results.TABLES:
        try:
            results.load(table, Path(data_dir) / "results")
        except Exception as e:  # noqa: BLE001
            bad.append(f"results/{table}: {e}")
    return bad


# ---------------------------------------------------------------- what the logs say

_EPOCH_DONE = re.compile(r"epoch (\d+)/\d+ \[#{20}\]")
_EPOCH_ANY = re.compile(r"epoch (\d+)/\d+ \[")
_RESUMED = re.compile(r"resuming from \S+ at epoch (\d+)/\d+")
_SHARDS_KEPT = re.compile(r"(\d+) of (\d+) shards already built, resuming")
_SHARD_BUILT = re.compile(r"built \S+ shard (\d+) \(")


def completed_epochs(log: str) -> int:
    """The last epoch the log reports finished (the progress line of its last batch)."""
    return max((int(k) for k in _EPOCH_DONE.findall(log)), default=0)


def first_epoch(log: str) -> int | None:
    found = _EPOCH_ANY.findall(log)
    return int(found[0]) if found else None


def resumed_epoch(log: str) -> int | None:
    found = _RESUMED.findall(log)
    return int(found[0]) if found else None


def shards_resumed(log: str) -> int:
    found = _SHARDS_KEPT.findall(log)
    return int(found[0][0]) if found else 0


def shards_built(log: str) -> list[int]:
    """0-based indices of the shards the log reports built."""
    return [int(k) for k in _SHARD_BUILT.findall(log)]


# ---------------------------------------------------------------- bookkeeping

@dataclass
class Tally:
    tried: int = 0
    passed: int = 0
    killed: int = 0       # SIGKILL arrived before the process ended
    temp_left: int = 0    # the kill left a temporary file (a write was in flight)

    def line(self) -> str:
        return (f"kill points: {self.tried} tried, {self.passed} passed ({self.killed} killed mid-run, "
                f"{self.temp_left} inside a write)")
