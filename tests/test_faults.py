"""Kill harness: SIGKILL a stage at a chosen moment, restart it, and check that

- the outputs equal those of an uninterrupted run (bit-identical on the CPU);
- finished work is not redone (training resumes at its last checkpoint, built shards are kept);
- nothing torn or temporary is left: every artefact and every result table loads after the kill,
  and no `.tmp-*` file remains after the restart.

The default run tries 4 kill points; `pytest -m slow tests/test_faults.py -s` sweeps 58 more and
prints `kill points: N tried, M passed`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from notbugs import results
from notbugs import stages as S
from notbugs.config import load_params
from notbugs.storage import atomic_write_bytes, load_tensors, read_json
from tests.conftest import write_params
from tests.faultkit import (KillAt, Ladder, Tally, completed_epochs, files, first_epoch, invalid_files,
                            kill_when_file_appears, resumed_epoch, run_and_kill, run_to_end, shards_built,
                            shards_resumed, stage_command, temp_files)

SEED = 20190506
EPOCHS = 6
CHECKPOINT_EVERY = 1  # epochs: checkpoint_minutes 0 writes one at every epoch end

# The reference pipeline, in order; each step starts from the folder the one before left.
STEPS = {
    "source standard": ["source", "standard"],
    "construct d_det": ["construct", "d_det"],
    "source robust": ["source", "robust"],
    "construct d_r": ["construct", "d_r"],
    "train d_det": ["train", "d_det"],
    "reevaluate": ["reevaluate"],
    "report": ["report"],
}
TRAINED = {"source standard": ("standard", "source@standard"), "source robust": ("robust", "source@robust"),
           "train d_det": ("d_det", "train@d_det")}
BUILT = {"construct d_det": "d_det", "construct d_r": "d_r"}

TALLY = Tally()


def _profile(doc):
    """The tiny profile, with more epochs and shards so that there are more moments to kill."""
    t = doc["profiles"]["tiny"]
    t["train"].update(epochs=EPOCHS, batch_size=50)
    t["checkpoint_minutes"] = 0
    t["train_on"]["d_det"] = {"epochs": 4}
    t["construct"].update(shard_size=25, batch_size=25)
    t["transfer"]["archs"] = ["resnet9"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, mirror):
    root = tmp_path_factory.mktemp("faults")
    params = write_params(root / "params.yaml", mirror, edit=_profile)
    S.stage_fetch(load_params(params), root / "fetched", "cpu")
    return Ladder(root, params, root / "fetched", STEPS)


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if TALLY.tried:
        print(f"\n{TALLY.line()}")


# ---------------------------------------------------------------- reading results

def _last_ok_run(data: Path, stage: str) -> str:
    """The stage's last successful run: the restart's. (A run killed after recording its 'ok' row,
    while writing its metrics or exiting, counts as one more ok run before it.)"""
    runs = results.load("runs", data / "results")
    ok = runs[(runs["stage"] == stage) & (runs["status"] == "ok")].sort_values("ended_at")
    assert len(ok), f"no ok run of {stage}"
    return ok["run_id"].iloc[-1]


def _accuracies(data: Path, stage: str) -> dict:
    """(model, attack, eps) -> (accuracy, correct) of the evaluations made by the stage's last ok run."""
    ev = results.load("evaluations", data / "results")
    ev = ev[ev["run_id"] == _last_ok_run(data, stage)]
    return {(r.model_id, r.attack, r.eps): (r.accuracy, r.correct) for r in ev.itertuples()}


def _history(data: Path, stage: str) -> list[tuple]:
    ep = results.load("epochs", data / "results")
    ep = ep[ep["run_id"] == _last_ok_run(data, stage)].sort_values("epoch")
    return [(r.epoch, r.train_loss, r.train_acc, r.lr) for r in ep.itertuples()]


def _same_tensors(a: Path, b: Path) -> list[str]:
    x, y = load_tensors(a), load_tensors(b)
    assert x.keys() == y.keys()
    return [k for k in x if not torch.equal(x[k], y[k])]


_GENERATED = re.compile(rb"Report generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
_PROVENANCE = re.compile(rb"(## Provenance\n|<h2>Provenance</h2>).*?(?=\n## |<h2>)", re.S)


def _report_files(data: Path) -> dict[str, bytes]:
    """The report's files, less what may differ: the time of writing, the data folder's path, and the
    provenance table (which lists a killed run that got as far as recording itself)."""
    out = {}
    for p in (data / "report").iterdir():
        text = _GENERATED.sub(b"Report generated <time> UTC", p.read_bytes()).replace(str(data).encode(), b"<data>")
        out[p.name] = _PROVENANCE.sub(b"<provenance>", text)
    return out


def _provenance_rows(data: Path) -> set[str]:
    md = (data / "report" / "report.md").read_text()
    section = md.split("## Provenance\n")[1].split("\n## ")[0]
    return {line for line in section.splitlines() if line.startswith("| ") and "---" not in line}


# ---------------------------------------------------------------- one kill point

def _checkpoint_epoch(data: Path, name: str) -> int:
    ckpt = data / "work" / name / "checkpoint.pt"
    return int(load_tensors(ckpt)["epoch"]) if ckpt.exists() else 0


def kill_and_restart(ladder: Ladder, step_name: str, at: KillAt, tmp_path: Path, mid_run: bool = False) -> None:
    """Kill the step at `at`, restart it, and compare with the uninterrupted run. `mid_run`: the kill must
    land (a sweep's random point may come after the step ended) and leave work both done and to do."""
    TALLY.tried += 1
    step = ladder[step_name]
    data = tmp_path / "data"
    shutil.copytree(step.before, data)
    cmd = stage_command(step.args, ladder.params, data)

    killed = run_and_kill(cmd, tmp_path / "killed.log", data, at)
    assert killed.killed or killed.rc == 0, killed.log[-3000:]
    if mid_run:
        assert killed.killed, f"the kill point was never reached: {killed.log[-2000:]}"
    TALLY.killed += killed.killed
    TALLY.temp_left += bool(temp_files(data))
    assert invalid_files(data) == [], "a kill left a torn artefact"
    after_kill = files(data)
    checkpoint = _checkpoint_epoch(data, TRAINED[step_name][0]) if step_name in TRAINED else None
    if mid_run and checkpoint is not None:
        assert 0 < checkpoint < EPOCHS, f"killed with {checkpoint} of {EPOCHS} epochs checkpointed"
    if mid_run and step_name in BUILT:
        name = BUILT[step_name]
        whole = len(list((step.after / "datasets" / name).glob("shard-*.npz")))
        kept = len([p for p in after_kill if re.fullmatch(rf"datasets/{name}/shard-\d+\.json", p)])
        assert 0 < kept < whole, f"killed with {kept} of {whole} shards built"

    restart = run_to_end(cmd, tmp_path / "restart.log")
    assert restart.rc == 0, restart.log[-3000:]
    assert temp_files(data) == [], "temporary files survived the restart"
    assert invalid_files(data) == []

    if step_name in TRAINED:
        _check_training(step, step_name, data, killed.log, restart.log, checkpoint)
    elif step_name in BUILT:
        _check_construction(step, BUILT[step_name], data, killed.log, restart.log, after_kill)
    elif step_name == "reevaluate":
        assert _accuracies(data, "reevaluate") == _accuracies(step.after, "reevaluate")
    elif step_name == "report":
        assert _report_files(data) == _report_files(step.after)
        assert _provenance_rows(step.after) <= _provenance_rows(data)
    TALLY.passed += 1


def _check_training(step, step_name, data, killed_log, restart_log, checkpoint):
    name, stage = TRAINED[step_name]
    assert _same_tensors(data / "models" / name / "model.pt", step.after / "models" / name / "model.pt") == []
    assert _accuracies(data, stage) == _accuracies(step.after, stage)
    assert _history(data, stage) == _history(step.after, stage)
    assert read_json(data / "metrics" / f"{stage.replace('@', '_')}.json") == \
        read_json(step.after / "metrics" / f"{stage.replace('@', '_')}.json")
    # work lost: at most the epochs since the last checkpoint; the restart picks up right there
    assert completed_epochs(killed_log) - checkpoint <= CHECKPOINT_EVERY
    epochs = len(_history(step.after, stage))
    if checkpoint:
        assert resumed_epoch(restart_log) == checkpoint, restart_log[-2000:]
    else:
        assert resumed_epoch(restart_log) is None
    assert first_epoch(restart_log) == (checkpoint + 1 if checkpoint < epochs else None)


def _check_construction(step, name, data, killed_log, restart_log, after_kill):
    out, ref = data / "datasets" / name, step.after / "datasets" / name
    shards = sorted(p.name for p in ref.glob("shard-*.npz"))
    assert sorted(p.name for p in out.glob("shard-*.npz")) == shards
    for shard in shards:
        assert (out / shard).read_bytes() == (ref / shard).read_bytes(), shard
    assert read_json(out / "manifest.json")["shards"] == read_json(ref / "manifest.json")["shards"]
    # shards whose JSON existed at the kill are kept as they were, and the restart says so
    pattern = re.compile(rf"datasets/{name}/shard-(\d+)\.(npz|json)")
    shard_files = {rel: int(m[1]) for rel in after_kill if (m := pattern.fullmatch(rel))}
    done = {k for rel, k in shard_files.items() if rel.endswith(".json")}
    assert set(shards_built(killed_log)) <= done
    assert shards_resumed(restart_log) == len(done)
    assert sorted(shards_built(restart_log)) == sorted(set(range(len(shards))) - done)  # the rest, each once
    now = files(data)
    kept = [rel for rel, k in shard_files.items() if k in done]
    assert len(kept) == 2 * len(done)  # the .npz and the .json of each
    for rel in kept:
        assert now[rel].st_mtime_ns == after_kill[rel].st_mtime_ns, f"{rel} was rewritten"


# ---------------------------------------------------------------- result tables

ROWS_PER_WRITE = 3
WRITES = 60
WRITER = f"""
import sys
from notbugs import results
from tests.test_results import sample_row

root = sys.argv[1]
seen = {{t: set(results.load(t, root)["run_id"]) for t in results.TABLES}}  # a restart skips finished writes
print("writer ready", flush=True)
for w in range({WRITES}):
    table, run_id = results.TABLES[w % len(results.TABLES)], f"write{{w:03d}}"
    if run_id not in seen[table]:
        results.append(table, [dict(sample_row(table, i), run_id=run_id) for i in range({ROWS_PER_WRITE})], root)
"""


def _writes(root: Path) -> dict[str, list[str]]:
    """run ids visible in each table; every visible write must be whole."""
    out = {}
    for table in results.TABLES:
        df = results.load(table, root)
        sizes = df.groupby("run_id").size()
        assert (sizes == ROWS_PER_WRITE).all(), f"{table}: a torn write {sizes.to_dict()}"
        out[table] = sorted(df["run_id"])
    return out


def kill_results_writer(at: KillAt, tmp_path: Path) -> None:
    TALLY.tried += 1
    root = tmp_path / "results"
    cmd = [sys.executable, "-c", WRITER, str(root)]
    killed = run_and_kill(cmd, tmp_path / "killed.log", tmp_path, at, ready_line="writer ready")
    assert killed.killed or killed.rc == 0, killed.log
    TALLY.killed += killed.killed
    TALLY.temp_left += bool(temp_files(root))
    _writes(root)  # every table loads and shows whole writes only
    restart = run_to_end(cmd, tmp_path / "restart.log", ready_line="writer ready")
    assert restart.rc == 0, restart.log
    visible = _writes(root)
    for k, table in enumerate(results.TABLES):
        expected = sorted(f"write{w:03d}" for w in range(k, WRITES, len(results.TABLES))) * ROWS_PER_WRITE
        assert visible[table] == sorted(expected), f"{table}: rows lost or duplicated"
        assert len(results.part_files(table, root)) == WRITES // len(results.TABLES)
    assert temp_files(root) == []
    TALLY.passed += 1


# ---------------------------------------------------------------- default run: 4 kill points

def test_training_killed_at_its_first_checkpoint_resumes_to_the_same_model(ladder, tmp_path):
    kill_and_restart(ladder, "source standard", KillAt(pattern="work/standard/checkpoint.pt"), tmp_path, mid_run=True)


def test_construction_killed_after_three_shards_keeps_them(ladder, tmp_path):
    kill_and_restart(ladder, "construct d_det", KillAt(pattern="datasets/d_det/shard-00002.json"), tmp_path,
                     mid_run=True)


def test_kill_inside_an_atomic_write_keeps_the_old_file(tmp_path):
    """A writer killed between its temporary file and the rename: the old file stays whole, and the
    next write of the same file removes the dead writer's leftover."""
    TALLY.tried += 1
    target = tmp_path / "model.pt"
    target.write_bytes(b"old" * 1000)
    code = (f"import os, time\nfrom notbugs import storage\nos.fsync = lambda fd: time.sleep(60)\n"
            f"storage.atomic_write_bytes({str(target)!r}, b'new' * 1000)\n")
    kill_when_file_appears(code, tmp_path, ".tmp-model.pt*")
    TALLY.killed += 1
    assert target.read_bytes() == b"old" * 1000
    assert len(temp_files(tmp_path)) == 1
    TALLY.temp_left += 1
    atomic_write_bytes(target, b"new" * 1000)  # the restarted writer
    assert target.read_bytes() == b"new" * 1000
    assert temp_files(tmp_path) == []
    TALLY.passed += 1


def test_kill_inside_a_results_append_loses_only_that_write(tmp_path):
    TALLY.tried += 1
    from tests.test_results import sample_row

    root = tmp_path / "results"
    results.append("evaluations", [sample_row("evaluations", 0)], root)
    code = (f"import time\nfrom notbugs import results\nfrom tests.test_results import sample_row\n"
            f"results._fsync_file = lambda path: time.sleep(60)\n"
            f"results.append('evaluations', [sample_row('evaluations', i) for i in (1, 2)], {str(root)!r})\n")
    kill_when_file_appears(code, root / "evaluations", ".tmp-part-*")
    TALLY.killed += 1
    assert len(temp_files(root)) == 1
    TALLY.temp_left += 1
    assert list(results.load("evaluations", root)["run_id"]) == ["run0000"]  # the killed write is invisible
    results.append("evaluations", [sample_row("evaluations", i) for i in (1, 2)], root)
    assert sorted(results.load("evaluations", root)["run_id"]) == ["run0000", "run0001", "run0002"]
    assert temp_files(root) == []
    TALLY.passed += 1


def test_only_temp_files_of_dead_writers_on_this_host_are_removed(tmp_path):
    import socket
    from notbugs import tempfiles
    from tests.conftest import dead_pid

    dead = dead_pid()
    host = socket.gethostname()
    names = {"dead": f".tmp-model.pt@{host}.{dead}-abc123", "live": f".tmp-model.pt{tempfiles.owner()}-def456",
             "other host": f".tmp-model.pt@elsewhere.{dead}-ghi789", "other file": f".tmp-meta.json@{host}.{dead}-x",
             "dead part": f".tmp-part-20240101T000000-{dead}-0badc0de@{host}.{dead}.writing"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    assert tempfiles.remove_dead(tmp_path, "model.pt") == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tempfiles.remove_dead(tmp_path)) == sorted([names["other file"], names["dead part"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["other host"]])


# ---------------------------------------------------------------- the sweep (slow): 58 kill points

RANDOM = {"source standard": 8, "source robust": 6, "construct d_det": 4, "construct d_r": 5, "train d_det": 4,
          "reevaluate": 4, "report": 3}
ON_FILE = [
    ("source standard", KillAt(pattern="work/standard/checkpoint.pt", delay=0.15)),
    ("source standard", KillAt(pattern="work/standard/.tmp-*")),
    ("source standard", KillAt(pattern="models/standard/model.pt")),
    ("source standard", KillAt(pattern="results/evaluations/part-*")),
    ("source robust", KillAt(pattern="work/robust/checkpoint.pt", delay=0.3)),
    ("source robust", KillAt(pattern="models/robust/.tmp-*")),
    ("source robust", KillAt(pattern="results/epochs/part-*")),
    ("construct d_det", KillAt(pattern="datasets/d_det/shard-00000.json")),
    ("construct d_det", KillAt(pattern="datasets/d_det/shard-00004.npz")),
    ("construct d_det", KillAt(pattern="datasets/d_det/.tmp-*")),
    ("construct d_det", KillAt(pattern="datasets/d_det/manifest.json")),
    ("construct d_r", KillAt(pattern="datasets/d_r/shard-00003.json")),
    ("construct d_r", KillAt(pattern="datasets/d_r/.tmp-shard-00005*")),
    ("construct d_r", KillAt(pattern="results/datasets/part-*")),
    ("train d_det", KillAt(pattern="work/d_det/checkpoint.pt")),
    ("reevaluate", KillAt(pattern="results/evaluations/part-*")),
    ("reevaluate", KillAt(pattern="results/evaluations/.tmp-*")),
    ("report", KillAt(pattern="report/.tmp-*")),
    ("report", KillAt(pattern="report/report.html")),
]
SWEEP = [(step, i) for step, n in RANDOM.items() for i in range(n)] + [(step, at) for step, at in ON_FILE]


def _random_moment(ladder: Ladder, step_name: str, i: int) -> KillAt:
    """A delay drawn from the seeded RNG between the end of imports and the end of the reference run."""
    run = ladder[step_name].run
    rng = np.random.default_rng([SEED, list(STEPS).index(step_name), i])
    return KillAt(delay=float(rng.uniform(run.ready_s or 0.0, 0.97 * run.wall_s)))


@pytest.mark.slow
@pytest.mark.parametrize("step_name, point", SWEEP, ids=[f"{s}-{p}" for s, p in SWEEP])
def test_sweep_stage(ladder, tmp_path, step_name, point):
    at = _random_moment(ladder, step_name, point) if isinstance(point, int) else point
    kill_and_restart(ladder, step_name, at, tmp_path)


@pytest.fixture(scope="module")
def writer_duration(tmp_path_factory) -> tuple[float, float]:
    folder = tmp_path_factory.mktemp("writer")
    run = run_to_end([sys.executable, "-c", WRITER, str(folder / "results")], folder / "log",
                     ready_line="writer ready")
    assert run.rc == 0, run.log
    return run.ready_s or 0.0, run.wall_s


@pytest.mark.slow
@pytest.mark.parametrize("i", range(5))
def test_sweep_results_writer(writer_duration, tmp_path, i):
    ready, total = writer_duration
    rng = np.random.default_rng([SEED, 99, i])
    kill_results_writer(KillAt(delay=float(rng.uniform(ready, 0.97 * total))), tmp_path)
