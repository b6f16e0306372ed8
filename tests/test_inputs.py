"""Malformed inputs: each one stops the stage with a message naming the file and the problem, and
overwrites nothing (every artefact already there is byte-identical afterwards).

The mirror, parameter, checkpoint and result-row cases live in test_data.py, test_config.py,
test_cli.py, test_train.py, test_stages.py and test_results.py; this file adds the constructed sets,
the canonical arrays, the saved models, the parameter file's syntax and failing writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from notbugs import construct as C
from notbugs import results
from notbugs import record as R
from notbugs import stages as S
from notbugs.cli import main
from notbugs.config import load_params
from notbugs.storage import ArtefactError, atomic_write_bytes
from tests.conftest import write_params
from tests.test_results import sample_row


def _tiny(doc):
    doc["profiles"]["tiny"]["transfer"]["archs"] = ["resnet9"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, mirror):
    """Canonical arrays, the standard model, D_det (2 shards) and a model trained on it."""
    root = tmp_path_factory.mktemp("inputs")
    params_path = write_params(root / "params.yaml", mirror, edit=_tiny)
    params, data = load_params(params_path), root / "data"
    S.stage_fetch(params, data, "cpu")
    S.stage_source(params, "standard", data, "cpu")
    S.stage_construct(params, "d_det", data, "cpu")
    S.stage_train(params, "d_det", data, "cpu")
    return params_path, data


@pytest.fixture
def data(built, tmp_path):
    shutil.copytree(built[1], tmp_path / "data")
    return tmp_path / "data"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_untouched(before: dict[str, bytes], folder: Path) -> None:
    """Every file is as it was; the only new file allowed is the failed run's `runs` row."""
    now = _snapshot(folder)
    assert [k for k in before if now.get(k) != before[k]] == [], "an artefact was overwritten"
    assert [k for k in now if k not in before and not k.startswith("results/runs/part-")] == []


def _cli(capsys, built, data, *args) -> tuple[int, str]:
    rc = main([*args, "--params", str(built[0]), "--data-dir", str(data), "--device", "cpu"])
    return rc, capsys.readouterr().err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Planted:
    """Unpickling this creates the file `marker`: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------- constructed sets, through `notbugs train`

def _rewrite_shard(out: Path, k: int, change) -> None:
    """Rewrite shard k with `change(arrays)` applied and its manifest checksum updated (a consistent
    but wrong set, as a buggy construction would leave it)."""
    path = out / f"shard-{k:05d}.npz"
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    blob = change(arrays)
    path.write_bytes(blob)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][k]["sha256"] = hashlib.sha256(blob).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))


def _nan(arrays):
    arrays["images"][3, 1, 2, 2] = np.nan
    return C.npz_bytes(arrays)


def _wrong_shape(arrays):
    arrays["images"] = arrays["images"][:, :, :16, :16]
    return C.npz_bytes(arrays)


def _no_labels(arrays):
    del arrays["labels"]
    return C.npz_bytes(arrays)


def _labels_out_of_range(arrays):
    arrays["labels"][0] = 12
    return C.npz_bytes(arrays)


def _pickled_array(arrays):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key, value in arrays.items():
            item = io.BytesIO()
            np.save(item, np.array([value, None], dtype=object) if key == "labels" else value, allow_pickle=True)
            z.writestr(f"{key}.npy", item.getvalue())
    return buf.getvalue()


CONSTRUCTED = {
    "nan": (lambda out: _rewrite_shard(out, 1, _nan), "constructed images contain NaN"),
    "shard of the wrong shape": (lambda out: _rewrite_shard(out, 1, _wrong_shape), "shard-00001.npz"),
    "shard without labels": (lambda out: _rewrite_shard(out, 0, _no_labels), "shard-00000.npz"),
    "labels out of range": (lambda out: _rewrite_shard(out, 0, _labels_out_of_range), "shard-00000.npz: labels"),
    "shard holding a pickle": (lambda out: _rewrite_shard(out, 1, _pickled_array), "shard-00001.npz"),
    "shard deleted": (lambda out: (out / "shard-00001.npz").unlink(), "shard-00001.npz is missing"),
    "manifest missing": (lambda out: (out / "manifest.json").unlink(), "incomplete (no manifest.json)"),
    "manifest not JSON": (lambda out: (out / "manifest.json").write_text('{"name": "d_det", "shards": ['),
                          "manifest.json is not valid JSON"),
    "manifest without shards": (lambda out: (out / "manifest.json").write_text('{"name": "d_det"}'),
                                "manifest.json lists no shards"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTED))
def test_malformed_constructed_set_stops_training(built, data, capsys, case):
    damage, message = CONSTRUCTED[case]
    damage(R.dataset_dir(data, "d_det"))
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "train", "d_det")
    assert rc == 1
    assert "notbugs train: error:" in err and message in err, err
    assert "datasets/d_det" in err  # names the set (and the shard, where one is at fault)
    _assert_untouched(before, data)  # the model trained earlier on D_det is kept as it was


# ---------------------------------------------------------------- canonical arrays, through `notbugs source`

def _manifest_sha(root: Path, name: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][name] = _sha(root / name)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _pickle_npy(root: Path) -> None:
    np.save(root / "train_labels.npy", np.array([Planted(root / "PWNED")], dtype=object), allow_pickle=True)
    _manifest_sha(root, "train_labels.npy")


FETCH = "rebuild it with `notbugs fetch`"
CANONICAL = {
    "array deleted": (lambda r: (r / "train_images.npy").unlink(), f"train_images.npy is missing; {FETCH}"),
    "array truncated": (lambda r: (r / "test_images.npy").write_bytes((r / "test_images.npy").read_bytes()[:999]),
                        "test_images.npy is corrupt (SHA-256 differs from its manifest)"),
    "array holding a pickle": (_pickle_npy, "train_labels.npy is not a plain array file"),
    "manifest not JSON": (lambda r: (r / "manifest.json").write_text("files: [oops"),
                          "cifar10/manifest.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(CANONICAL))
def test_malformed_canonical_arrays_stop_training(built, data, capsys, case):
    damage, message = CANONICAL[case]
    damage(data / "cifar10")
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "source", "standard")
    assert rc == 1 and message in err, err
    assert not (data / "cifar10" / "PWNED").exists()
    _assert_untouched(before, data)


# ---------------------------------------------------------------- saved models, through `notbugs construct`

def test_planted_pickle_as_model_is_refused_and_never_runs(built, data, capsys):
    model = R.model_dir(data, "standard")
    (model / "model.pt").write_bytes(pickle.dumps({"conv.weight": Planted(data / "PWNED")}, protocol=2))
    meta = json.loads((model / "meta.json").read_text())
    meta["checkpoint_sha256"] = _sha(model / "model.pt")  # the attacker fixed the checksum too
    (model / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(R.dataset_dir(data, "d_det"))
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "construct", "d_det")
    assert rc == 1 and "models/standard/model.pt cannot be loaded as a tensors-only checkpoint" in err, err
    assert not (data / "PWNED").exists()
    _assert_untouched(before, data)
    assert not R.dataset_dir(data, "d_det").exists()


def test_replaced_model_file_fails_its_checksum(built, data, capsys):
    model = R.model_dir(data, "standard")
    (model / "model.pt").write_bytes(pickle.dumps({"conv.weight": Planted(data / "PWNED")}, protocol=2))
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "construct", "d_det")
    assert rc == 1 and "models/standard/model.pt is corrupt (SHA-256 differs" in err, err
    assert not (data / "PWNED").exists()
    _assert_untouched(before, data)


def test_model_meta_that_is_not_json_is_refused(built, data, capsys):
    (R.model_dir(data, "standard") / "meta.json").write_text('{"arch": "resnet9",')
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "construct", "d_det")
    assert rc == 1 and "models/standard/meta.json is not valid JSON" in err, err
    _assert_untouched(before, data)


def test_corrupt_training_checkpoint_is_refused(built, data, capsys):
    ckpt = data / "work" / "d_det" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    before = _snapshot(data)
    rc, err = _cli(capsys, built, data, "train", "d_det")
    assert rc == 1 and "work/d_det/checkpoint.pt cannot be loaded as a tensors-only checkpoint" in err, err
    _assert_untouched(before, data)


# ---------------------------------------------------------------- the parameter file

def test_parameter_file_that_is_not_yaml_exits_2(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nprofiles:\n  tiny: {train: [epochs: 2\n")
    rc = main(["fetch", "--params", str(params), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{params}: not valid YAML" in err and "line" in err, err
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- failing writes: read-only folder, disk full

def _read_only(folder: Path, monkeypatch) -> None:
    """Make `folder` read-only; as root (who writes anyway) the refusal is simulated where files are created."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        def refuse(*args, **kw):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        monkeypatch.setattr(results.pq, "write_table", refuse)


def test_atomic_write_into_a_read_only_folder(tmp_path, monkeypatch):
    target = tmp_path / "out" / "model.pt"
    atomic_write_bytes(target, b"good")
    _read_only(target.parent, monkeypatch)
    try:
        with pytest.raises(ArtefactError, match=f"cannot write {target}: .*read-only output folder"):
            atomic_write_bytes(target, b"new")
    finally:
        target.parent.chmod(0o755)
    assert target.read_bytes() == b"good" and sorted(target.parent.iterdir()) == [target]


def test_atomic_write_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"good")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ArtefactError, match=f"disk full while writing {target}; nothing was written"):
        atomic_write_bytes(target, b"new" * 10_000)
    assert target.read_bytes() == b"good" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("code, message", [(errno.EDQUOT, "disk quota exceeded while writing"),
                                           (errno.EIO, "input/output error while writing")])
def test_atomic_write_over_quota_or_on_a_failing_disk(tmp_path, monkeypatch, code, message):
    """A cluster's quota, or a failing disk, named with the file, as a full disk is."""
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"good")

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ArtefactError, match=f"{message} {target}.*nothing was written"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"good" and sorted(tmp_path.iterdir()) == [target]


def _earlier_part(root: Path) -> tuple[Path, bytes]:
    part = results.append("evaluations", [sample_row("evaluations", 0)], root)
    return part, part.read_bytes()


def test_results_append_into_a_read_only_folder(tmp_path, monkeypatch):
    part, good = _earlier_part(tmp_path)
    _read_only(part.parent, monkeypatch)
    try:
        with pytest.raises(PermissionError, match=f"cannot append to result table 'evaluations' in {part.parent}"):
            results.append("evaluations", [sample_row("evaluations", 1)], tmp_path)
    finally:
        part.parent.chmod(0o755)
    assert sorted(part.parent.iterdir()) == [part] and part.read_bytes() == good
    assert list(results.load("evaluations", tmp_path)["run_id"]) == ["run0000"]


def test_results_append_on_a_full_disk(tmp_path, monkeypatch):
    part, good = _earlier_part(tmp_path)

    def half_then_full(table, where, **kw):
        Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.pq, "write_table", half_then_full)
    with pytest.raises(OSError, match="cannot append to result table 'evaluations'.*No space left on device") as e:
        results.append("evaluations", [sample_row("evaluations", 1)], tmp_path)
    assert e.value.errno == errno.ENOSPC
    assert sorted(part.parent.iterdir()) == [part] and part.read_bytes() == good
    assert list(results.load("evaluations", tmp_path)["run_id"]) == ["run0000"]


def test_a_stage_s_own_error_survives_a_runs_row_that_cannot_be_written(tmp_path, monkeypatch, caplog):
    """On a full disk the stage fails writing its model and then the `runs` row fails too: the error
    shown must be the stage's, which names the model file, not the runs table's."""
    params = load_params(write_params(tmp_path / "p.yaml", tmp_path / "no-mirror"))

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "cannot append to result table 'runs' (No space left on device)")

    monkeypatch.setattr(results, "append", full)
    model_error = ArtefactError(f"disk full while writing {tmp_path}/models/standard/model.pt; nothing was written")
    with pytest.raises(ArtefactError, match="model.pt"), caplog.at_level("ERROR", logger="notbugs"):
        with R.recorded_run("source@standard", params, tmp_path, S.pick_device("cpu")):
            raise model_error
    assert "could not record this failed run in the runs table either" in caplog.text
    # a stage that succeeded but cannot record its run fails with the runs table's error
    with pytest.raises(OSError, match="result table 'runs'"):
        with R.recorded_run("source@standard", params, tmp_path, S.pick_device("cpu")):
            pass
