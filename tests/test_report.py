"""Tests for notbugs.report: the HTML / Markdown / JSON report built from tiny synthetic results."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from notbugs import report, report_claims, report_paper, report_svg, report_tables, results
from notbugs.storage import ArtefactError

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Our synthetic accuracies (fractions); the paper's numbers are in notbugs.report_paper.
CLEAN_ROBUST = {
    ("standard", "d"): (0.913, 0.097),  # clean within 5 pts, robust above paper by 5.2 (bad: should be ~0)
    ("adversarial", "d"): (0.841, 0.751),  # below by 6.7 / 7.2
    ("standard", "d_r"): (0.804, 0.569),  # robust above paper by 8.6 (a warning: check, not a failure)
    ("standard", "d_nr"): (0.744, 0.004),  # clean below by 13.3
    ("standard", "d_rand"): (0.121, 0.0),  # below by 51.2
    ("standard", "d_det"): (0.301, 0.0),
}


# ---------------------------------------------------------------- synthetic inputs


def model_id(profile: str, training: str, train_set: str, arch: str = "resnet18") -> str:
    return f"{profile}/{training}-{train_set}-{arch}"


def model_row(profile: str, training: str, train_set: str, arch: str = "resnet18", minute: int = 0) -> dict:
    return {"model_id": model_id(profile, training, train_set, arch), "profile": profile, "arch": arch,
            "width": 0.25, "train_set": train_set, "training": training, "recipe": results.to_json({"epochs": 3}),
            "checkpoint_path": "x.pt", "checkpoint_sha256": "0" * 64, "run_id": "r1",
            "created_at": T0 + timedelta(minutes=minute)}


def eval_row(profile: str, mid: str, attack: str, eps: float, accuracy: float, when: datetime) -> dict:
    n = 1000
    steps = 0 if attack == "none" else 20
    return {"model_id": mid, "profile": profile, "test_set": "cifar10-test", "attack": attack, "eps": eps,
            "steps": steps, "restarts": 1, "accuracy": accuracy,
            "correct": int(round(accuracy * n)), "n": n, "per_class_accuracy": [accuracy] * 10, "wall_s": 1.0,
            "run_id": "r2", "evaluated_at": when, "step_size": 2.5 * eps / steps if steps else 0.0,
            "use_best": attack != "none"}


def run_row(profile: str, stage: str, minute: int, wall: float, status: str = "ok") -> dict:
    start = T0 + timedelta(minutes=minute)
    return {"run_id": f"run-{stage}-{minute}", "stage": stage, "profile": profile, "params_hash": "ph",
            "code_version": "abc1234", "input_hashes": "{}", "device": "cpu", "started_at": start,
            "ended_at": start + timedelta(seconds=wall), "wall_s": wall, "status": status}


def dataset_row(profile: str, name: str, stats: dict) -> dict:
    return {"dataset_id": f"{profile}/{name}", "profile": profile, "name": name, "recipe": "{}",
            "source_model_id": model_id(profile, "standard", "d"), "source_model_sha256": "0" * 64,
            "n_images": 5000, "stats": results.to_json(stats), "path": f"data/datasets/{name}", "run_id": "r3",
            "created_at": T0}


def write_results(root: Path, profile: str = "cpu", scale: float = 1.0) -> None:
    """A plausible set of rows for one profile; `scale` shifts every accuracy to tell profiles apart."""
    models, evals = [], []
    for (training, train_set), (clean, robust) in CLEAN_ROBUST.items():
        models.append(model_row(profile, training, train_set))
        mid = model_id(profile, training, train_set)
        evals += [eval_row(profile, mid, "none", 0.0, clean * scale, T0 + timedelta(hours=1)),
                  eval_row(profile, mid, "pgd_l2", 0.25, robust * scale, T0 + timedelta(hours=1))]
    # transfer targets: a second architecture with its own standard and D_det models
    models += [model_row(profile, "standard", "d", "vgg16", 1), model_row(profile, "standard", "d_det", "vgg16", 1)]
    evals.append(eval_row(profile, model_id(profile, "standard", "d_det", "vgg16"), "none", 0.0, 0.205 * scale,
                          T0 + timedelta(hours=1)))
    results.append("models", models, root)
    results.append("evaluations", evals, root)
    results.append("transfer", [
        {"source_model_id": model_id(profile, "standard", "d"),
         "target_model_id": model_id(profile, "standard", "d", a), "target_arch": a, "profile": profile,
         "attack": "pgd_l2_targeted", "eps": 0.5, "steps": 20,
         "success_rate": rate, "n": 500, "run_id": "r4", "created_at": T0 + timedelta(minutes=2)}
        for a, rate in (("resnet18", 0.45), ("vgg16", 0.30))], root)
    results.append("epochs", [
        {"model_id": model_id(profile, "standard", "d"), "profile": profile, "epoch": e, "train_loss": 2.0 / (e + 1),
         "train_acc": 0.3 + 0.2 * e, "lr": 0.1, "wall_s": 10.0, "run_id": "r1"} for e in range(3)], root)
    results.append("runs", [run_row(profile, "fetch", 0, 5.0), run_row(profile, "source training", 1, 85.0),
                            run_row(profile, "construct", 3, 404.0)], root)
    results.append("datasets", [
        dataset_row(profile, "d_r", {"start_distance": 5.2, "final_distance": 0.9, "start_relative": 1.11,
                                     "final_relative": 0.18}),
        dataset_row(profile, "d_rand", {"success_rate": 0.969})], root)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_cifar(data_dir: Path, n_train: int = 40) -> None:
    """A tiny CIFAR-10 folder in the canonical format notbugs.data.load reads."""
    rng = np.random.default_rng(0)
    arrays = {"train_images.npy": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
              "train_labels.npy": np.arange(n_train, dtype=np.int64) % 10,
              "test_images.npy": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
              "test_labels.npy": np.arange(10, dtype=np.int64)}
    folder = data_dir / "cifar10"
    folder.mkdir(parents=True)
    files = {}
    for name, array in arrays.items():
        data = npy(array)
        (folder / name).write_bytes(data)
        files[name] = sha256(data)
    (folder / "manifest.json").write_text(json.dumps({"files": files, "classes": list(CLASSES)}))


def write_full_size_cifar(data_dir: Path) -> tuple[Path, dict]:
    """A fetch manifest that says full CIFAR-10 (counts and array checksums) over small arrays."""
    write_cifar(data_dir)
    path = data_dir / "cifar10" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(counts={"train": 50000, "test": 10000}, array_sha256={"train": "a" * 64, "test": "b" * 64})
    path.write_text(json.dumps(manifest))
    return path, manifest


def write_constructed(data_dir: Path, name: str, source_index: np.ndarray) -> None:
    """A one-shard constructed set in the format notbugs.construct.load_constructed reads."""
    rng = np.random.default_rng(len(name))
    n = len(source_index)
    buf = io.BytesIO()
    np.savez(buf, images=rng.random((n, 3, 32, 32)).astype(np.float16),
             labels=(source_index % 10 + (1 if name == "d_det" else 0)) % 10,
             source_index=source_index.astype(np.int64), start_index=np.full(n, -1, dtype=np.int64))
    folder = data_dir / "datasets" / name
    folder.mkdir(parents=True)
    (folder / "shard-00000.npz").write_bytes(buf.getvalue())
    manifest = {"name": name, "shards": [{"file": "shard-00000.npz", "sha256": sha256(buf.getvalue())}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One full report (D_det's images deliberately missing), shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("report")
    write_results(base / "results")
    write_cifar(base / "data")
    for name in ("d_r", "d_nr", "d_rand"):
        write_constructed(base / "data", name, np.arange(12, dtype=np.int64) * 3)
    deviations = ["ResNet-18 at width 0.25 instead of ResNet-50", "5,000 training images instead of 50,000"]
    paths = report.build_report(base / "results", base / "data", base / "out", deviations=deviations)
    return {"paths": paths, "html": paths["html"].read_text(), "md": paths["markdown"].read_text(),
            "summary": json.loads(paths["summary"].read_text())}


# ---------------------------------------------------------------- the full report


def test_build_report_writes_the_three_files(built):
    paths = built["paths"]
    for key in ("html", "markdown", "summary", "figure2", "figure3", "training_curves", "samples"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["html"].name == "report.html" and paths["markdown"].name == "report.md"


def test_html_has_sections_figures_and_both_numbers(built):
    page = built["html"]
    for section in ("Figure 2", "Table 1", "Figure 3", "Samples", "Construction statistics", "Training curves",
                    "Provenance"):
        assert section in page
    assert page.count("<svg") == 3  # figure 2, figure 3, training curves
    for ours in ("91.3", "84.1", "75.1", "80.4", "56.9", "74.4", "12.1", "30.1", "45.0"):
        assert ours in page, ours
    for paper in ("95.3", "4.5", "90.8", "82.3", "48.3", "87.7", "0.8", "63.3", "43.7"):
        assert paper in page, paper
    assert "<script" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}


def test_deviation_badges_are_visible(built):
    page = built["html"]
    assert '<span class="badge bad">below paper by 51.2 pts</span>' in page  # D_rand 12.1 vs 63.3
    assert '<span class="badge bad">below paper by 7.2 pts</span>' in page  # adversarial robust 75.1 vs 82.3
    # Above the paper is bad where the paper's point is a robust accuracy near zero, else a warning.
    assert '<span class="badge bad">above paper by 5.2 pts</span>' in page  # standard robust 9.7 vs 4.5
    assert '<span class="badge warn">above paper by 8.6 pts</span>' in page  # D_R robust 56.9 vs 48.3
    assert '<span class="badge ok">within 5 pts (-4.0)</span>' in page  # standard clean 91.3 vs 95.3
    assert "ResNet-18 at width 0.25 instead of ResNet-50" in page


def test_latest_evaluation_wins(tmp_path):
    write_results(tmp_path / "results")
    mid = model_id("cpu", "standard", "d_r")
    results.append("evaluations", [eval_row("cpu", mid, "none", 0.0, 0.333, T0),  # older: ignored
                                   eval_row("cpu", mid, "none", 0.0, 0.777, T0 + timedelta(days=1))],
                   tmp_path / "results")
    paths = report.build_report(tmp_path / "results", tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure2"]["d_r"]["clean"] == pytest.approx(77.7)
    assert "33.3" not in paths["html"].read_text()


def test_every_attack_setting_is_listed_and_figure2_takes_the_strongest(tmp_path):
    """A re-evaluation with another step count adds a row beside the first instead of replacing it; Figure 2
    scores robustness with the strongest attack, so a later quick 3-step check does not replace 20 steps."""
    root = tmp_path / "results"
    write_results(root)
    mid = model_id("cpu", "standard", "d_r")
    results.append("evaluations", [{**eval_row("cpu", mid, "pgd_l2", 0.25, 0.611, T0 + timedelta(days=1)),
                                    "steps": 3}], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure2"]["d_r"]["robust"] == pytest.approx(56.9)  # the 20-step row, not the later 3-step one
    md = paths["markdown"].read_text()
    listed = [line for line in md.splitlines() if line.startswith(f"| {mid} |") and "pgd_l2" in line]
    assert len(listed) == 2
    assert any("| 61.1 |" in line for line in listed) and any("| 56.9 |" in line for line in listed)


def test_rows_differing_only_in_step_size_or_iterate_are_settings_of_their_own(tmp_path):
    """A re-evaluation with another step size or iterate rule adds a row beside the first; a row written before
    these were recorded (null) is a setting of its own, listed as such; the claims compare two models under one
    setting, step size included."""
    root = tmp_path / "results"
    write_results(root)
    mid = model_id("cpu", "standard", "d_r")
    later = eval_row("cpu", mid, "pgd_l2", 0.25, 0.40, T0 + timedelta(days=1))
    results.append("evaluations", [{**later, "step_size": 2 * later["step_size"]},
                                   {**later, "use_best": False, "accuracy": 0.41},
                                   {**later, "step_size": None, "use_best": None, "accuracy": 0.42},
                                   {**later, "step_size": None, "use_best": None, "accuracy": 0.43,
                                    "evaluated_at": T0 + timedelta(days=2)}], root)
    # a clean score has one setting, recorded or not: the later row supersedes the earlier
    clean = eval_row("cpu", mid, "none", 0.0, 0.70, T0 + timedelta(days=1))
    results.append("evaluations", [{**clean, "step_size": None, "use_best": None},
                                   {**clean, "accuracy": 0.71, "evaluated_at": T0 + timedelta(days=2)}], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    md = paths["markdown"].read_text()
    listed = [line for line in md.splitlines() if line.startswith(f"| {mid} |") and "pgd_l2" in line]
    assert len(listed) == 4  # 56.9 (write_results'), 40.0, 41.0, and the later of the two unrecorded ones
    assert [line for line in listed if "| 0.03125, worst |" in line and "| 56.9 |" in line]
    assert [line for line in listed if "| 0.0625, worst |" in line and "| 40.0 |" in line]
    assert [line for line in listed if "| 0.03125, last |" in line and "| 41.0 |" in line]
    assert [line for line in listed if "| not recorded |" in line and "| 43.0 |" in line]
    (clean_line,) = [line for line in md.splitlines() if line.startswith(f"| {mid} |") and "| none |" in line]
    assert "| 71.0 |" in clean_line
    ev = report.current_evaluations(root, tmp_path / "nodata", "cpu")
    assert len(ev[(ev["model_id"] == mid) & (ev["attack"] == "pgd_l2")]) == 4 and "setting" not in ev
    # the standard model was scored with write_results' setting only: D_R's score under it is the one compared
    assert "robust accuracy (20 steps): D_R 56.9, standard 9.7" in md


def test_evaluations_of_earlier_weights_are_left_out(tmp_path):
    """A retrained model (new checkpoint hash) is described only by evaluations made since; a rerun that
    restored the same checkpoint (same hash) keeps the evaluations it had."""
    root = tmp_path / "results"
    write_results(root)
    retrained = model_id("cpu", "standard", "d_r")
    later = T0 + timedelta(days=1)
    results.append("models", [{**model_row("cpu", "standard", "d_r"), "checkpoint_sha256": "1" * 64,
                               "created_at": later},
                              {**model_row("cpu", "standard", "d_nr"), "created_at": later}], root)
    results.append("evaluations", [{**eval_row("cpu", retrained, "none", 0.0, 0.777, later + timedelta(hours=1)),
                                    "steps": 0}], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure2"]["d_r"]["clean"] == pytest.approx(77.7)
    assert summary["figure2"]["d_r"]["robust"] is None  # 56.9 was measured on the old weights
    assert summary["figure2"]["d_nr"]["clean"] == pytest.approx(74.4)
    assert summary["figure2"]["d_nr"]["robust"] == pytest.approx(0.4)


def _d_r_retrained(tmp_path) -> tuple[Path, Path, str, datetime]:
    """The tables of `write_results`, then D_R's model retrained a day later (weights "1...") and scored 77.7."""
    root, data = tmp_path / "results", tmp_path / "data"
    write_results(root)
    mid = model_id("cpu", "standard", "d_r")
    later = T0 + timedelta(days=1)
    results.append("models", [{**model_row("cpu", "standard", "d_r"), "checkpoint_sha256": "1" * 64,
                               "created_at": later}], root)
    results.append("evaluations", [eval_row("cpu", mid, "none", 0.0, 0.777, later + timedelta(hours=1))], root)
    return root, data, mid, later


def test_weights_and_sets_put_back_by_dvc_are_described_by_their_own_rows(tmp_path):
    """`dvc checkout` or DVC's run cache can put back an earlier run's model and set without running the stage,
    so no row is written: the report must describe what the data folder holds, not the tables' latest rows."""
    root, data, mid, later = _d_r_retrained(tmp_path)
    results.append("datasets", [{**dataset_row("cpu", "d_r", {"final_relative": 0.5}), "run_id": "r9",
                                 "created_at": later}], root)
    newest = json.loads(report.build_report(root, data, tmp_path / "a")["summary"].read_text())
    assert newest["figure2"]["d_r"]["clean"] == pytest.approx(77.7)
    assert newest["construction"]["d_r"]["final_relative"] == 0.5
    # the first run's weights (hash 0...) and set (run r3) are back on disk
    (data / "models" / "d_r").mkdir(parents=True)
    (data / "models" / "d_r" / "meta.json").write_text(json.dumps({"model_id": mid, "checkpoint_sha256": "0" * 64,
                                                                             "run_id": "r1"}))
    (data / "datasets" / "d_r").mkdir(parents=True)
    (data / "datasets" / "d_r" / "manifest.json").write_text(json.dumps({"name": "d_r", "run_id": "r3"}))
    back = json.loads(report.build_report(root, data, tmp_path / "b")["summary"].read_text())
    assert back["figure2"]["d_r"]["clean"] == pytest.approx(80.4) and back["figure2"]["d_r"]["robust"] == 56.9
    assert back["construction"]["d_r"]["final_relative"] == 0.18
    # its training curve is the run's that trained the weights on disk (r1: 3 epochs), not the later r9's 5
    results.append("epochs", [{"model_id": mid, "profile": "cpu", "epoch": e, "train_loss": 1.0, "train_acc": 0.5,
                               "lr": 0.1, "wall_s": 1.0, "run_id": run} for run, n in (("r1", 3), ("r9", 5))
                              for e in range(1, n + 1)], root)
    results.append("models", [{**model_row("cpu", "standard", "d_r"), "checkpoint_sha256": "1" * 64, "run_id": "r9",
                               "created_at": later + timedelta(hours=2)}], root)
    curves = report_tables.epoch_curves(results.load("epochs", root), results.load("models", root),
                                        report_tables.read_on_disk(data)[0])
    assert list(curves[mid]["run_id"]) == ["r1"] * 3
    # and Figure 2 names r1 as the run that trained them, then r2, which scored them
    md = report.build_report(root, data, tmp_path / "b2")["markdown"].read_text()
    row = next(line for line in md.split("## Figure 2")[1].splitlines() if f"| {mid} |" in line)
    assert row.endswith("| r1, r2 |"), row
    # weights no row describes: no numbers, and a note that says how to get them
    (data / "models" / "d_r" / "meta.json").write_text(json.dumps({"model_id": mid, "checkpoint_sha256": "2" * 64,
                                                                   "run_id": "r10"}))
    paths = report.build_report(root, data, tmp_path / "c")
    assert json.loads(paths["summary"].read_text())["figure2"]["d_r"]["clean"] is None
    assert f"{mid}: the weights in the data folder are not in the models table" in paths["html"].read_text()


def test_current_evaluations_describe_the_weights_in_the_data_folder(tmp_path):
    """The public reader gives what the report shows: after weights retrained later are replaced by the earlier
    ones (as `dvc checkout` does, writing no rows), the earlier weights' rows, not the latest."""
    root, data, mid, later = _d_r_retrained(tmp_path)

    def clean_of_d_r() -> list[float]:
        ev = report.current_evaluations(root, data)
        assert list(ev.columns) == list(results.load("evaluations", root).columns)
        return list(ev[(ev["model_id"] == mid) & (ev["attack"] == "none")]["accuracy"])

    assert clean_of_d_r() == [0.777]  # no data folder: the latest weights
    (data / "models" / "d_r").mkdir(parents=True)
    (data / "models" / "d_r" / "meta.json").write_text(json.dumps({"model_id": mid, "checkpoint_sha256": "0" * 64,
                                                                   "run_id": "r1"}))
    assert clean_of_d_r() == [pytest.approx(0.804)]  # the first weights, back on disk
    assert report.current_evaluations(tmp_path / "none", data).empty
    results.append("evaluations", [eval_row("fast", model_id("fast", "standard", "d"), "none", 0.0, 0.9, later)], root)
    assert set(report.current_evaluations(root, data)["profile"]) == {"cpu", "fast"}
    assert set(report.current_evaluations(root, data, profile="cpu")["profile"]) == {"cpu"}


def test_the_models_in_the_data_folder_are_the_ones_reported(tmp_path):
    """After `dvc checkout` of an earlier commit the data folder holds resnet18 models while the tables' latest
    rows are a later resnet9 run's: the report describes the resnet18 ones."""
    root, data = tmp_path / "results", tmp_path / "data"
    write_results(root)
    later = T0 + timedelta(days=1)
    results.append("models", [model_row("cpu", t, s, "resnet9", minute=24 * 60) for t, s in CLEAN_ROBUST], root)
    results.append("evaluations", [eval_row("cpu", model_id("cpu", t, s, "resnet9"), "none", 0.0, 0.5, later)
                                   for t, s in CLEAN_ROBUST], root)
    newest = json.loads(report.build_report(root, data, tmp_path / "a")["summary"].read_text())
    assert newest["figure2"]["standard"]["model_id"] == "cpu/standard-d-resnet9"
    for (training, train_set), name in zip(CLEAN_ROBUST, ("standard", "robust", "d_r", "d_nr", "d_rand", "d_det"),
                                           strict=True):
        (data / "models" / name).mkdir(parents=True)
        (data / "models" / name / "meta.json").write_text(json.dumps(
            {"model_id": model_id("cpu", training, train_set), "checkpoint_sha256": "0" * 64, "run_id": "r1"}))
    back = json.loads(report.build_report(root, data, tmp_path / "b")["summary"].read_text())
    assert back["figure2"]["standard"]["model_id"] == "cpu/standard-d-resnet18"
    assert back["figure2"]["standard"]["clean"] == pytest.approx(91.3) and back["table1"]["d_det"]["clean"] == 30.1


def test_history_of_the_profile_does_not_stand_in_for_its_latest_run(tmp_path):
    """The tables are append-only: a profile's earlier architecture (resnet18), a transfer target it no longer
    trains (densenet121) and a longer earlier training of a model stay in them. The report shows the latest:
    the resnet9 models, the architectures of the last transfer measurement, the curve of the saving run."""
    root = tmp_path / "results"
    write_results(root)
    later = T0 + timedelta(days=1)
    models, evals = [], []
    for (training, train_set), (clean, _) in CLEAN_ROBUST.items():
        models.append({**model_row("cpu", training, train_set, "resnet9", minute=24 * 60), "run_id": "r9"})
        mid = model_id("cpu", training, train_set, "resnet9")
        evals += [eval_row("cpu", mid, "none", 0.0, clean / 2, later), eval_row("cpu", mid, "pgd_l2", 0.25, 0.0, later)]
    results.append("models", models, root)
    results.append("evaluations", evals, root)
    results.append("transfer", [
        {"source_model_id": model_id("cpu", "standard", "d"), "target_model_id": model_id("cpu", "standard", "d", a),
         "target_arch": a, "profile": "cpu", "attack": "pgd_l2_targeted", "eps": 0.5, "steps": 20,
         "success_rate": 0.1, "n": 500, "run_id": run, "created_at": when}
        for a, run, when in (("densenet121", "r5", T0 + timedelta(hours=2)),
                             ("resnet9", "r6", later), ("vgg16", "r6", later))], root)
    results.append("epochs", [  # the standard model trained by run r8 for 3 epochs, then again by r9 for 2
        {"model_id": model_id("cpu", "standard", "d", "resnet9"), "profile": "cpu", "epoch": e, "train_loss": 1.0,
         "train_acc": 0.5, "lr": 0.1, "wall_s": 10.0, "run_id": run} for run, n in (("r8", 3), ("r9", 2))
        for e in range(n)], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure2"]["standard"]["model_id"] == "cpu/standard-d-resnet9"
    assert summary["figure2"]["standard"]["clean"] == pytest.approx(45.65)
    assert sorted(summary["figure3"]["points"]) == ["resnet9", "vgg16"]
    curves = report_tables.epoch_curves(results.load("epochs", root), results.load("models", root))
    assert list(curves["cpu/standard-d-resnet9"]["run_id"]) == ["r9", "r9"]


def test_models_of_another_architecture_do_not_stand_in(tmp_path):
    """A profile that now trains resnet9 source models but has not yet trained resnet9s on D_R: the report says
    D_R is not run yet rather than pairing the resnet18 trained on an older D_R with the new source models."""
    root = tmp_path / "results"
    write_results(root)
    later = T0 + timedelta(days=1)
    results.append("models", [model_row("cpu", t, "d", "resnet9", minute=24 * 60)
                              for t in ("standard", "adversarial")], root)
    results.append("evaluations", [eval_row("cpu", model_id("cpu", t, "d", "resnet9"), "none", 0.0, 0.5, later)
                                   for t in ("standard", "adversarial")], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure2"]["standard"]["model_id"] == "cpu/standard-d-resnet9"
    assert summary["figure2"]["d_r"]["model_id"] is None and summary["table1"]["d_det"]["model_id"] is None
    assert summary["claims"]["d_r_robust"] is None


def test_clearly_above_counts_sampling_error():
    above, chance = report_claims.clearly_above, report_paper.CHANCE
    # chance 10% over 1,000 images: 3 standard errors are 2.85 points
    assert not above(12.1, 1000, chance) and above(13.0, 1000, chance)
    assert above(12.1, 10000, chance)  # 0.9 points at 10,000
    assert not above(5.0, 1000, 4.0, 1000) and above(8.0, 1000, 4.0, 1000)
    assert not above(0.0, 1000, 0.0, 1000)


def transfer_results(root: Path, points: dict[str, tuple[float, float]], run: str = "r4") -> None:
    """Figure 3's rows for several architectures: {arch: (transfer success, D_det accuracy)} as fractions."""
    when = T0 + timedelta(hours=2)
    models = [model_row("cpu", "standard", s, a, minute=1) for a in points for s in ("d", "d_det")]
    results.append("models", models, root)
    results.append("evaluations", [eval_row("cpu", model_id("cpu", "standard", "d_det", a), "none", 0.0, acc, when)
                                   for a, (_, acc) in points.items()], root)
    results.append("transfer", [
        {"source_model_id": model_id("cpu", "standard", "d"), "target_model_id": model_id("cpu", "standard", "d", a),
         "target_arch": a, "profile": "cpu", "attack": "pgd_l2_targeted", "eps": 0.5, "steps": 20,
         "success_rate": rate, "n": 500, "run_id": run, "created_at": when} for a, (rate, _) in points.items()], root)


def test_figure3_is_judged_over_four_architectures_or_more(tmp_path):
    """The relation holds when Pearson's r is positive at the one-sided 5% level (0.90 over four points), is
    undecided when positive but below that, fails when not positive, and is not judged over three points."""
    archs = ("resnet50", "vgg16", "densenet121", "inception_v3")
    rates = (0.1, 0.2, 0.3, 0.4)
    cases = (("rising", (0.10, 0.30, 0.35, 0.40), True, "positive, as in the paper", 0.93),  # resnet50 at chance
             ("weak", (0.30, 0.20, 0.40, 0.25), None, "positive, but not significantly over 4 architectures", 0.08),
             ("falling", (0.50, 0.30, 0.25, 0.20), False, "not positive, unlike the paper", -0.93))
    for name, accs, holds, verdict, r in cases:
        root = tmp_path / name / "results"
        write_results(root)
        transfer_results(root, dict(zip(archs, zip(rates, accs, strict=True), strict=True)), run="r5")
        paths = report.build_report(root, tmp_path / "nodata", tmp_path / name / "out")
        summary, page = json.loads(paths["summary"].read_text()), paths["html"].read_text()
        assert sorted(summary["figure3"]["points"]) == sorted(archs)  # the latest transfer run's architectures
        assert summary["figure3"]["pearson_r"] == pytest.approx(r, abs=0.01) and summary["claims"]["figure3"] == holds
        assert verdict in page and "(positive at the one-sided 5% level from 0.90)" in page
        assert ('<span class="badge bad">not above chance</span>' in page) == (name == "rising")
    assert "the dashed line is chance (10%)" in page and 'stroke-dasharray="6 4"' in page
    root = tmp_path / "three" / "results"
    write_results(root)
    transfer_results(root, dict(zip(archs[:3], zip(rates, (0.1, 0.3, 0.5), strict=False), strict=True)), run="r5")
    summary = json.loads(report.build_report(root, tmp_path / "nodata", tmp_path / "three-out")["summary"].read_text())
    assert summary["figure3"]["pearson_r"] is None and summary["claims"]["figure3"] is None


def test_figure3_takes_the_d_det_model_the_transfer_run_trained(tmp_path):
    root = tmp_path / "results"
    write_results(root)
    own = "cpu/transfer/standard-d_det-vgg16"
    results.append("models", [{**model_row("cpu", "standard", "d_det", "vgg16"), "model_id": own, "run_id": "r4",
                               "created_at": T0 + timedelta(minutes=1)}], root)
    results.append("evaluations", [eval_row("cpu", own, "none", 0.0, 0.6, T0 + timedelta(hours=1))], root)
    summary = json.loads(report.build_report(root, tmp_path / "nodata", tmp_path / "out")["summary"].read_text())
    assert summary["figure3"]["points"]["vgg16"] == {"transfer_success": 30.0, "d_det_acc": 60.0}


def test_robustness_claims_compare_two_models_under_one_attack(tmp_path):
    """A weekly 100-step re-evaluation of the standard model must not be set against D_R's 20-step score."""
    root = tmp_path / "results"
    write_results(root)
    standard, d_r = model_id("cpu", "standard", "d"), model_id("cpu", "standard", "d_r")
    later = T0 + timedelta(days=1)
    results.append("evaluations", [{**eval_row("cpu", standard, "pgd_l2", 0.25, 0.02, later), "steps": 100}], root)
    summary = json.loads(report.build_report(root, tmp_path / "nodata", tmp_path / "a")["summary"].read_text())
    md = (tmp_path / "a" / "report.md").read_text()
    assert summary["figure2"]["standard"]["robust"] == 2.0  # Figure 2 shows each model's strongest
    assert "robust accuracy (20 steps): D_R 56.9, standard 9.7" in md
    # D_R re-scored with 10 steps only (its 20-step row was on earlier weights): no setting in common
    results.append("models", [{**model_row("cpu", "standard", "d_r"), "checkpoint_sha256": "1" * 64,
                               "created_at": later}], root)
    results.append("evaluations", [{**eval_row("cpu", d_r, "pgd_l2", 0.25, 0.5, later + timedelta(hours=1)),
                                    "steps": 10}], root)
    summary = json.loads(report.build_report(root, tmp_path / "nodata", tmp_path / "b")["summary"].read_text())
    assert summary["claims"]["d_r_robust"] is None and summary["claims"]["d_nr"] is None


def test_a_transfer_rate_measured_before_its_source_was_retrained_is_left_out(tmp_path):
    root = tmp_path / "results"
    write_results(root)
    results.append("models", [{**model_row("cpu", "standard", "d"), "checkpoint_sha256": "1" * 64,
                               "created_at": T0 + timedelta(days=1)}], root)
    paths = report.build_report(root, tmp_path / "nodata", tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure3"]["points"]["vgg16"] == {"transfer_success": None, "d_det_acc": 20.5}
    assert "cpu/standard-d-resnet18 has other weights now: transfer not measured on them yet" in \
        paths["html"].read_text()


def test_figure3_takes_the_d_det_model_of_the_run_that_measured_the_transfer(tmp_path):
    """An earlier transfer run trained its own resnet18 on D_det (another width, say); the latest one reuses the
    main D_det model, so the point pairs the latest rate with the main model's accuracy."""
    root = tmp_path / "results"
    write_results(root)
    old = model_id("cpu", "standard", "d_det", "resnet18").replace("cpu/", "cpu/transfer/")
    results.append("models", [{**model_row("cpu", "standard", "d_det"), "model_id": old, "run_id": "r0",
                               "created_at": T0 + timedelta(minutes=1)}], root)
    results.append("evaluations", [eval_row("cpu", old, "none", 0.0, 0.9, T0 + timedelta(hours=1))], root)
    summary = json.loads(report.build_report(root, tmp_path / "nodata", tmp_path / "out")["summary"].read_text())
    assert summary["figure3"]["points"]["resnet18"] == {"transfer_success": 45.0, "d_det_acc": 30.1}


def test_table1_quotes_the_papers_near_zero_robust_accuracy(built):
    assert re.search(r"\| D_rand \| cpu/standard-d_rand-resnet18 \| 12\.1 \| 63\.3 \| .*\| 0\.0 \| ~0 \| "
                     r"within 5 pts", built["md"])
    assert "the authors' released checkpoints are scored with 20- and 100-step PGD" in built["md"]


def test_the_claims_section_gives_a_verdict_per_claim(built):
    md = built["md"]
    assert "## The paper's claims" in md
    assert re.search(r"\| Robust features alone give robustness.*\| robust accuracy \(20 steps\): D_R 56\.9, "
                     r"standard 9\.7 \| holds \|", md)
    assert re.search(r"\(D_rand\), is above chance on the real test set \| 12\.1 \(chance 10\) \| "
                     r"\*\*does not hold\*\* \|", md)
    assert re.search(r"\(Figure 3\) \| 2 architecture\(s\) with both numbers.*\| cannot tell yet \|", md)


def test_markdown_has_the_tables_and_links_the_figures(built):
    md, out = built["md"], built["paths"]["html"].parent
    assert "| training | model | clean, ours | clean, paper |" in md
    assert re.search(r"\| Standard training on D_NR \| cpu/standard-d_nr-resnet18 \| 74\.4 \| 87\.7 \| "
                     r"\*\*below paper by 13\.3 pts\*\*", md)
    assert re.search(r"\| D_rand \| cpu/standard-d_rand-resnet18 \| 12\.1 \| 63\.3 \|", md)
    for figure in ("figure2.svg", "figure3.svg", "training_curves.svg", "samples.png"):
        assert f"]({figure})" in md and (out / figure).is_file()
    assert (out / "figure2.svg").read_text().startswith("<svg")


def test_summary_json_has_the_main_numbers(built):
    summary = built["summary"]
    assert summary["profile"] == "cpu"
    assert summary["figure2"]["standard"] == {"model_id": "cpu/standard-d-resnet18", "clean": 91.3, "robust": 9.7,
                                              "paper_clean": 95.3, "paper_robust": 4.5}
    assert summary["table1"]["d_det"]["clean"] == 30.1 and summary["table1"]["d_det"]["paper_clean"] == 43.7
    assert summary["figure3"]["points"]["vgg16"] == {"transfer_success": 30.0, "d_det_acc": 20.5}
    assert summary["figure3"]["pearson_r"] is None  # two architectures: too few to judge
    assert summary["table1"]["d_rand"]["paper_robust"] == 0.0
    # D_R 56.9 robust vs standard 9.7; D_NR 74.4 clean, 0.4 robust; D_rand 12.1 (chance 10, n 1000: 2.8 pts needed)
    assert summary["claims"] == {"d_r_robust": True, "d_nr": True, "d_rand": False, "d_det": True, "figure3": None}
    assert summary["construction"]["d_r"]["final_relative"] == 0.18
    assert any("below paper by 51.2 pts" in flag for flag in summary["flags"])
    assert len(summary["deviations"]) == 2


def test_sample_grid_shows_every_available_set(built):
    page = built["html"]
    # 8 samples for D, D_R, D_NR, D_rand; D_det was never built and says so
    assert page.count("data:image/png;base64,") == 4 * 8
    assert "D_det is not built yet" in page
    row = re.search(r'<tr><th scope="row">D_rand</th>(.*?)</tr>', page).group(1)
    assert row.count("<img") == 8 and "airplane" in row


def test_construction_and_provenance(built):
    page = built["html"]
    assert "5.200 → 0.900" in page and "1.110 → 0.180" in page and "96.9" in page
    assert "source training" in page and "abc1234" in page and "1 min 25 s" in page


def test_provenance_lists_the_runs_behind_the_numbers_and_flags_a_later_failed_attempt(tmp_path):
    root = tmp_path / "results"
    write_results(root)  # models trained by run r1, scored by r2, sets by r3, transfer r4

    def run(run_id, stage, minute, version="abc1234", status="ok", device="cpu (x86_64, 2 threads), bf16"):
        return {**run_row("cpu", stage, minute, 60.0, status), "run_id": run_id, "code_version": version,
                "device": device}

    results.append("runs", [run("r0", "source@standard", 0, version="0ld0ld0ld0ld"),  # superseded by r1
                            run("r1", "source@standard", 1), run("r2", "reevaluate", 5),
                            run("r3", "construct@d_r", 2, device="cpu (x86_64, 2 threads), fp32"),
                            run("r4", "transfer", 4), run("r9", "source@standard", 9, status="failed"),
                            run("f1", "train@d_nr", 8, status="failed"),  # a stage that made nothing shown
                            run("rp", "report", 10)], root)
    md = report.build_report(root, tmp_path / "data", tmp_path / "out")["markdown"].read_text()
    section = md.split("## Provenance\n")[1].split("\n## ")[0]
    table = section.split("did not finish")[0]
    assert "0ld0ld0ld0ld" not in md and "code versions" not in md  # r0 made nothing shown: no mixed-version warning
    assert table.count("| source@standard |") == 1 and "| construct@d_r |" in table and "| transfer |" in table
    # each number of Figure 2 and Table 1 names its runs as this table does: trained by r1, scored by r2
    assert "| r1 | source@standard |" in table and "| r2 | reevaluate |" in table
    for heading in ("## Figure 2", "## Table 1"):
        rows = [line for line in md.split(heading)[1].split("\n## ")[0].splitlines() if "| cpu/" in line]
        assert rows and all(line.endswith("| r1, r2 |") for line in rows), rows
    assert "4 stage runs behind these results" in section
    assert "6 other stage runs of this profile" in section  # r0, r9, f1 and write_results' own three; not rp
    later = section.split("2 runs did not finish after the last that made what is shown")[1]
    assert later.count("| source@standard | **failed** |") == 1 and later.count("| source@standard |") == 1
    assert later.count("| train@d_nr | **failed** |") == 1 and "| report |" not in section
    deviations = md.split("## Deviations from the paper\n")[1].split("\n## ")[0]
    assert "bf16 autocast in reevaluate, source@standard, transfer" in deviations  # construct@d_r ran fp32


def test_a_rerun_that_restores_finished_weights_is_not_named_as_their_training(tmp_path):
    """`--redo` or `dvc repro -f` restores a finished checkpoint: a new models row and meta.json name the rerun,
    with the same weights. The run that trained them stays the one named; the rerun scored them again."""
    root, data = tmp_path / "results", tmp_path / "data"
    write_results(root)  # trained by r1, scored by r2
    redo, later = "7" * 32, T0 + timedelta(days=1)
    mid = model_id("cpu", "standard", "d")
    results.append("models", [{**model_row("cpu", "standard", "d"), "run_id": redo, "created_at": later}], root)
    results.append("evaluations", [{**eval_row("cpu", mid, attack, eps, 0.5, later), "run_id": redo}
                                   for attack, eps in (("none", 0.0), ("pgd_l2", 0.25))], root)
    results.append("runs", [{**run_row("cpu", "source@standard", 0, 60.0), "run_id": "r1"},
                            {**run_row("cpu", "source@standard", 24 * 60, 3.0), "run_id": redo}], root)
    (data / "models" / "standard").mkdir(parents=True)
    (data / "models" / "standard" / "meta.json").write_text(json.dumps({"model_id": mid, "run_id": redo,
                                                                        "checkpoint_sha256": "0" * 64}))
    md = report.build_report(root, data, tmp_path / "out")["markdown"].read_text()
    row = next(line for line in md.split("## Figure 2")[1].splitlines() if f"| {mid} |" in line)
    assert row.endswith("| r1, 77777777 |"), row  # the short id the Provenance table prints
    table = md.split("## Provenance\n")[1].split("\n## ")[0]
    assert "| r1 | source@standard |" in table and "| 77777777 | source@standard |" in table
    # retrained to other weights (r3), then to these same ones again (a deterministic rerun, r4): r4 made them
    results.append("models", [{**model_row("cpu", "standard", "d"), "run_id": run, "checkpoint_sha256": sha * 64,
                               "created_at": later + timedelta(hours=h)} for run, sha, h in (("r3", "1", 1),
                                                                                             ("4" * 32, "0", 2))], root)
    md = report.build_report(root, data, tmp_path / "out2")["markdown"].read_text()
    row = next(line for line in md.split("## Figure 2")[1].splitlines() if f"| {mid} |" in line)
    assert row.endswith("| 44444444, 77777777 |"), row  # the same bytes the rerun scored before


def test_the_data_line_says_how_many_images_the_models_used(tmp_path):
    root = tmp_path / "results"
    write_full_size_cifar(tmp_path / "data")
    results.append("models", [{**model_row("cpu", "standard", "d"), "recipe": results.to_json({"n_train": 5000})}],
                   root)
    results.append("evaluations", [eval_row("cpu", model_id("cpu", "standard", "d"), "none", 0.0, 0.5, T0)], root)
    md = report.build_report(root, tmp_path / "data", tmp_path / "out")["markdown"].read_text()
    assert "This profile's models are trained on 5,000 training images and tested on 1,000 test images." in md


def test_provenance_names_the_data_and_flags_arrays_that_are_not_canonical(tmp_path):
    manifest_path, manifest = write_full_size_cifar(tmp_path / "data")
    # where the arrays came from is the datasets table's row of D (the manifest, which DVC hashes, leaves it out)
    results.append("datasets", [{**dataset_row("cpu", "d", {}), "source_model_id": None, "source_model_sha256": None,
                                 "recipe": json.dumps({"source": "official", "origin": "https://example/cifar"})}],
                   tmp_path / "results")
    for canonical, expected in ((True, "the canonical arrays, as published"),
                                (False, "not the canonical CIFAR-10 arrays"), (None, "not the full sets")):
        manifest_path.write_text(json.dumps({**manifest, "canonical": canonical}))
        paths = report.build_report(tmp_path / "results", tmp_path / "data", tmp_path / "out")
        page, md = paths["html"].read_text(), paths["markdown"].read_text()
        assert "Data: CIFAR-10, 50,000 training / 10,000 test images, from the official source" in md
        assert expected in page and expected in md and "aaaaaaaaaaaa" in md


# ---------------------------------------------------------------- missing and partial inputs


def test_the_data_source_shows_for_a_profile_that_did_not_fetch(tmp_path):
    """Fetch reads no profile: a second profile in the same data folder skips it, and reads the first one's D."""
    write_full_size_cifar(tmp_path / "data")
    root = tmp_path / "results"
    results.append("datasets", [{**dataset_row("cpu", "d", {}), "source_model_id": None, "source_model_sha256": None,
                                 "recipe": json.dumps({"source": "mirror", "origin": "/mirror/cifar10"})}], root)
    write_results(root, "tiny")
    md = report.build_report(root, tmp_path / "data", tmp_path / "out", profile="tiny")["markdown"].read_text()
    assert "from the mirror source (/mirror/cifar10)" in md and "Other profiles in the tables, not shown: cpu" in md


def test_missing_everything_still_builds(tmp_path):
    paths = report.build_report(tmp_path / "no-results", tmp_path / "no-data", tmp_path / "out")
    page, md = paths["html"].read_text(), paths["markdown"].read_text()
    assert page.count("not run yet") >= 5 and "not run yet" in md
    assert "CIFAR-10 is not fetched yet" in page and "No constructed set is built yet" in page
    assert "Figure 2" in page and page.count("<svg") == 1  # the paper's bars are still drawn
    summary = json.loads(paths["summary"].read_text())
    assert summary["profile"] is None and summary["figure2"]["d_r"]["clean"] is None
    assert summary["figure3"]["points"] == {} and summary["flags"] == []


def test_construction_table_gives_each_set_s_recorded_parameters(tmp_path):
    """What each set was built with comes from its recorded recipe (its own overrides included), not params.yaml."""
    write_results(tmp_path / "results")
    match = {"steps": 100, "step_size": 0.3, "final_step_size": 0.02, "use_best": True, "fake_relu": True}
    pgd = {"eps": 1.0, "steps": 15, "step_size": 0.1, "use_best": True}
    results.append("datasets", [
        {**dataset_row("cpu", "d_r", {}), "recipe": results.to_json({"match": match}), "run_id": "r4"},
        {**dataset_row("cpu", "d_det", {}), "recipe": results.to_json({"pgd": pgd}), "run_id": "r4"},
    ], tmp_path / "results")
    page = report.build_report(tmp_path / "results", tmp_path / "nodata", tmp_path / "out")["html"].read_text()
    assert "matching, 100 steps of 0.3 → 0.02" in page and "targeted PGD, eps 1, 15 steps of 0.1" in page
    md = (tmp_path / "out" / "report.md").read_text()  # each in its own set's row
    assert "| D_R | 5000 | cpu/standard-d-resnet18 | matching, 100 steps of 0.3 → 0.02 |" in md
    assert "| D_det | 5000 | cpu/standard-d-resnet18 | targeted PGD, eps 1, 15 steps of 0.1 |" in md
    assert report_tables.built_with({"match": {**match, "final_step_size": 0.3}}) == "matching, 100 steps of 0.3"
    # variants that differ in a flag only are told apart: the paper's choices go unsaid, the others are named
    assert report_tables.built_with({"match": {**match, "use_best": False, "fake_relu": False}}) == (
        "matching, 100 steps of 0.3 → 0.02, last iterate, true ReLU")
    assert report_tables.built_with({"pgd": {**pgd, "use_best": False}}) == (
        "targeted PGD, eps 1, 15 steps of 0.1, last iterate")
    for unreadable in ({}, {"pgd": {"eps": 1.0}}, {"pgd": "eps 1"}, {"match": {**match, "steps": None}}):
        assert report_tables.built_with(unreadable) == "—", unreadable


def test_the_construction_table_names_replicates_by_their_streams(tmp_path):
    """Two sets whose recorded recipes differ in their name and stream alone are replicates, each given with its
    stream; built from other weights of the source model they are not."""
    pgd = {"eps": 0.5, "steps": 15, "step_size": 0.1, "use_best": True}

    def recipe(name, stream, source_sha="a" * 64):
        return results.to_json({"name": name, "pgd": pgd, "subset": {"train": 5000}, "source_model_sha256": source_sha,
                                "set": {"kind": "pgd", "source": "standard", "targets": "random", "stream": stream}})

    for source_sha, replicates in (("a" * 64, True), ("b" * 64, False)):
        root = tmp_path / source_sha[0] / "results"
        write_results(root)
        results.append("datasets", [
            {**dataset_row("cpu", "d_rand", {}), "recipe": recipe("d_rand", 2), "run_id": "r4"},
            {**dataset_row("cpu", "d_det", {}), "recipe": recipe("d_det", 7, source_sha), "run_id": "r4"},
        ], root)
        paths = report.build_report(root, tmp_path / "nodata", root.parent / "out")
        md, summary = paths["markdown"].read_text(), json.loads(paths["summary"].read_text())
        rows = [line for line in md.splitlines() if line.startswith(("| D_rand | 5000 |", "| D_det | 5000 |"))]
        assert len(rows) == 2
        if replicates:
            assert "eps 0.5, 15 steps of 0.1; draws of stream 2 |" in rows[0]
            assert "eps 0.5, 15 steps of 0.1; draws of stream 7 |" in rows[1]
            # the spread over the two builds: D_rand's 12.1 and D_det's 30.1 (write_results' scores)
            assert "| D_rand, D_det | 12.1, 30.1 | 21.1 ± 12.7 | 0.0, 0.0 | 0.0 ± 0.0 |" in md
            (group,) = summary["replicates"]
            assert group["sets"] == ["d_rand", "d_det"] and group["builds"]["d_det"] == {"clean": 30.1, "robust": 0.0}
            assert group["clean_mean"] == 21.1 and group["clean_sd"] == pytest.approx(12.73, abs=0.01)
        else:
            assert not any("draws of stream" in line for line in rows)
            assert "Replicates" not in md and summary["replicates"] == []


def test_a_set_without_a_row_of_the_papers_is_named_not_left_out(tmp_path):
    """A set the results hold models or a construction of, that Figure 2 and Table 1 have no row for (one added to
    notbugs/sets.py, or one this code no longer knows), gets a visible note, not silence."""
    write_results(tmp_path / "results")
    results.append("models", [model_row("cpu", "standard", "d_new")], tmp_path / "results")
    new = model_id("cpu", "standard", "d_new")
    results.append("evaluations", [eval_row("cpu", new, "none", 0.0, 0.311, T0 + timedelta(hours=2)),
                                   eval_row("cpu", new, "pgd_l2", 0.25, 0.004, T0 + timedelta(hours=2))],
                   tmp_path / "results")
    results.append("datasets", [dataset_row("cpu", "d_gone", {"success_rate": 0.5})], tmp_path / "results")
    paths = report.build_report(tmp_path / "results", tmp_path / "nodata", tmp_path / "out")
    for text in (paths["html"].read_text(), paths["markdown"].read_text()):
        notes = [line for line in text.splitlines() if "FIGURE2 / TABLE1" in line]
        assert len(notes) == 2 and "(d_gone)" in notes[0] and "(d_new)" in notes[1], notes
        assert not any(f"({name})" in " ".join(notes) for name in report_paper.CONSTRUCTED)
        assert "Other constructed sets" in text
    # its model's numbers, as Figure 2 and Table 1 give the paper's sets' (the set without models: not run yet)
    md = paths["markdown"].read_text()
    assert f"| d_new | {new} | 31.1 | 0.4 | 20 |" in md and "| d_gone | not run yet |" in md
    assert "(d_gone): no row of the paper's" in md and "no model is trained on it yet" in md
    other = json.loads(paths["summary"].read_text())["other_sets"]
    assert other["d_new"]["clean"] == 31.1 and other["d_new"]["paper_clean"] is None
    assert other["d_gone"]["model_id"] is None and set(other) == {"d_new", "d_gone"}


def test_labels_come_from_the_table_of_sets():
    from notbugs.sets import SETS

    assert report_paper.SET_LABEL == {"d": "D", **{name: s.label for name, s in SETS.items()}}
    assert {k: report_paper.SET_LABEL[k] for k in ("d", "d_r", "d_nr", "d_rand", "d_det")} == {
        "d": "D", "d_r": "D_R", "d_nr": "D_NR", "d_rand": "D_rand", "d_det": "D_det"}
    assert [report_paper.row_label(r) for r in report_paper.FIGURE2] == [
        "Standard training on D", "Adversarial training on D", "Standard training on D_R", "Standard training on D_NR"]
    assert [report_paper.bar_group(r) for r in report_paper.FIGURE2] == [
        "standard (D)", "adversarial (D)", "D_R", "D_NR"]


def test_no_transfer_yet_says_so(tmp_path):
    root = tmp_path / "results"
    results.append("models", [model_row("cpu", "standard", "d")], root)
    results.append("evaluations", [eval_row("cpu", model_id("cpu", "standard", "d"), "none", 0.0, 0.9, T0)], root)
    paths = report.build_report(root, tmp_path / "no-data", tmp_path / "out")
    page = paths["html"].read_text()
    assert "Figure 3: no transfer measurement and no D_det model yet: not run yet." in page
    assert "90.0" in page and "figure3" not in paths


def test_profile_filter_and_default(tmp_path):
    root = tmp_path / "results"
    write_results(root, "cpu", scale=1.0)
    write_results(root, "tiny", scale=0.5)
    # the tiny profile was written last (same timestamps, later part files) only by order; make it later
    results.append("runs", [run_row("tiny", "report", 600, 1.0)], root)
    default = json.loads(report.build_report(root, tmp_path / "d", tmp_path / "a")["summary"].read_text())
    chosen = json.loads(report.build_report(root, tmp_path / "d", tmp_path / "b", profile="cpu")["summary"]
                        .read_text())
    assert default["profile"] == "tiny" and default["figure2"]["standard"]["clean"] == pytest.approx(45.65)
    assert chosen["profile"] == "cpu" and chosen["figure2"]["standard"]["clean"] == pytest.approx(91.3)


def test_injected_loaders_and_failed_run_flag(tmp_path):
    root = tmp_path / "results"
    results.append("runs", [run_row("cpu", "train", 0, 3.0, status="failed")], root)

    def no_sets(path, *choose):
        raise FileNotFoundError(path)

    paths = report.build_report(root, tmp_path, tmp_path / "out", load_samples=no_sets, load_cifar=no_sets)
    page = paths["html"].read_text()
    assert '<span class="badge bad">failed</span>' in page
    assert "D_R is not built yet" in page and "data:image/png" not in page


def test_a_damaged_set_is_not_reported_as_not_built(tmp_path):
    write_results(tmp_path / "results")
    data = tmp_path / "data"
    write_cifar(data)
    write_constructed(data, "d_r", np.arange(8))
    shard = data / "datasets" / "d_r" / "shard-00000.npz"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    page = report.build_report(tmp_path / "results", data, tmp_path / "out")["html"].read_text()
    assert "D_R could not be read" in page and "D_R is not built yet" not in page
    assert "D_NR is not built yet" in page  # no folder at all


def test_a_report_that_cannot_be_written_says_which_file_and_what_is_left(tmp_path, monkeypatch):
    """A full disk (or a read-only folder) names the file, as every other stage's writes do, and says that the
    folder now holds files of two runs (the figures are written before report.html)."""
    import errno

    from notbugs import tempfiles

    root = tmp_path / "results"
    write_results(root)
    out = tmp_path / "out"
    report.build_report(root, tmp_path / "nodata", out)
    real = tempfiles.atomic_write

    def full_at_the_html(path, data):
        if Path(path).name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(tempfiles, "atomic_write", full_at_the_html)
    with pytest.raises(ArtefactError, match=r"report: disk full while writing .*report\.html; .*mixes this run's "
                                            r"files with the last one's; run `notbugs report` again"):
        report.build_report(root, tmp_path / "nodata", out)


def test_svg_helpers_handle_edge_cases():
    bars = report_svg.grouped_bars_svg(["a", "b"], [("ours", "#000", [None, 50.0])], "t")
    assert "n/a" in bars and bars.count("<rect") == 3  # background, one bar, one legend swatch
    scatter = report_svg.scatter_svg([("resnet18", 40.0, 40.0)], "x", "y", "t")
    assert "resnet18 (40.0, 40.0)" in scatter and "<circle" in scatter
    # the chance line stays inside the plot (y 40..350) even when every point is far above it
    scatter = report_svg.scatter_svg([("a", 40.0, 60.0), ("b", 50.0, 70.0)], "x", "y", "t", y_chance=10.0)
    y = float(re.search(r'<line x1="[\d.]+" y1="([\d.]+)"[^>]*stroke-dasharray', scatter).group(1))
    assert 40 <= y <= 350


# ---------------------------------------------------------------- browser


def test_browser_check_renders_and_screenshots(built, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "check_report_browser.py"),
                           str(built["paths"]["html"]), "--screenshot", str(shot), "--require-images"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"screenshot: {shot}" in done.stdout
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_check_fails_clearly_on_a_missing_file(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "check_report_browser.py"),
                           str(tmp_path / "nope.html")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "does not exist" in done.stderr
