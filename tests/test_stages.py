"""The stages end to end through the plain library (no Prefect, no DVC) on synthetic data."""

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from notbugs import construct as C
from notbugs import models
from notbugs import results
from notbugs import record as R
from notbugs import stages as S
from notbugs import units as U
from notbugs.attacks import pgd_l2
from notbugs.compiling import CACHE_ENV
from notbugs.config import construct_params, load_params
from notbugs.deadline import Deadline, Stopped
from notbugs.storage import ArtefactError, load_tensors, package_digest
from notbugs.train import load_model
from tests.conftest import CompiledStandIn, Recorder, SmallBackbone, require_compiled, write_params
from tests.test_train import ticks


def _fast(doc):
    t = doc["profiles"]["tiny"]
    t["transfer"]["archs"] = ["resnet9"]
    t["construct"]["shard_size"] = 60  # 200 images -> 4 shards, the last one partial
    t["construct"]["batch_size"] = 40


@pytest.fixture(scope="module")
def sources(tmp_path_factory, mirror):
    """fetch + both source models, shared by the tests of this module (copied before mutation)."""
    root = tmp_path_factory.mktemp("pipeline")
    path = write_params(root / "params.yaml", mirror, edit=_fast)
    params = load_params(path)
    data = root / "data"
    S.stage_fetch(params, data, "cpu")
    for kind in ("standard", "robust"):
        S.stage_source(params, kind, data, "cpu")
    return params, data


def _with(params, **profile_changes):
    """The same parameters with some of the profile's settings changed."""
    return dataclasses.replace(params, profile=dataclasses.replace(params.profile, **profile_changes))


def _copy(sources, tmp_path):
    params, data = sources
    shutil.copytree(data, tmp_path / "data")
    return params, tmp_path / "data"


def test_source_stage_records_models_epochs_evaluations_and_runs(sources):
    params, data = sources
    root = R.results_root(data)
    models = results.load("models", root)
    assert sorted(models["training"]) == ["adversarial", "standard"]
    assert set(results.load("epochs", root)["epoch"]) == {1, 2}
    ev = results.load("evaluations", root)
    assert set(ev["attack"]) == {"none", "pgd_l2"} and len(ev) == 4 and (ev["n"] == 100).all()
    runs = results.load("runs", root)
    assert set(runs["stage"]) == {"fetch", "source@standard", "source@robust"} and (runs["status"] == "ok").all()
    metrics = json.loads((data / "metrics" / "source_robust.json").read_text())
    assert set(metrics) == {"clean", "pgd_l2_eps0.25"}
    d = results.load("datasets", root)  # fetch's row for D: the arrays every model here was trained on
    assert list(d["name"]) == ["d"] and d["source_model_id"].isna().all()
    manifest = json.loads((data / "cifar10" / "manifest.json").read_text())
    assert d["run_id"][0] == runs[runs["stage"] == "fetch"]["run_id"].iloc[0]
    assert d["n_images"][0] == manifest["counts"]["train"]
    assert json.loads(d["stats"][0])["array_sha256"] == manifest["array_sha256"]
    assert json.loads(d["recipe"][0])["source"] == "mirror" and "source" not in manifest  # the table, not DVC's folder


@pytest.mark.parametrize("name", ["d_r", "d_rand"])
def test_construction_killed_midway_resumes_to_the_same_shards(sources, tmp_path, monkeypatch, name):
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, name, data, "cpu")
    reference = {p.name: p.read_bytes() for p in R.dataset_dir(data, name).glob("shard-*.npz")}
    assert len(reference) == 4

    shutil.rmtree(R.dataset_dir(data, name))
    real, calls = C.build_shard, []

    def dies_on_third(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(C, "build_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        S.stage_construct(params, name, data, "cpu")
    assert not (R.dataset_dir(data, name) / "manifest.json").exists()
    monkeypatch.setattr(C, "build_shard", real)

    rebuilt = []
    monkeypatch.setattr(C, "build_shard", lambda *a, **k: rebuilt.append(a[6]) or real(*a, **k))
    S.stage_construct(params, name, data, "cpu")
    assert rebuilt == [2, 3]  # finished shards are not redone
    assert {p.name: p.read_bytes() for p in R.dataset_dir(data, name).glob("shard-*.npz")} == reference
    runs = results.load("runs", R.results_root(data))
    assert list(runs[runs["stage"] == f"construct@{name}"]["status"].sort_values()) == ["failed", "ok", "ok"]


@pytest.mark.parametrize("name", ["d_nr", "d_det"])
def test_construction_out_of_time_keeps_finished_batches_and_jobs_chain_to_the_same_set(sources, tmp_path, name):
    """Each job may build one batch (40 of a 60-image shard): the next job continues after it."""
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, name, data, "cpu")
    out = R.dataset_dir(data, name)
    reference = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    shutil.rmtree(out)

    stops = []
    for _ in range(12):
        try:
            S.stage_construct(params, name, data, "cpu", deadline=Deadline(1, clock=ticks()))
            break
        except Stopped as e:
            stops.append(str(e))
            if len(stops) == 1:  # the first shard's first batch, kept as a partial shard
                with np.load(out / "shard-00000.partial.npz") as z:
                    assert z["images"].shape == (40, 3, 32, 32)
                assert not (out / "shard-00000.npz").exists()
    assert len(stops) == 7  # 4 shards of 2, 2, 2, 1 batches: a stop after each batch but the last
    assert "after 40 of its 60 images" in stops[0] and "after finishing the shard" in stops[1]
    assert not list(out.glob("*.partial.*"))
    shards = {p.name: p.read_bytes() for p in out.glob("shard-*") if p.suffix == ".npz"}
    assert shards == {k: v for k, v in reference.items() if k.endswith(".npz")}
    statuses = results.load("runs", R.results_root(data)).query(f"stage == 'construct@{name}'")["status"]
    assert sorted(statuses) == ["ok"] * 2 + ["stopped"] * 7


def test_a_partial_shard_of_another_recipe_is_not_continued(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    stopped = Deadline()
    stopped.stop("SIGTERM received")
    with pytest.raises(Stopped, match="SIGTERM received after 40 of its 60 images"):
        S.stage_construct(params, "d_rand", data, "cpu", deadline=stopped)
    out = R.dataset_dir(data, "d_rand")
    # another recipe's batches (black images, consistent checksum) must not end up in this set
    black = C.npz_bytes({"images": np.zeros((40, 3, 32, 32), np.float16)})
    (out / "shard-00000.partial.npz").write_bytes(black)
    meta = json.loads((out / "shard-00000.partial.json").read_text())
    meta.update(recipe_hash="another recipe", sha256=hashlib.sha256(black).hexdigest())
    (out / "shard-00000.partial.json").write_text(json.dumps(meta))
    S.stage_construct(params, "d_rand", data, "cpu")  # rebuilds shard 0 from its first image
    images = C.load_constructed(out)["images"]
    assert images.shape == (200, 3, 32, 32) and images[:40].reshape(40, -1).max(1).min() > 0
    assert not list(out.glob("*.partial.*"))


def test_reevaluation_cut_short_continues_with_the_models_left(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    root = R.results_root(data)
    before = len(results.load("evaluations", root))
    with pytest.raises(Stopped, match="after 1 of 2 models"):
        S.stage_reevaluate(params, data, "cpu", deadline=Deadline(1, clock=ticks()))
    progress = json.loads((data / "work" / "reevaluate.json").read_text())
    assert len(progress["scored"]) == 1
    summary = S.stage_reevaluate(params, data, "cpu")
    assert sorted(summary) == ["tiny/adversarial-d-resnet9", "tiny/standard-d-resnet9"]
    ev = results.load("evaluations", root)
    assert len(ev) > before
    per_model = 1 + len(params.profile.reevaluate.eps)
    runs = results.load("runs", root)
    runs = runs[runs["stage"] == "reevaluate"]
    (cut,), (ended,) = runs[runs["status"] != "ok"]["run_id"], runs[runs["status"] == "ok"]["run_id"]
    assert len(ev[ev["run_id"] == cut]) == per_model
    # the pass that ended holds every model's rows; the model scored before the cut is not scored
    # again, its rows are the cut job's (same time stamp), under the ending run's id
    last = ev[ev["run_id"] == ended]
    assert len(last) == 2 * per_model and sorted(set(last["model_id"])) == sorted(summary)
    columns = ["model_id", "attack", "eps", "accuracy", "correct", "evaluated_at"]
    first = ev[ev["run_id"] == cut][columns].reset_index(drop=True)
    again = last[last["model_id"] == first["model_id"][0]][columns].reset_index(drop=True)
    assert first.equals(again)
    assert not (data / "work" / "reevaluate.json").exists()  # the pass is over: the next one scores all
    assert len(S.stage_reevaluate(params, data, "cpu")) == 2
    inputs = json.loads(runs[runs["run_id"] == ended]["input_hashes"].iloc[0])  # what it scored, by checksum
    assert sorted(Path(p).parent.name for p in inputs) == ["cifar10", "robust", "standard"]


def test_a_damaged_model_costs_the_others_of_a_reevaluation_pass_nothing(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    weights = R.model_dir(data, "robust") / "model.pt"  # the first of the two folders the pass scores
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])
    with pytest.raises(ArtefactError, match=r"1 model folder\(s\) could not be read; every other model was scored: "
                                            r".*robust"):
        S.stage_reevaluate(params, data, "cpu")
    progress = json.loads((data / "work" / "reevaluate.json").read_text())
    assert list(progress["scored"]) == ["tiny/standard-d-resnet9"]
    weights.write_bytes(good)  # rebuilt: the rerun scores only the model left
    runs_before = results.load("evaluations", R.results_root(data))
    assert sorted(S.stage_reevaluate(params, data, "cpu")) == ["tiny/adversarial-d-resnet9", "tiny/standard-d-resnet9"]
    new = results.load("evaluations", R.results_root(data)).iloc[len(runs_before):]
    scored_now = new[new["evaluated_at"] > runs_before["evaluated_at"].max()]
    assert set(scored_now["model_id"]) == {"tiny/adversarial-d-resnet9"}
    meta = R.model_dir(data, "standard") / "meta.json"  # a damaged meta.json: whose model, cannot be told
    meta.write_text(meta.read_text()[:-20])
    with pytest.raises(ArtefactError, match=r"1 model folder\(s\) could not be read; .*standard.*meta.json"):
        S.stage_reevaluate(params, data, "cpu")
    assert list(json.loads((data / "work" / "reevaluate.json").read_text())["scored"]) == ["tiny/adversarial-d-resnet9"]


def test_one_reevaluation_pass_at_a_time(sources, tmp_path):
    """A second pass on the same data folder (a manual run during the scheduled one) is refused while the first
    holds the lock: both would share work/reevaluate.json and score models twice."""
    params, data = _copy(sources, tmp_path)
    with R.exclusive(data / "work" / "reevaluate.lock", "the test's pass"):
        with pytest.raises(R.Busy, match=r"already running \(pid \d+ on .*lock file .*reevaluate.lock"):
            S.stage_reevaluate(params, data, "cpu")
    assert len(S.stage_reevaluate(params, data, "cpu")) == 2  # released: the next pass runs


def test_reevaluation_records_weights_put_back_without_running_code(sources, tmp_path):
    """DVC's run cache or `dvc checkout` can put back an earlier run's weights without running a stage, so the
    models table's latest row describes other weights. The pass records the weights on disk first, so that the
    report matches the rows it scores to them."""
    params, data = _copy(sources, tmp_path)
    root = R.results_root(data)
    meta = json.loads((R.model_dir(data, "standard") / "meta.json").read_text())
    later = {**results.load("models", root).iloc[-1].to_dict(), "model_id": meta["model_id"],
             "checkpoint_sha256": "f" * 64, "run_id": "a-later-run", "created_at": results.now_utc()}
    results.append("models", [later], root)  # as if a later run had trained other weights, since put back
    S.stage_reevaluate(params, data, "cpu")
    models = results.load("models", root).sort_values("created_at", kind="stable")
    latest = models[models["model_id"] == meta["model_id"]].iloc[-1]
    # the weights on disk, the run that trained them (its epochs are the curve), recorded after the later row
    assert latest["checkpoint_sha256"] == meta["checkpoint_sha256"] and latest["run_id"] == meta["run_id"]
    assert latest["created_at"] > later["created_at"] and latest["arch"] == meta["arch"]
    assert (models["model_id"] == "tiny/adversarial-d-resnet9").sum() == 1  # its latest row was right already
    ev = results.load("evaluations", root)
    assert ev[ev["model_id"] == meta["model_id"]]["evaluated_at"].max() > latest["created_at"]


def test_constructed_sets_follow_the_recipe(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    split = U.load_split(params, data)
    standard, _ = load_model(data / "models" / "standard", torch.device("cpu"))
    robust, _ = load_model(data / "models" / "robust", torch.device("cpu"))
    with torch.no_grad():
        before = standard(split.train_x).argmax(1)  # the standard model on the unperturbed images
    seed = params.profile.construct.seed
    for name in ("d_r", "d_nr", "d_rand", "d_det"):
        S.stage_construct(params, name, data, "cpu")
        arrays = C.load_constructed(R.dataset_dir(data, name))
        assert arrays["images"].dtype == np.float16 and arrays["images"].shape == (200, 3, 32, 32)
        assert np.array_equal(arrays["source_index"], split.train_index)
        y = split.train_y.numpy()
        if name in ("d_r", "d_nr"):
            assert np.array_equal(arrays["labels"], y)
            assert (arrays["start_index"] != arrays["source_index"]).all()  # always another image
            stats = arrays["manifest"]["stats"]
            assert stats["final_distance"] < stats["start_distance"]
            starts = C.assignments(name, y, seed)["start"]  # positions in the split of each image's start
            assert np.array_equal(arrays["start_index"], split.train_index[starts])
            # The direction, measured here rather than read from the statistics the construction reports (which
            # hold whichever image it starts from): each image started at x_start and moved towards the source
            # model's representation of its own source image x. Five steps of 0.1 cannot carry it past halfway
            # (measured: nearer g(x) than g(x_start) for only a quarter of them), so it is checked as a move:
            # nearer g(x) than x_start was, the reported distance is the distance to g(x), and in pixel space
            # it is still next to x_start (0.39 from it against 16 from x, measured).
            model = robust if name == "d_r" else standard
            built = torch.from_numpy(arrays["images"].astype(np.float32))
            with torch.no_grad():
                g_built, g_source, g_start = (model.features(z).flatten(1)
                                              for z in (built, split.train_x, split.train_x[starts]))
            to_source = (g_built - g_source).norm(dim=1)
            assert (to_source < (g_start - g_source).norm(dim=1)).all(), name
            assert to_source.mean().item() == pytest.approx(stats["final_distance"], rel=0.02), name
            assert (g_start - g_source).norm(dim=1).mean().item() == pytest.approx(stats["start_distance"], rel=0.02)
            pixels_to_start = (built - split.train_x[starts]).flatten(1).norm(dim=1)
            assert (pixels_to_start < (built - split.train_x).flatten(1).norm(dim=1)).all(), name
        elif name == "d_det":
            assert np.array_equal(arrays["labels"], (y + 1) % 10)
        else:
            # D_rand: the seed's uniform draw, not a function of the label (D_det's y + 1 would be one)
            assert np.array_equal(arrays["labels"], C.assignments("d_rand", y, seed)["target"])
            assert (arrays["labels"] != (y + 1) % 10).mean() > 0.7  # 0.9 expected
            assert all(len(set(arrays["labels"][y == c].tolist())) >= 5 for c in range(10))  # 20 images a class
        x = split.train_x.numpy()
        if name in ("d_rand", "d_det"):  # inside the eps ball of the source image, and moved towards the target
            eps = params.profile.construct.pgd.eps
            dist = np.linalg.norm((arrays["images"].astype(np.float32) - x).reshape(200, -1), axis=1)
            assert dist.max() <= eps + 0.01 and dist.mean() > eps / 2  # an attack that did nothing: 0
            targets = torch.from_numpy(arrays["labels"])
            with torch.no_grad():
                after = standard(torch.from_numpy(arrays["images"].astype(np.float32))).argmax(1)
            # the tiny model is weak (21% / 10% after against 9% / 0.5% before, measured): well above before
            assert (after == targets).float().mean() > (before == targets).float().mean() + 0.05, name
    ds = results.load("datasets", R.results_root(data)).set_index("name")
    assert sorted(ds.index) == ["d", "d_det", "d_nr", "d_r", "d_rand"]
    # D_R from the robust model; D_NR, D_rand, D_det from the standard one (the paper's C_R and C)
    source = {name: str(ds.loc[name, "source_model_id"]).split("/")[-1] for name in ("d_r", "d_nr", "d_rand", "d_det")}
    assert source == {"d_r": "adversarial-d-resnet9", "d_nr": "standard-d-resnet9", "d_rand": "standard-d-resnet9",
                      "d_det": "standard-d-resnet9"}


def test_a_variant_set_is_built_with_its_own_parameters(sources, tmp_path, monkeypatch):
    """D_det at eps 1.0 (a new entry of the sets' table with its own construct_on eps and step size) is attacked
    to that radius, beyond D_det's 0.5, and records its parameters; D_det is built as before beside it."""
    from notbugs.sets import SETS, SetSpec

    params, data = _copy(sources, tmp_path)
    pgd = params.profile.construct.pgd
    stream = 1 + max(s.stream for s in SETS.values())  # one no entry has, yours included
    monkeypatch.setitem(SETS, "d_test_variant", SetSpec("pgd", "standard", "next", stream, "D_det (test variant)"))
    wide = dataclasses.replace(pgd, eps=1.0, step_size=0.3)  # 5 steps of 0.1 could not leave the 0.5 ball
    params = _with(params, construct_on={**params.profile.construct_on,
                                         "d_test_variant": {"eps": 1.0, "step_size": 0.3}})
    x = U.load_split(params, data).train_x.numpy().reshape(200, -1)
    dist = {}
    for name in ("d_det", "d_test_variant"):
        S.stage_construct(params, name, data, "cpu")
        images = C.load_constructed(R.dataset_dir(data, name))["images"].astype(np.float32).reshape(200, -1)
        dist[name] = np.linalg.norm(images - x, axis=1)
    assert dist["d_det"].max() <= pgd.eps + 0.01 and dist["d_test_variant"].max() <= 1.0 + 0.01
    assert dist["d_test_variant"].mean() > pgd.eps + 0.1  # the wider ball used: beyond every D_det image
    ds = results.load("datasets", R.results_root(data)).set_index("name")
    recipes = {name: json.loads(ds.loc[name, "recipe"]) for name in ("d_det", "d_test_variant")}
    assert recipes["d_test_variant"]["pgd"] == dataclasses.asdict(wide)
    assert recipes["d_det"]["pgd"] == dataclasses.asdict(pgd)
    assert recipes["d_test_variant"]["set"]["stream"] == stream


def test_a_replicate_set_is_built_on_draws_of_its_own_and_reported_as_one(sources, tmp_path, monkeypatch):
    """D_rand once more from another stream, no overrides: the same recipe but for the stream, other targets,
    and the report's construction table gives both sets' streams."""
    from notbugs.report import build_report
    from notbugs.sets import SETS

    params, data = _copy(sources, tmp_path)
    stream = 1 + max(s.stream for s in SETS.values())  # one no entry has, yours included
    monkeypatch.setitem(SETS, "d_test_replicate", dataclasses.replace(SETS["d_rand"], stream=stream,
                                                                      label="D_rand (replicate)"))
    built = {}
    for name in ("d_rand", "d_test_replicate"):
        S.stage_construct(params, name, data, "cpu")
        built[name] = C.load_constructed(R.dataset_dir(data, name))
    assert (built["d_rand"]["labels"] != built["d_test_replicate"]["labels"]).mean() > 0.5  # other targets
    ds = results.load("datasets", R.results_root(data)).set_index("name")
    recipes = {name: json.loads(ds.loc[name, "recipe"]) for name in built}
    assert recipes["d_test_replicate"]["set"] == {**recipes["d_rand"]["set"], "stream": stream}
    assert {k: v for k, v in recipes["d_test_replicate"].items() if k not in ("set", "name")} == {
        k: v for k, v in recipes["d_rand"].items() if k not in ("set", "name")}
    # the report's tables of sets are made on import, from the table as it was then
    from notbugs import report, report_paper, report_samples, report_tables
    for module in (report, report_samples, report_tables):
        monkeypatch.setattr(module, "CONSTRUCTED", (*report_paper.CONSTRUCTED, "d_test_replicate"))
    monkeypatch.setitem(report_paper.SET_LABEL, "d_test_replicate", "D_rand (replicate)")
    md = build_report(R.results_root(data), data, tmp_path / "report", "tiny")["markdown"].read_text()
    pgd = params.profile.construct.pgd
    how = f"targeted PGD, eps {pgd.eps:g}, {pgd.steps} steps of {pgd.step_size:g}"
    assert f"| D_rand | 200 | tiny/standard-d-resnet9 | {how}; draws of stream {SETS['d_rand'].stream} |" in md
    assert f"| D_rand (replicate) | 200 | tiny/standard-d-resnet9 | {how}; draws of stream {stream} |" in md
    assert "draws of stream" not in md.split("| D_det |")[1].splitlines()[0]


def test_report_samples_are_the_set_s_images_read_row_by_row(sources, tmp_path):
    """The report's few samples come from seeking in the shards; they equal the loaded set's, also
    from a compressed shard; a shard cut short or a NaN image is an error naming the set."""
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_r", data, "cpu")
    out = R.dataset_dir(data, "d_r")
    full = C.load_constructed(out)
    assert len(full["manifest"]["shards"]) >= 2
    picks = [len(full["labels"]) - 1, 0, 5, params.profile.construct.shard_size + 3]  # across shards, any order
    seen = []

    def choose(source_index, labels):
        seen.append((source_index, labels))
        return picks

    got = C.load_samples(out, choose)
    (index, labels), = seen
    assert np.array_equal(index, full["source_index"]) and np.array_equal(labels, full["labels"])
    assert list(got["positions"]) == picks and np.array_equal(got["images"], full["images"][picks])
    shard = out / "shard-00001.npz"
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(shard, **arrays)
    assert np.array_equal(C.load_samples(out, choose)["images"], full["images"][picks])
    C.atomic_write_bytes(shard, C.npz_bytes(arrays)[:-20_000])  # cut short: its zip directory is gone
    with pytest.raises(ArtefactError, match="shard-00001.npz is not a shard of plain arrays.*construct@d_r"):
        C.load_samples(out, choose)
    C.atomic_write_bytes(shard, C.npz_bytes({**arrays, "images": arrays["images"][:10]}))  # rows missing
    with pytest.raises(ArtefactError, match="shard-00001.npz: cannot read its images.*outside its 10 rows"):
        C.load_samples(out, lambda source_index, labels: [params.profile.construct.shard_size + 50])
    arrays["images"][3, 0, 0, 0] = np.nan
    C.atomic_write_bytes(shard, C.npz_bytes(arrays))
    with pytest.raises(ArtefactError, match="NaN"):
        C.load_samples(out, choose)


def test_corrupt_shard_is_detected(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_det", data, "cpu")
    shard = R.dataset_dir(data, "d_det") / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtefactError, match="shard-00001.npz is missing or corrupt.*construct@d_det"):
        C.load_constructed(R.dataset_dir(data, "d_det"))


def test_nan_in_a_constructed_set_is_refused(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_det", data, "cpu")
    out = R.dataset_dir(data, "d_det")
    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(out / "shard-00000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"][0, 0, 0, 0] = np.nan
    blob = C.npz_bytes(arrays)
    (out / "shard-00000.npz").write_bytes(blob)
    manifest["shards"][0]["sha256"] = __import__("hashlib").sha256(blob).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="NaN"):
        C.load_constructed(out)


def test_transfer_attacks_test_images_of_every_class(sources, monkeypatch):
    """Figure 3's n examples are made from n / 10 test images of each class: the test arrays are sorted
    by class, and their first n (the `cpu` profile's 500 of 1,000) were of five classes only."""
    params, data = sources
    params = _with(params, transfer=dataclasses.replace(params.profile.transfer, n=50))
    split = U.load_split(params, data)
    attacked = []

    class Enough(Exception):
        pass

    def attack(source, x, y, *args, **kwargs):
        attacked.append(y)
        raise Enough

    monkeypatch.setattr(S, "make_transfer_examples", attack)
    with pytest.raises(Enough):
        S.measure_transfer(params, {}, split, data, torch.device("cpu"), "run")
    assert torch.bincount(attacked[0], minlength=10).tolist() == [5] * 10


def test_evaluation_and_transfer_attack_with_the_profile_s_settings(sources, tmp_path, monkeypatch):
    """The profile's attack settings reach the attacks the stages run: robust accuracy with its step factor and
    iterate rule (a weaker attack would overstate Figure 2 and Table 1), Figure 3's targeted examples with
    construction's PGD settings. The attacks are stood in for: only their arguments are checked here."""
    from notbugs import evaluate as E

    params, data = sources
    p = params.profile
    split = U.load_split(params, data)
    model, _ = load_model(R.model_dir(data, "standard"))
    attack = Recorder(pgd_l2, lambda a: a["x"].clone())
    monkeypatch.setattr(E, "pgd_l2", attack)
    cfg = p.reevaluate  # two radii
    U.evaluate_unit(params, model, "m", "0" * 64, split, cfg, tmp_path, torch.device("cpu"),
                    "run")  # rows to an empty folder
    assert [c["eps"] for c in attack.calls] == list(cfg.eps) and cfg.use_best
    for call in attack.calls:
        assert call["steps"] == cfg.steps
        assert call["step_size"] == pytest.approx(cfg.step_factor * call["eps"] / cfg.steps)
        assert call["use_best"] is cfg.use_best and call["targeted"] is False

    class Enough(Exception):
        pass

    def stop(arguments):
        raise Enough

    attack = Recorder(pgd_l2, stop)
    monkeypatch.setattr(E, "pgd_l2", attack)
    with pytest.raises(Enough):
        S.measure_transfer(params, {}, split, data, torch.device("cpu"), "run")
    (call,) = attack.calls
    pgd = p.construct.pgd
    assert (call["eps"], call["steps"], call["step_size"]) == (pgd.eps, pgd.steps, pgd.step_size)
    assert call["targeted"] is True and call["use_best"] is pgd.use_best is True
    # D_det built with its own parameters: Figure 3's examples are made as D_det's images are
    attack.calls.clear()
    with pytest.raises(Enough):
        own = _with(params, construct_on={**p.construct_on, "d_det": {"eps": 0.75, "steps": 3}})
        S.measure_transfer(own, {}, split, data, torch.device("cpu"), "run")
    assert (attack.calls[0]["eps"], attack.calls[0]["steps"]) == (0.75, 3)


def test_whole_pipeline_fills_every_table(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    trained = {}
    for name in ("d_r", "d_nr", "d_rand", "d_det"):
        S.stage_construct(params, name, data, "cpu")
        trained[name] = S.stage_train(params, name, data, "cpu")
        assert 0 <= trained[name]["clean"] <= 1
    transfer = S.stage_transfer(params, data, "cpu")
    assert set(transfer["resnet9"]) == {"transfer_success", "d_det_clean"}
    # the profile's own architecture on D_det is the train@d_det model, reused rather than retrained
    assert transfer["resnet9"]["d_det_clean"] == trained["d_det"]["clean"]
    # re-scored with another step and the last iterate: rows of their own, each with its attack's settings
    again = dataclasses.replace(params.profile.reevaluate, step_factor=2.0, use_best=False)
    S.stage_reevaluate(_with(params, reevaluate=again), data, "cpu")
    paths = S.stage_report(params, data, None, "cpu")
    assert "report.html" in paths["html"]
    _rows_hold_their_attack_settings(R.results_root(data), params.profile.evaluate, again,
                                     construct_params(params.profile, "d_det"))
    counts = results.summary(R.results_root(data))
    # 2 source + 4 train + 1 transfer target (on D) models, each clean + 1 eps, then re-evaluated at 2 eps
    assert counts["models"] == 7 and counts["transfer"] == 1 and counts["datasets"] == 1 + 4  # D, then the four
    assert counts["evaluations"] == 7 * 2 + 7 * 3
    assert counts["runs"] == 3 + 4 + 4 + 1 + 1 + 1
    _rows_join_to_the_weights_and_sets_they_describe(R.results_root(data))


def _rows_hold_their_attack_settings(root, evaluate, reevaluate, d_det):
    """Each evaluation row holds its attack's step and iterate rule, those of the section its stage read; each
    transfer row those of D_det's construction."""
    evals, runs = results.load("evaluations", root), results.load("runs", root)
    stage = evals["run_id"].map(dict(zip(runs["run_id"], runs["stage"], strict=True)))
    clean = evals["attack"] == "none"
    assert (evals.loc[clean, "step_size"] == 0).all() and not evals.loc[clean, "use_best"].any()
    for section, rows in ((evaluate, evals[~clean & (stage != "reevaluate")]),
                          (reevaluate, evals[~clean & (stage == "reevaluate")])):
        assert len(rows) > 0
        assert np.allclose(rows["step_size"], section.step_factor * rows["eps"] / rows["steps"])
        assert (rows["use_best"] == section.use_best).all()
    assert evals["step_size"].notna().all() and evals["use_best"].notna().all()
    transfer = results.load("transfer", root)
    assert (transfer["step_size"] == d_det.step_size).all() and (transfer["use_best"] == d_det.use_best).all()


def _rows_join_to_the_weights_and_sets_they_describe(root):
    """Every evaluation and transfer row names the checkpoint it scored, and every model the build of its
    training set: a reader joins on them, with no time intervals."""
    models, evals = results.load("models", root), results.load("evaluations", root)
    weights = set(models["checkpoint_sha256"])
    assert evals["checkpoint_sha256"].notna().all() and set(evals["checkpoint_sha256"]) <= weights
    joined = evals.merge(models[["model_id", "checkpoint_sha256"]].drop_duplicates(), how="left",
                         on="checkpoint_sha256", suffixes=("", "_of_weights"), validate="many_to_one")
    assert (joined["model_id"] == joined["model_id_of_weights"]).all()
    transfer = results.load("transfer", root)
    by_id = dict(zip(models["model_id"], models["checkpoint_sha256"], strict=True))  # one row a model here
    assert list(transfer["source_checkpoint_sha256"]) == [by_id[m] for m in transfer["source_model_id"]]
    assert list(transfer["target_checkpoint_sha256"]) == [by_id[m] for m in transfer["target_model_id"]]
    sets = results.load("datasets", root).set_index("name")["run_id"]
    for _, model in models.iterrows():
        if model["train_set"] == "d":  # CIFAR-10's arrays: no build of a set
            assert pd.isna(model["train_set_run_id"]), model["model_id"]
        else:
            assert model["train_set_run_id"] == sets[model["train_set"]], model["model_id"]
        recipe = json.loads(model["recipe"])  # plain JSON, not a Python repr
        assert recipe["train"]["epochs"] >= 1 and isinstance(recipe["train"]["augment"], dict)


def test_a_second_run_of_a_step_on_one_data_folder_is_refused_before_it_starts(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    runs = len(results.load("runs", R.results_root(data)))
    with R.exclusive(data / "work" / "locks" / "source@standard.lock", "a first run"):  # as a run in progress
        with pytest.raises(R.Busy, match=r"the step source@standard on this data folder is already running"):
            S.stage_source(params, "standard", data, "cpu")
        S.stage_source(params, "robust", data, "cpu")  # another step runs
    assert len(results.load("runs", R.results_root(data))) == runs + 1  # the refused one recorded nothing
    S.stage_source(params, "standard", data, "cpu")  # once the first has ended


def test_runs_record_the_resolved_parameters_and_library_versions(sources):
    params, data = sources
    runs = results.load("runs", R.results_root(data))
    for _, run in runs.iterrows():
        recorded = json.loads(run["params"])
        assert recorded["profile"] == json.loads(json.dumps(params.raw))  # every value, not just a hash
        assert recorded["data"]["mirror"] == params.data.mirror
        body = json.dumps(recorded["profile"], sort_keys=True).encode()  # the hash can be checked against them
        assert hashlib.sha256(body).hexdigest()[:16] == run["params_hash"]
        versions = json.loads(run["versions"])
        assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
        assert versions["python"] == platform.python_version()


def test_training_set_is_the_constructed_one(sources, tmp_path):
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_det", data, "cpu")
    x, y = S.load_training_set(data, "d_det")
    assert x.dtype == torch.float32 and x.shape[0] == len(y) == 200
    arrays = C.load_constructed(R.dataset_dir(data, "d_det"))
    assert torch.equal(x, torch.from_numpy(arrays["images"]).float())  # the perturbed images, not the originals
    split = U.load_split(params, data)
    assert torch.equal(y, (split.train_y + 1) % 10)  # relabelled as their targets, t = y + 1


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_compiled_training_trains_saves_and_resumes_as_eager(sources, tmp_path, monkeypatch):
    """`compile_train` changes speed only: with a stand-in compiler (torch.compile's `_orig_mod.*`
    naming, eager arithmetic) the model trains to the same weights as eager, is compiled once at the
    training batch's shape with the profile's mode, and is saved, checkpointed and handed to
    evaluation under the eager model's names, so that compiled and eager runs resume each other."""
    params, data = _copy(sources, tmp_path)
    split = U.load_split(params, data)
    spec = S.source_spec(params, "standard")
    cpu = torch.device("cpu")
    shutil.rmtree(data / "work", ignore_errors=True)
    eager = _weights(U.train_unit(params, spec, split.train_x, split.train_y, data, cpu, "eager")["model"])

    calls = []

    def stand_in(fn, **kwargs):
        calls.append(kwargs)
        return CompiledStandIn(fn)

    monkeypatch.setattr(torch, "compile", stand_in)
    compiled_params = _with(params, compile_train="reduce-overhead")
    other = tmp_path / "other"
    shutil.copytree(data, other)
    shutil.rmtree(other / "work")
    out = U.train_unit(compiled_params, spec, split.train_x, split.train_y, other, cpu, "compiled")
    assert calls == [{"dynamic": False, "mode": "reduce-overhead"}]
    assert os.environ[CACHE_ENV] == str(other.resolve() / "work" / "compile-cache")  # kept with the data
    assert not isinstance(out["model"].backbone, CompiledStandIn)  # evaluation runs eager
    weights = _weights(out["model"])
    assert weights.keys() == eager.keys() and all(torch.equal(weights[k], eager[k]) for k in eager)
    saved, _ = S.load_model(R.model_dir(other, "standard"))
    assert all(torch.equal(saved.state_dict()[k], eager[k]) for k in eager)
    checkpoint = load_tensors(other / "work" / "standard" / "checkpoint.pt")
    assert set(checkpoint["model"]) == set(eager)

    # the compiled run finds the eager run's finished checkpoint and resumes it (nothing left to train)
    calls.clear()
    resumed = U.train_unit(compiled_params, spec, split.train_x, split.train_y, data, cpu, "resumed")
    assert len(calls) == 1 and all(torch.equal(_weights(resumed["model"])[k], eager[k]) for k in eager)


def test_really_compiled_training_learns_like_eager(sources, tmp_path, monkeypatch, caplog):
    """A real compile (inductor on this CPU, fp32, torch's default mode): the training losses match
    eager's up to rounding, or, where this machine cannot compile, the run falls back to eager. The
    network is one block (what the stage does with a compiled model does not depend on its size;
    with the tiny profile's ResNet-9 this test took 39 s on a 2-core CPU, with this one 18 s)."""
    monkeypatch.setitem(models.ARCHS, "small", lambda width: SmallBackbone())
    params, data = _copy(sources, tmp_path)
    split = U.load_split(params, data)
    spec = dataclasses.replace(S.source_spec(params, "standard"), arch="small")
    cpu = torch.device("cpu")
    shutil.rmtree(data / "work", ignore_errors=True)
    eager = U.train_unit(params, spec, split.train_x, split.train_y, data, cpu, "eager")
    shutil.rmtree(data / "work")
    with caplog.at_level("INFO", logger="notbugs"):
        compiled = U.train_unit(_with(params, compile_train="default"), spec, split.train_x, split.train_y, data,
                                cpu, "compiled")
    ran = [r.getMessage() for r in caplog.records if "training runs" in r.getMessage()]
    assert len(ran) == 1
    require_compiled(None if "training runs compiled" in ran[0] else ran[0])
    for a, b in zip(eager["history"], compiled["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert not any("_orig_mod" in k for k in load_tensors(R.model_dir(data, "standard") / "model.pt"))


def test_shards_built_by_other_code_are_rebuilt(sources, tmp_path, monkeypatch):
    """A stage rerun for new construction code (attacks.py, say) builds every shard again rather than
    taking the old code's shards as done: the recipe, and the `datasets` row, record the code's digest."""
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_det", data, "cpu")
    monkeypatch.setattr(S, "package_digest", lambda *names: "0123456789abcdef")
    real, rebuilt = C.build_shard, []
    monkeypatch.setattr(C, "build_shard", lambda *a, **k: rebuilt.append(a[6]) or real(*a, **k))
    S.stage_construct(params, "d_det", data, "cpu")
    assert rebuilt == [0, 1, 2, 3]
    rows = results.load("datasets", R.results_root(data))
    codes = [json.loads(r)["code"] for r in rows[rows["name"] == "d_det"].sort_values("created_at")["recipe"]]
    assert codes == [package_digest(*C.CONSTRUCT_CODE, *models.arch_code(params.profile.arch)), "0123456789abcdef"]


def test_a_rerun_that_builds_nothing_leaves_the_set_s_folder_as_it_was(sources, tmp_path, monkeypatch):
    """`dvc repro` reruns every construct stage when notbugs/sets.py changes (a new set), and a UI rerun or
    --redo reruns one: a rerun that finds every shard done keeps the manifest, run id and all, so that the
    folder DVC hashes (a persistent output) is byte-identical and nothing trained on it reruns."""
    params, data = _copy(sources, tmp_path)
    S.stage_construct(params, "d_det", data, "cpu")
    folder = R.dataset_dir(data, "d_det")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    rows = len(results.load("datasets", R.results_root(data)))
    real, rebuilt = C.build_shard, []
    monkeypatch.setattr(C, "build_shard", lambda *a, **k: rebuilt.append(a[6]) or real(*a, **k))
    S.stage_construct(params, "d_det", data, "cpu")
    assert rebuilt == [] and {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(results.load("datasets", R.results_root(data))) == rows  # the same build, recorded once
    shutil.rmtree(R.results_root(data) / "datasets")  # tables lost: the rerun records the set again
    S.stage_construct(params, "d_det", data, "cpu")
    assert list(results.load("datasets", R.results_root(data))["run_id"]) == [
        json.loads(before["manifest.json"])["run_id"]]
    (folder / "shard-00001.npz").unlink()  # one shard to build: a new manifest, of this run
    S.stage_construct(params, "d_det", data, "cpu")
    assert rebuilt == [1] and (folder / "manifest.json").read_bytes() != before["manifest.json"]


def test_precision_is_part_of_the_recipe_and_recorded(sources, tmp_path):
    """bf16 and fp32 build different sets (the recipe hash differs, so neither continues the other's
    shards), and the runs and models tables say which precision made what."""
    params, data = _copy(sources, tmp_path)
    bf16 = _with(params, precision="bf16")
    assert (S.prepare_construct(bf16, "d_nr", data, "cpu").recipe_hash
            != S.prepare_construct(params, "d_nr", data, "cpu").recipe_hash)
    S.stage_construct(bf16, "d_nr", data, "cpu")
    S.stage_train(bf16, "d_nr", data, "cpu")
    root = R.results_root(data)
    device = results.load("runs", root).set_index("stage")["device"]
    assert device["construct@d_nr"].endswith(", bf16") and device["train@d_nr"].endswith(", bf16")
    assert device["source@standard"].endswith(", fp32")  # the tiny profile's fp32
    assert not device["fetch"].endswith(("bf16", "fp32"))  # fetch computes nothing with a model
    models = results.load("models", root).set_index("train_set")
    assert json.loads(models.loc["d_nr", "recipe"])["precision"] == "bf16"
    assert json.loads(models.loc["d", "recipe"].iloc[0])["precision"] == "fp32"


def test_a_recipe_s_init_chooses_that_model_s_initial_weights_and_is_recorded(sources, tmp_path, monkeypatch):
    """`init: he` in one source model's recipe builds that model from He's init, the other from
    PyTorch's default; the models table records each recipe's init, and the first model's
    checkpoint (made from the other init) is not resumed."""
    params, data = _copy(sources, tmp_path)
    he = dataclasses.replace(params.profile.source_on["standard"], init="he")
    changed = _with(params, source_on={**params.profile.source_on, "standard": he})
    built = []

    def spy(arch, *args, **kwargs):
        built.append(kwargs.get("init"))
        return make_model(arch, *args, **kwargs)

    make_model = U.make_model
    monkeypatch.setattr(U, "make_model", spy)  # where train_unit looks it up
    for kind in ("standard", "robust"):
        S.stage_source(changed, kind, data, "cpu")
    assert built == ["he", "torch"]
    models = results.load("models", R.results_root(data))
    recipes = models.sort_values("created_at").groupby("training")["recipe"].last()
    assert json.loads(recipes["standard"])["train"]["init"] == "he"
    assert json.loads(recipes["adversarial"])["train"]["init"] == "torch"
    before, _ = load_model(R.model_dir(sources[1], "standard"))
    after, _ = load_model(R.model_dir(data, "standard"))
    assert not torch.equal(before.head.weight, after.head.weight)  # trained anew, not resumed


def test_stages_route_every_unit_through_the_runner_they_are_given(sources, tmp_path):
    """The Prefect flows hand a stage its units as tasks; every unit must go through them, and a
    runner that finishes calls out of order must still give each result to its own call."""
    params, data = _copy(sources, tmp_path)
    calls = []

    def recorded(kind, fn):
        def run(*args):
            calls.append(kind)
            return fn(*args)
        return run

    def backwards(fn, jobs):
        return [fn(*args) for args in reversed(jobs)][::-1]

    units = U.Units(train=recorded("train", U.train_unit), evaluate=recorded("evaluate", U.evaluate_unit),
                    build=recorded("build", U.build_shard), map=backwards)
    stats = S.stage_construct(params, "d_det", data, "cpu", units)
    assert calls == ["build"] * 4
    assert json.loads((R.dataset_dir(data, "d_det") / "manifest.json").read_text())["n"] == 200
    assert 0 < stats["success_rate"] <= 1
    calls.clear()
    S.stage_train(params, "d_det", data, "cpu", units)
    assert calls == ["train", "evaluate"]
    calls.clear()
    transfer = S.stage_transfer(params, data, "cpu", units)
    assert calls == ["train", "evaluate"]  # the D target; the D_det model is train@d_det's
    models = results.load("models", R.results_root(data))
    assert "tiny/transfer/standard-d-resnet9" in set(models["model_id"]) and set(transfer) == {"resnet9"}
    calls.clear()
    S.stage_reevaluate(params, data, "cpu", units)
    assert calls == ["evaluate"] * 4  # standard, robust, d_det, transfer target


def test_plot_tables_leave_what_is_not_measured_empty(tmp_path):
    """figure2.csv and figure3.csv for `dvc plots`: numbers where measured, empty cells (not the text None)
    where not, e.g. a Figure 3 target trained but not yet attacked."""
    import pandas as pd

    summary = {"figure2": {"standard": {"clean": 91.3, "robust": None, "paper_clean": 95.3, "paper_robust": 4.5}},
               "table1": {"d": {"clean": 91.3, "paper_clean": 95.3},  # Figure 2's standard model again
                          "d_det": {"clean": 30.1, "robust": 0.4, "paper_clean": 43.7, "paper_robust": 0.0}},
               "figure3": {"points": {"vgg16": {"transfer_success": None, "d_det_acc": 20.5}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    paths = S.write_plot_tables(tmp_path / "summary.json", tmp_path)
    fig2, fig3 = pd.read_csv(paths["figure2_csv"]), pd.read_csv(paths["figure3_csv"])
    assert "None" not in paths["figure2_csv"].read_text() + paths["figure3_csv"].read_text()
    assert list(fig2["label"]) == ["standard (ours)", "standard (paper)", "d_det (ours)", "d_det (paper)"]
    assert fig2["clean"].tolist() == [91.3, 95.3, 30.1, 43.7]
    assert fig2["robust"].tolist()[1:] == [4.5, 0.4, 0.0] and np.isnan(fig2["robust"].iloc[0])
    assert fig3["transfer_success"].isna().all() and fig3["d_det_acc"].tolist() == [20.5]


def test_code_version_is_dirty_for_code_only(tmp_path):
    """dvc repro rewrites dvc.lock after every stage, and `dvc exp run -S` edits params.yaml: neither is a code
    change. An edited or new library file is."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "notbugs").mkdir()
    (tmp_path / "notbugs" / "models.py").write_text("A = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("profile: cpu\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=tmp_path, capture_output=True,
                         text=True).stdout.strip()
    inside = tmp_path / "notbugs"
    assert R.code_version(inside) == rev

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "params.yaml").write_text("profile: fast\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    assert R.code_version(inside) == rev

    (tmp_path / "notbugs" / "vit.py").write_text("B = 2\n")  # a new module, not yet committed
    assert R.code_version(inside) == rev + "+dirty"
    (tmp_path / "notbugs" / "vit.py").unlink()
    (tmp_path / "notbugs" / "models.py").write_text("A = 2\n")
    assert R.code_version(inside) == rev + "+dirty"


def test_code_version_outside_git_is_unknown(tmp_path):
    assert R.code_version(tmp_path) == "unknown"
