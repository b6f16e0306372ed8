"""The experiment scripts under bench/ (step rule, recipe sweep) on a tiny synthetic pipeline.

They answer recipe questions (is a short matching rule as good as the paper's? which recipe learns
D_rand?) with the library's own code paths, so they are tested like the library: real matching,
real training, numbers checked for what they must satisfy, not for their values.
"""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml

from notbugs import record as R
from notbugs import stages as S
from notbugs import units as U
from notbugs.attacks import frozen, match_representation
from notbugs.config import load_params
from tests.conftest import ROOT, bench_script, write_params


@pytest.mark.parametrize("name", ["step_rule", "recipe_sweep"])
def test_script_runs_from_any_folder(name, tmp_path):
    """As a script, Python puts bench/ first on the path, where `bench.py` shadows a `bench` package."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--data-dir" in proc.stdout and "--json" in proc.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, mirror):
    """fetch, both source models and D_rand, tiny profile."""
    root = tmp_path_factory.mktemp("experiments")
    path = write_params(root / "params.yaml", mirror)
    params = load_params(path)
    data = root / "data"
    S.stage_fetch(params, data, "cpu")
    for kind in ("standard", "robust"):
        S.stage_source(params, kind, data, "cpu")
    S.stage_construct(params, "d_rand", data, "cpu")
    return path, data


def test_a_constant_rule_run_in_segments_is_one_run(pipeline, monkeypatch):
    """The step-rule script reads the paper rule's trajectory by running it in segments; that must be
    the same computation as one uninterrupted run."""
    path, data = pipeline
    step_rule = bench_script("step_rule", monkeypatch)
    model, _ = S.load_model(R.model_dir(data, "robust"), "cpu")
    x = U.load_split(load_params(path), data).train_x[:12]
    starts = x.roll(1, dims=0)
    with frozen(model):
        z, rel, start_rel, curve, moved = step_rule.match_set(model, x, starts, (9, 0.1, 0.1, 0.0, False), 5,
                                                              torch.device("cpu"), [3, 6], bf16=False)
        once, stats = match_representation(model, starts, x, 9, 0.1, 0.1, bf16=False)
        # with momentum a segment would restart the velocity: the rule runs in one piece
        _, _, _, momentum_curve, _ = step_rule.match_set(model, x, starts, (9, 0.1, 0.1, 0.9, False), 5,
                                                          torch.device("cpu"), [3, 6], bf16=False)
    assert sorted(curve) == [3, 6, 9] and curve[9] == pytest.approx(rel) and list(momentum_curve) == [9]
    assert torch.allclose(z, once, atol=1e-5)
    assert rel == pytest.approx(stats["final_relative"], rel=1e-4) and start_rel > rel
    # segments would restart use_best from each segment's best iterate: one piece too
    with frozen(model):
        z_best, rel_best, _, best_curve, _ = step_rule.match_set(model, x, starts, (9, 0.1, 0.1, 0.0, False), 5,
                                                                 torch.device("cpu"), [3, 6], bf16=False,
                                                                 use_best=True)
        once_best, stats_best = match_representation(model, starts, x, 9, 0.1, 0.1, bf16=False, use_best=True)
    assert list(best_curve) == [9] and torch.allclose(z_best, once_best, atol=1e-5)
    assert rel_best == pytest.approx(stats_best["final_relative"], rel=1e-4) and rel_best <= rel + 1e-6
    assert moved == pytest.approx((once - starts).flatten(1).norm(dim=1).mean().item(), rel=1e-4)
    assert 0 < moved <= 9 * 0.1 + 1e-5  # 9 steps of 0.1 at most


def test_step_rule_reports_distance_and_downstream_accuracy(pipeline, tmp_path, monkeypatch):
    path, data = pipeline
    doc = yaml.safe_load(path.read_text())  # the last iterate, so that the constant rule prints its trajectory
    doc["profiles"]["tiny"]["construct"]["match"]["use_best"] = False
    last = tmp_path / "last_iterate.yaml"
    last.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "rules.json"
    step_rule = bench_script("step_rule", monkeypatch)
    rc = step_rule.main(["--params", str(last), "--data-dir", str(data), "--set", "d_r", "--n", "40",
                         "--rules", "6:0.1,3:0.3:0.02@0.5+fake", "--checkpoints", "2,4", "--seeds", "1,2",
                         "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["rule"] for r in res["rules"]] == ["6 x 0.1", "3 x 0.3->0.02 m0.5 fake"] and res["n"] == 40
    assert [r["fake_relu"] for r in res["rules"]] == [False, True]
    assert res["use_best"] is False
    assert res["class_counts"] == [4] * 10  # not the split's first 40 positions, which are 2 classes
    paper, short = res["rules"]
    assert list(paper["curve"]) == ["2", "4", "6"] and list(short["curve"]) == ["3"]
    assert paper["momentum"] == 0 and short["momentum"] == 0.5
    assert 0 < paper["moved"] <= 6 * 0.1 + 1e-5 and 0 < short["moved"] <= 0.3 + 0.16 + 0.02 + 1e-5
    for r in res["rules"]:
        assert 0 <= r["final_relative"] < r["start_relative"]  # matching moves toward the target
        assert [t["seed"] for t in r["trained"]] == [1, 2]
        assert r["clean"] == pytest.approx(sum(t["clean"] for t in r["trained"]) / 2)
        assert 0 <= r["clean"] <= 1 and set(r["robust"]) == {"0.25"} and 0 <= r["robust"]["0.25"] <= r["clean"]


def test_pgd_rule_of_the_profile_rebuilds_the_pipelines_set(pipeline, monkeypatch):
    """For D_rand the step-rule script attacks as the pipeline does: with the profile's own rule, on
    every position, it gives the constructed set's images (stored in float16) and its target labels."""
    path, data = pipeline
    params = load_params(path)
    p = params.profile
    step_rule = bench_script("step_rule", monkeypatch)
    model, _ = S.load_model(R.model_dir(data, "standard"), "cpu")
    x = U.load_split(params, data).train_x
    built, targets = S.load_training_set(data, "d_rand")
    rule = (p.construct.pgd.steps, p.construct.pgd.step_size, p.construct.pgd.step_size)
    with frozen(model):
        z, reached = step_rule.attack_set(model, x, targets, p.construct.pgd.eps, rule, p.construct.batch_size,
                                          torch.device("cpu"), bf16=False, use_best=p.construct.pgd.use_best)
    assert torch.allclose(z, built, atol=1e-3)
    assert reached["perturbation_norm"] <= p.construct.pgd.eps + 1e-4
    assert reached["target_loss"] < reached["start_target_loss"]  # the attack moves toward the targets


def test_step_rule_for_pgd_sets_reports_success_and_downstream_accuracy(pipeline, tmp_path, capsys, monkeypatch):
    path, data = pipeline
    out = tmp_path / "pgd_rules.json"
    step_rule = bench_script("step_rule", monkeypatch)
    rc = step_rule.main(["--params", str(path), "--data-dir", str(data), "--set", "d_det", "--n", "40",
                         "--rules", "6:0.1,1:0.1", "--seeds", "1", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["rule"] for r in res["rules"]] == ["6 x 0.1", "1 x 0.1"] and res["class_counts"] == [4] * 10
    long, short = res["rules"]
    for r in res["rules"]:
        assert 0 <= r["success_rate"] <= 1 and r["perturbation_norm"] <= 0.5 + 1e-4 and r["pgd_s"] > 0
        assert r["target_loss"] < r["start_target_loss"]
        assert [t["seed"] for t in r["trained"]] == [1] and 0 <= r["clean"] <= 1
    assert long["target_loss"] < short["target_loss"]  # more steps of the same size go further
    assert long["start_target_loss"] == pytest.approx(short["start_target_loss"])  # same images, same targets
    assert "targeted success" in capsys.readouterr().out
    # PGD has a constant step: a decaying rule is refused before any work
    assert step_rule.main(["--params", str(path), "--data-dir", str(data), "--set", "d_rand",
                           "--rules", "6:0.3:0.02", "--no-train", "--device", "cpu"]) == 2
    assert step_rule.main(["--params", str(path), "--data-dir", str(data), "--set", "d_rand",
                           "--rules", "6:0.1@0.9", "--no-train", "--device", "cpu"]) == 2
    assert step_rule.main(["--params", str(path), "--data-dir", str(data), "--set", "d_rand",
                           "--rules", "6:0.1+fake", "--no-train", "--device", "cpu"]) == 2


def test_step_rule_refuses_a_count_that_is_not_balanced(pipeline, capsys, monkeypatch):
    path, data = pipeline
    step_rule = bench_script("step_rule", monkeypatch)
    rc = step_rule.main(["--params", str(path), "--data-dir", str(data), "--n", "45", "--no-train", "--device", "cpu"])
    assert rc == 2 and "not a multiple of the 10 classes" in capsys.readouterr().err


def test_recipe_sweep_trains_each_variant(pipeline, tmp_path, capsys, monkeypatch):
    path, data = pipeline
    out = tmp_path / "sweep.json"
    sweep = bench_script("recipe_sweep", monkeypatch)
    rc = sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "d_rand", "--device", "cpu",
                     "--variant", "{}", "--variant", "{lr: 0.01, epochs: 1, augment: {flip: false}}",
                     "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == [{}, {"lr": 0.01, "epochs": 1, "augment": {"flip": False}}]
    assert "lr=0.01" in rows[1]["recipe"] and "flip=False" in rows[1]["recipe"]
    for r in rows:
        assert 0 <= r["fit_target_labels"] <= 1 and 0 <= r["test_clean"] <= 1 and r["test_robust"] == {}
    # one training accuracy per epoch, the last one the row's last-epoch figure
    epochs = load_params(path).profile.train_on["d_rand"].epochs
    assert [len(r["train_acc_by_epoch"]) for r in rows] == [epochs, 1]
    assert all(r["train_acc_by_epoch"][-1] == r["train_acc_last_epoch"] for r in rows)
    assert "fits its labels" in capsys.readouterr().out
    # a variant that is not a valid recipe is refused before any training
    assert sweep.main(["--params", str(path), "--data-dir", str(data), "--variant", "{lr: -1}"]) == 2
    with pytest.raises(SystemExit):
        sweep.main(["--params", str(path), "--data-dir", str(data), "--variant", "[1, 2]"])


def test_recipe_sweep_trains_the_source_models(pipeline, tmp_path, capsys, monkeypatch):
    """--set standard / robust train on the real training set; the robust one adversarially, with the
    variant's attack merged over the profile's."""
    path, data = pipeline
    sweep = bench_script("recipe_sweep", monkeypatch)
    seen = []
    real_train = sweep.train_and_score.__globals__["train"]

    def spy(*args, **kwargs):
        seen.append((len(args[2]), kwargs.get("adversarial")))
        return real_train(*args, **kwargs)

    monkeypatch.setitem(sweep.train_and_score.__globals__, "train", spy)
    n_train = len(U.load_split(load_params(path), data).train_y)
    out = tmp_path / "robust.json"
    rc = sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "robust", "--device", "cpu",
                     "--robust", "--variant", "{epochs: 1}",
                     "--variant", "{epochs: 1, adversarial: {steps: 1, step_size: 0.5}}", "--json", str(out)])
    assert rc == 0
    profile_attack = load_params(path).profile.adversarial
    assert [a for _, a in seen] == [profile_attack, dataclasses.replace(profile_attack, steps=1, step_size=0.5)]
    assert all(n == n_train for n, _ in seen)
    rows = json.loads(out.read_text())["rows"]
    assert "steps=1" in rows[1]["adversarial"] and "epochs=1" in rows[1]["recipe"]
    for r in rows:
        assert 0 <= r["test_clean"] <= 1 and set(r["test_robust"]) == {"0.25"}

    seen.clear()
    rc = sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "standard", "--device", "cpu",
                     "--variant", "{epochs: 1}"])
    assert rc == 0 and seen == [(n_train, None)]
    capsys.readouterr()
    # an attack belongs to the robust model only; unknown attack keys are refused before training
    assert sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "standard",
                       "--variant", "{adversarial: {steps: 1}}"]) == 2
    assert sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "robust",
                       "--variant", "{adversarial: {stpes: 1}}"]) == 2
    assert "stpes" in capsys.readouterr().err and len(seen) == 1


def test_recipe_sweep_variant_may_train_another_network(pipeline, tmp_path, capsys, monkeypatch):
    """`arch:` / `width:` in a variant choose the network that trains (the profile's otherwise), and
    `init:` (a recipe key) its initial weights (PyTorch's default otherwise); all three are recorded in
    its row; an unknown network, a bad width or an unknown init is refused before any training."""
    path, data = pipeline
    sweep = bench_script("recipe_sweep", monkeypatch)
    built = []
    real_make = sweep.train_and_score.__globals__["make_model"]

    def spy(arch, *args, **kwargs):
        model = real_make(arch, *args, **kwargs)
        built.append((model.arch, model.width, kwargs.get("init")))
        return model

    monkeypatch.setitem(sweep.train_and_score.__globals__, "make_model", spy)
    p = load_params(path).profile
    out = tmp_path / "nets.json"
    rc = sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "standard", "--device", "cpu",
                     "--variant", "{epochs: 1}", "--variant", "{epochs: 1, arch: resnet18, width: 0.0625}",
                     "--variant", "{epochs: 1, width: 0.25, init: he}", "--json", str(out)])
    assert rc == 0
    assert built == [(p.arch, p.width, "torch"), ("resnet18", 0.0625, "torch"), (p.arch, 0.25, "he")]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["arch"], r["width"], r["init"]) for r in rows] == built
    assert all("arch" not in r["recipe"] and 0 <= r["test_clean"] <= 1 for r in rows)
    capsys.readouterr()
    built.clear()
    for bad, says in [("{arch: alexnet}", "alexnet"), ("{width: 0}", "width"), ("{width: wide}", "width"),
                      ("{init: xavier}", "xavier")]:
        assert sweep.main(["--params", str(path), "--data-dir", str(data), "--set", "d_rand", "--device", "cpu",
                           "--variant", "{epochs: 1}", "--variant", bad]) == 2
        assert says in capsys.readouterr().err
    assert built == []
