"""The profile's `trainees`: more models of the same recipe on each constructed set, each from its own seed, and
their mean and spread in the metrics and the report. On synthetic data, through the plain library."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from notbugs import record as R
from notbugs import results
from notbugs import stages as S
from notbugs import steps
from notbugs import sets
from notbugs.config import load_params
from notbugs.deadline import Deadline, Stopped
from notbugs.report import build_report
from notbugs.report_claims import judge_claims, seeds_lower_bound
from notbugs.report_paper import FIGURE2, TABLE1
from notbugs.report_tables import Measured, Spread, trainee_spread, transfer_points
from notbugs.train import load_model
from tests.conftest import write_params
from tests.test_stages import _fast, _with
from tests.test_train import ticks

FIRST = "tiny/standard-d_det-resnet9"


@pytest.fixture(scope="module")
def built(tmp_path_factory, mirror):
    """fetch, the standard source model and D_det, shared by this module's tests (copied before mutation)."""
    root = tmp_path_factory.mktemp("trainees")
    params = load_params(write_params(root / "params.yaml", mirror, edit=_fast))
    data = root / "data"
    S.stage_fetch(params, data, "cpu")
    S.stage_source(params, "standard", data, "cpu")
    S.stage_construct(params, "d_det", data, "cpu")
    return params, data


def _copy(built, tmp_path):
    params, data = built
    shutil.copytree(data, tmp_path / "data")
    return params, tmp_path / "data"


def _meta(data, folder: str) -> dict:
    return json.loads((data / "models" / folder / "meta.json").read_text())


def test_each_trainee_has_its_own_seed_folder_and_id_and_the_metrics_give_their_spread(built, tmp_path):
    params, data = _copy(built, tmp_path)
    metrics = S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    folders = ["d_det", "d_det/trainee-2", "d_det/trainee-3"]
    metas = [_meta(data, f) for f in folders]
    assert [m["model_id"] for m in metas] == [FIRST, f"{FIRST}/trainee-2", f"{FIRST}/trainee-3"]
    seeds = [m["recipe"]["seed"] for m in metas]
    assert seeds[1:] == [seeds[0] + 1_000_000, seeds[0] + 2_000_000]
    assert len({m["checkpoint_sha256"] for m in metas}) == 3
    assert all(m["rebuild"].startswith("dvc repro train@d_det ") for m in metas)

    evals = results.load("evaluations", R.results_root(data))
    clean = [float(evals[(evals["model_id"] == m["model_id"]) & (evals["attack"] == "none")]["accuracy"].iloc[-1])
             for m in metas]
    assert metrics["clean"] == round(clean[0], 4)  # the first model's numbers stay the stage's own
    spread = metrics["trainees"]
    assert spread["n"] == 3
    assert spread["clean"]["mean"] == pytest.approx(np.mean(clean), abs=1e-4)
    assert spread["clean"]["sd"] == pytest.approx(np.std(clean, ddof=1), abs=1e-4)
    robust = [float(evals[(evals["model_id"] == m["model_id"]) & (evals["attack"] == "pgd_l2")]["accuracy"].iloc[-1])
              for m in metas]
    assert spread["pgd_l2_eps0.25"]["mean"] == pytest.approx(np.mean(robust), abs=1e-4)
    assert spread["pgd_l2_eps0.25"]["sd"] == pytest.approx(np.std(robust, ddof=1), abs=1e-4)
    assert set(spread) == {"n", *(k for k in metrics if k not in ("trainees", "train_acc_final"))}
    on_disk = json.loads((data / "metrics" / "train_d_det.json").read_text())
    assert on_disk["trainees"] == spread


def test_the_first_model_is_the_one_a_single_trainee_run_makes(built, tmp_path):
    """Adding trainees changes nothing of the first: same seed, same weights as with one."""
    params, data = _copy(built, tmp_path / "one")
    S.stage_train(params, "d_det", data, "cpu")
    _, more = _copy(built, tmp_path / "three")
    S.stage_train(_with(params, trainees=2), "d_det", more, "cpu")
    assert _meta(data, "d_det")["checkpoint_sha256"] == _meta(more, "d_det")["checkpoint_sha256"]
    assert not R.trainee_dirs(data, "d_det") and len(R.trainee_dirs(more, "d_det")) == 1


def test_fewer_trainees_remove_the_extra_folders_and_more_again_restore_them(built, tmp_path):
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    third = _meta(data, "d_det/trainee-3")
    done = steps.output_recipe(data, "train@d_det")

    assert (data / "plots" / "d_det" / "trainee-3.csv").is_file()
    metrics = S.stage_train(_with(params, trainees=2), "d_det", data, "cpu")
    assert [p.name for p in R.trainee_dirs(data, "d_det")] == ["trainee-2"]
    assert not (data / "plots" / "d_det" / "trainee-3.csv").exists()
    assert metrics["trainees"]["n"] == 2
    assert steps.output_recipe(data, "train@d_det") != done
    assert (data / "work" / "d_det" / "trainee-3" / "checkpoint.pt").is_file()  # nothing trained is lost

    epochs_before = len(results.load("epochs", R.results_root(data)))
    S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    assert _meta(data, "d_det/trainee-3")["checkpoint_sha256"] == third["checkpoint_sha256"]
    model, _ = load_model(data / "models" / "d_det" / "trainee-3")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert steps.output_recipe(data, "train@d_det") == done
    epochs = results.load("epochs", R.results_root(data)).iloc[epochs_before:]
    assert set(epochs["model_id"]) == {FIRST, f"{FIRST}/trainee-2", f"{FIRST}/trainee-3"}


def test_a_missing_trainee_makes_the_train_step_not_done(built, tmp_path):
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=2), "d_det", data, "cpu")
    assert steps.output_recipe(data, "train@d_det") is not None
    (data / "models" / "d_det" / "trainee-2" / "model.pt").unlink()
    assert steps.output_recipe(data, "train@d_det") is None


def test_trainees_are_in_the_step_hash(built):
    params, _ = built
    assert "trainees" in steps.step_params("train@d_det")
    raw = {**params.raw, "trainees": 2}
    more = type(params)(profile=params.profile, data=params.data, raw=raw, paper=params.paper)
    assert steps.step_hash(more, "train@d_det", "a") != steps.step_hash(params, "train@d_det", "a")
    # transfer reads train@d_det's first model only, which more trainees leave as it is
    assert steps.step_hash(more, "transfer", "a") == steps.step_hash(params, "transfer", "a")
    changed = type(params)(profile=params.profile, data=params.data, paper=params.paper,
                           raw={**params.raw, "train_on": {**params.raw["train_on"], "d_det": {"epochs": 1}}})
    assert steps.step_hash(changed, "transfer", "a") != steps.step_hash(params, "transfer", "a")


def test_the_report_shows_the_first_model_and_the_spread_over_all(built, tmp_path):
    params, data = _copy(built, tmp_path)
    metrics = S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    paths = build_report(R.results_root(data), data, tmp_path / "report", "tiny")
    summary = json.loads(paths["summary"].read_text())
    d_det = summary["table1"]["d_det"]
    assert d_det["model_id"] == FIRST
    assert d_det["clean"] == pytest.approx(100 * metrics["clean"], abs=0.01)
    spread = d_det["trainees"]
    assert spread["n"] == 3
    assert spread["clean_mean"] == pytest.approx(100 * metrics["trainees"]["clean"]["mean"], abs=0.02)
    assert spread["clean_sd"] == pytest.approx(100 * metrics["trainees"]["clean"]["sd"], abs=0.02)
    assert spread["robust_mean"] == pytest.approx(100 * metrics["trainees"]["pgd_l2_eps0.25"]["mean"], abs=0.02)
    assert spread["robust_sd"] == pytest.approx(100 * metrics["trainees"]["pgd_l2_eps0.25"]["sd"], abs=0.02)
    assert "trainees" not in summary["table1"]["d"]
    root = R.results_root(data)
    [point] = transfer_points(results.load("transfer", root), results.load("models", root),
                              results.load("evaluations", root), {})
    assert point.d_det_model_id == FIRST  # Figure 3's D_det model is the first, not a trainee
    md = paths["markdown"].read_text()
    assert "clean, mean ± sd" in md
    line = next(line for line in md.splitlines() if line.startswith("| D_det | 3 |"))
    assert f"{spread['clean_mean']:.1f} ± {spread['clean_sd']:.1f} | {spread['robust_mean']:.1f} ± " in line


def test_the_spread_leaves_out_trainees_of_an_earlier_build_of_the_set(built, tmp_path):
    """A trainee's latest row names another build of the set than the first model's: not counted."""
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    root = R.results_root(data)
    models = results.load("models", root)
    row = models[models["model_id"] == f"{FIRST}/trainee-3"].iloc[-1].to_dict()
    results.append("models", [{**row, "train_set_run_id": "an-earlier-build", "created_at": results.now_utc()}], root)
    paths = build_report(root, data, tmp_path / "report", "tiny")
    assert json.loads(paths["summary"].read_text())["table1"]["d_det"]["trainees"]["n"] == 2


def test_reevaluation_scores_every_trainee(built, tmp_path):
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=2), "d_det", data, "cpu")
    scored = S.stage_reevaluate(params, data, "cpu")
    assert {FIRST, f"{FIRST}/trainee-2"} <= set(scored)


def test_a_job_stopped_in_a_later_trainee_leaves_every_saved_model_scored(built, tmp_path):
    """Jobs cut short chain to the same models, and a model saved by a cut job was scored by it."""
    params, data = _copy(built, tmp_path)
    params = _with(params, trainees=3)
    stops = 0
    while True:
        try:
            metrics = S.stage_train(params, "d_det", data, "cpu", deadline=Deadline(5, clock=ticks()))
            break
        except Stopped:
            stops += 1
        evals = results.load("evaluations", R.results_root(data))
        scored = set(zip(evals["model_id"], evals["checkpoint_sha256"], strict=True))
        for folder in [R.model_dir(data, "d_det"), *R.trainee_dirs(data, "d_det")]:
            if (folder / "meta.json").exists():
                meta = json.loads((folder / "meta.json").read_text())
                assert (meta["model_id"], meta["checkpoint_sha256"]) in scored, folder
    assert stops >= 2 and metrics["trainees"]["n"] == 3


def _spread(data, tmp_path) -> tuple[dict | None, str]:
    """D_det's spread in the report's summary, and the report's Markdown."""
    paths = build_report(R.results_root(data), data, tmp_path / "report", "tiny")
    return json.loads(paths["summary"].read_text())["table1"]["d_det"].get("trainees"), paths["markdown"].read_text()


def test_the_spread_counts_only_trainees_scored_as_the_first_is_shown(built, tmp_path):
    """A stronger attack on the first model alone (a reevaluate pass before trainees were added) is what the report
    shows for it; trainees without that score are left out, and said to be, until they have it."""
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    root = R.results_root(data)
    evals = results.load("evaluations", root)
    ids = [FIRST, f"{FIRST}/trainee-2", f"{FIRST}/trainee-3"]
    robust = evals[(evals["attack"] == "pgd_l2") & evals["model_id"].isin(ids)].drop_duplicates("model_id", keep="last")
    stronger = [{**row, "steps": 50, "accuracy": accuracy, "evaluated_at": results.now_utc()}
                for row, accuracy in zip(robust.to_dict("records"), (0.3, 0.1, 0.2), strict=True)]
    first, others = [r for r in stronger if r["model_id"] == FIRST], [r for r in stronger if r["model_id"] != FIRST]
    results.append("evaluations", first, root)
    spread, md = _spread(data, tmp_path / "a")
    assert (spread["n"], spread["left_out"], spread["robust_sd"]) == (1, 2, None)
    assert "| D_det | 1 (2 more not scored with the first's attack settings" in md
    results.append("evaluations", others, root)
    spread, _ = _spread(data, tmp_path / "b")
    assert (spread["n"], spread["left_out"]) == (3, 0)
    assert spread["robust_mean"] == pytest.approx(100 * np.mean([r["accuracy"] for r in stronger]), abs=0.01)
    # the first re-scored with another step size, then with the other iterate rule: the trainees' scores are not
    # of its setting
    for change in ({"step_size": 2 * first[0]["step_size"]}, {"use_best": not first[0]["use_best"]}):
        results.append("evaluations", [{**first[0], **change, "evaluated_at": results.now_utc()}], root)
        spread, _ = _spread(data, tmp_path / f"c-{sorted(change)[0]}")
        assert (spread["n"], spread["left_out"]) == (1, 2)


def test_the_spread_leaves_out_a_trainee_of_another_recipe(built, tmp_path):
    """A trainee whose latest row holds another recipe (a rerun with a new recipe stopped before reaching it) is
    not one of the first's trainees."""
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=3), "d_det", data, "cpu")
    root = R.results_root(data)
    models = results.load("models", root)
    row = models[models["model_id"] == f"{FIRST}/trainee-3"].iloc[-1].to_dict()
    recipe = json.loads(row["recipe"])
    recipe["train"]["epochs"] += 1
    results.append("models", [{**row, "recipe": json.dumps(recipe), "created_at": results.now_utc()}], root)
    spread, _ = _spread(data, tmp_path)
    assert (spread["n"], spread["left_out"]) == (2, 0)


def test_no_spread_without_a_score_of_the_first(built, tmp_path):
    params, data = _copy(built, tmp_path)
    S.stage_train(_with(params, trainees=2), "d_det", data, "cpu")
    root = R.results_root(data)
    models = results.load("models", root)
    evals = results.load("evaluations", root)
    first = models[models["model_id"] == FIRST].iloc[-1]
    assert trainee_spread(first, models, evals).n == 2
    assert trainee_spread(first, models, evals[evals["model_id"] != FIRST]) is None


def _claims(d_det_spread):
    """The report's claims where only D_det's model is scored: 21.5% over 1,000 test images, with `d_det_spread`."""
    rows = {ref.key: Measured(ref, None, None, None, None) for ref in FIGURE2 + TABLE1}
    det = rows["d_det"].ref
    rows["d_det"] = Measured(det, FIRST, 21.5, 0.0, 10, 1000, 1000, spread=d_det_spread)
    evals = pd.DataFrame(columns=["model_id", "attack", "eps", "steps", "restarts", "accuracy", "n"])
    tab1 = [rows[ref.key] for ref in TABLE1]
    return {c.key: c for c in judge_claims([rows[ref.key] for ref in FIGURE2], tab1, [], None, evals)}


def test_above_chance_over_trainees_also_needs_their_mean_clear_of_chance_by_its_spread():
    assert _claims(None)["d_det"].holds  # 21.5 is 11.5 points, 12 test-set standard errors, above chance
    tight = _claims(Spread(3, 19.4, 2.95, 0.0, 0.0))["d_det"]  # the cpu profile's three D_det models
    assert tight.holds and "over its 3 trainees 19.4 ± 3.0, one-sided 95% lower bound 14.4" in tight.detail
    loose = _claims(Spread(3, 14.0, 4.0, 0.0, 0.0))["d_det"]  # the first's 21.5 alone would pass; the seeds do not
    assert loose.holds is False and "lower bound 7.3" in loose.detail
    assert seeds_lower_bound(Spread(1, 21.5, None, 0.0, None, left_out=2)) is None
    many = seeds_lower_bound(Spread(30, 20.0, 3.0, 0.0, 0.0))  # beyond 10 degrees of freedom: t for 10, 1.812
    assert many == pytest.approx(20.0 - 1.812 * 3.0 / 30 ** 0.5)


def test_trainee_names_are_spelled_in_one_place():
    """A set's trainee k > 1 is <first>/trainee-<k>, as a folder and as a model id; other names are no trainee's."""
    assert sets.trainee_path("d_rand", 3) == "d_rand/trainee-3"
    model_id = sets.trainee_path("cpu/standard-d_rand-resnet9", 12)
    assert sets.trainee_number(model_id) == 12 and sets.first_of(model_id) == "cpu/standard-d_rand-resnet9"
    for other in ("d_rand", "cpu/standard-d_rand-resnet9", "d_rand/trainee-x", "d_rand/my_trainee-2", "trainee-",
                  "d_rand/trainee-²"):
        assert sets.trainee_number(other) is None and sets.first_of(other) == other, other
