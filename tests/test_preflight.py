"""bench/preflight.py: a GPU profile cut down to a CPU run of the same code paths."""

import dataclasses

import yaml

from notbugs import results
from notbugs.config import load_params
from notbugs.sets import SETS
from tests.conftest import ROOT, bench_script, write_params


def test_shrunken_profiles_keep_their_code_paths_and_cap_their_cost(tmp_path, monkeypatch):
    pf = bench_script("preflight", monkeypatch)
    for name in ("fast", "paper"):
        full = load_params(ROOT / "params.yaml", name).profile
        doc = pf.shrink(yaml.safe_load((ROOT / "params.yaml").read_text()), name, 300, 100, 0.125, 3, 10)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        small = load_params(path).profile  # valid, and the profile the file names
        assert small.name == name and (small.subset.train, small.subset.test, small.width) == (300, 100, 0.125)
        for field in ("arch", "compile", "compile_train", "precision", "adversarial"):  # what picks code paths
            assert getattr(small, field) == getattr(full, field), field
        assert small.transfer.archs == full.transfer.archs and small.transfer.n == 100
        pairs = [(small.train, full.train)] + [(getattr(small, s)[k], getattr(full, s)[k])
                                              for s in ("source_on", "train_on") for k in getattr(full, s)]
        for r, f in pairs:
            assert r.epochs == min(f.epochs, 3) and all(0 < m < r.epochs for m in r.milestones)
            assert (r.schedule, r.augment, r.lr) == (f.schedule, f.augment, f.lr)
        assert small.construct.match.steps <= 10 and small.construct.pgd.steps <= 10
        assert dataclasses.replace(small.construct.match, steps=full.construct.match.steps) == full.construct.match
    assert load_params(path).data.mirror.startswith("/")  # the repository's relative mirror, made absolute
    one = pf.shrink(yaml.safe_load((ROOT / "params.yaml").read_text()), "paper", 300, 100, 0.125, 1, 10)
    path.write_text(yaml.safe_dump(one))
    assert load_params(path).profile.train.milestones == ()  # a 1-epoch step schedule has none left


def test_a_variant_by_its_steps_stays_a_variant_when_shrunk(tmp_path, monkeypatch):
    """D_det from 200 PGD steps beside `fast`'s 30: capped at 10 alike they would be one set (refused on load);
    scaled by one factor they stay apart, and every PGD set still reaches its eps."""
    from notbugs.sets import SetSpec

    pf = bench_script("preflight", monkeypatch)
    stream = 1 + max(s.stream for s in SETS.values())  # one no entry has, yours included
    monkeypatch.setitem(SETS, "d_det_long", SetSpec("pgd", "standard", "next", stream, "D_det (200 steps)"))
    monkeypatch.setattr("notbugs.config.DATASETS", (*SETS,))
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in ("fast", "paper"):
        doc["profiles"][name]["train_on"]["d_det_long"] = {}
        doc["profiles"][name]["construct_on"]["d_det_long"] = {"steps": 200}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(doc))
    load_params(tmp_path / "full.yaml", "fast")  # valid before shrinking
    small = pf.shrink(doc, "fast", 300, 100, 0.125, 3, 10)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    p = load_params(path).profile  # valid: apart, and each reaching its eps
    from notbugs.config import construct_params

    det, long = construct_params(p, "d_det"), construct_params(p, "d_det_long")
    assert (long.steps, det.steps) == (10, 2) and p.construct.match.steps == 10  # 200 : 30 as 10 : 1.5
    assert det.steps * det.step_size >= det.eps and long.steps * long.step_size >= long.eps


def test_preflight_runs_the_profile_end_to_end(tmp_path, mirror, monkeypatch):
    pf = bench_script("preflight", monkeypatch)
    params = write_params(tmp_path / "p.yaml", mirror)
    data = tmp_path / "pre"
    assert pf.main(["--profile", "tiny", "--params", str(params), "--data-dir", str(data), "--train", "100",
                    "--test", "50", "--epochs", "1", "--attack-steps", "2", "--skip", "transfer"]) == 0
    summary = results.summary(data / "results")
    models = 2 + len(SETS)  # both source models and one on each constructed set (notbugs/sets.py: yours too)
    assert summary["models"] == models and summary["datasets"] == 1 + len(SETS)
    assert summary["evaluations"] == 2 * models
    assert (data / "report" / "report.html").exists()
    assert load_params(data / "params.yaml").profile.subset.train == 100
