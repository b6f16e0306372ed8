"""The table of constructed sets (notbugs/sets.py): what reads it, what an unknown or a duplicate entry gives, and
that a new entry leaves the other sets' recipes and steps alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from notbugs import construct as C
from notbugs import config, results, sets, steps
from notbugs.config import DATASETS, ConfigError, load_params
from notbugs.sets import SETS, SetSpec
from notbugs.stages import construct_recipe
from notbugs.storage import sha256_bytes

ROOT = Path(__file__).resolve().parents[1]
# These tests hold with sets of your own in the table (README, "Extending"): the paper's four come first, and the
# sets the tests add take a stream no entry has and names of their own.
PAPER_SETS = ("d_r", "d_nr", "d_rand", "d_det")
FREE = 1 + max(s.stream for s in SETS.values())
# a set that no entry of the paper's builds alike: PGD on the robust model towards random targets
NEW = SetSpec(kind="pgd", source="robust", targets="random", stream=FREE, label="D_rand_R")
VARIANT = "d_test_variant"  # D_det at eps 0.875 (an eps your own variants are unlikely to take), as README's d_det_eps1
# the source model's meta.json, as far as a construction recipe reads it
STAND_IN = {"model_id": "cpu/standard-d-resnet9", "checkpoint_sha256": "0" * 64, "arch": "resnet9"}


def _assignments_before_sets_py(name: str, labels: np.ndarray, seed: int, num_classes: int = 10) -> dict:
    """construct.assignments as it was before sets.py (commit 2ff5820), verbatim: the sets' draws must not move."""
    rng = np.random.default_rng([seed, ("d_r", "d_nr", "d_rand", "d_det").index(name)])
    n = len(labels)
    if name in ("d_r", "d_nr"):
        return {"start": (np.arange(n) + rng.integers(1, n, size=n)) % n}
    if name == "d_rand":
        return {"target": rng.integers(0, num_classes, size=n)}
    return {"target": (labels + 1) % num_classes}


@pytest.mark.parametrize("name", ["d_r", "d_nr", "d_rand", "d_det"])
def test_every_set_draws_what_it_drew_before_the_table(name):
    for seed in (0, 1234):
        for n in (10, 5000):
            labels = np.random.default_rng([seed, n]).integers(0, 10, size=n)
            now, before = C.assignments(name, labels, seed), _assignments_before_sets_py(name, labels, seed)
            assert now.keys() == before.keys()
            for key in now:
                assert now[key].dtype == before[key].dtype and np.array_equal(now[key], before[key]), (name, seed, n)


def test_the_paper_sets_in_its_order():
    assert tuple(SETS) == DATASETS and DATASETS[:4] == PAPER_SETS  # then yours, if any
    assert [SETS[name].label for name in PAPER_SETS] == ["D_R", "D_NR", "D_rand", "D_det"]


def test_an_unknown_set_names_the_table():
    from notbugs.stages import construct_source

    for lookup in (sets.set_spec, construct_source, lambda n: C.assignments(n, np.zeros(4, np.int64), 0),
                   lambda n: steps.step_params(f"construct@{n}"), lambda n: steps.upstream_steps(f"construct@{n}")):
        with pytest.raises(ValueError, match="notbugs/sets.py") as e:
            lookup("d_robust")
        assert all(name in str(e.value) for name in SETS)


def test_config_refuses_two_sets_built_alike(monkeypatch):
    """"D_det at eps 0.875" as one more entry, without its own eps, would be built exactly as D_det."""
    monkeypatch.setitem(SETS, VARIANT, SetSpec("pgd", "standard", "next", FREE, "D_det (test variant)"))
    with pytest.raises(ConfigError, match="same parameters") as e:
        load_params(ROOT / "params.yaml", profile="cpu")
    assert "'d_det'" in str(e.value) and f"'{VARIANT}'" in str(e.value) and f"construct_on.{VARIANT}" in str(e.value)


@pytest.mark.parametrize("name", [n for n in PAPER_SETS if sets.draws(SETS[n])])
def test_a_replicate_of_a_set_that_draws_loads_and_draws_its_own(monkeypatch, name):
    """D_R, D_NR or D_rand once more, from a stream of its own and with no overrides: the same recipe on other
    start images or targets (the spread over construction draws), not the same images; D_det, which draws
    nothing, is refused as built alike (above)."""
    original = SETS[name]
    monkeypatch.setitem(SETS, "d_replicate", dataclasses.replace(original, stream=FREE, label="replicate"))
    params = load_params(ROOT / "params.yaml", profile="cpu")  # valid: no "built alike"
    assert config.construct_params(params.profile, "d_replicate") == config.construct_params(params.profile, name)
    labels = np.arange(1000) % 10
    mine, theirs = C.assignments("d_replicate", labels, 0), C.assignments(name, labels, 0)
    (key,) = theirs
    assert (mine[key] != theirs[key]).mean() > 0.5  # other draws, mostly
    assert {n for n, s in SETS.items() if not sets.draws(s)} >= {"d_det"}


def _edited(tmp_path, edit) -> Path:
    """A copy of the project's params.yaml (its data section and profile key as they are, unlike conftest's
    write_params: the step hashes compared here read them), changed by `edit(profiles)`."""
    import yaml

    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(doc["profiles"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _with_variant(monkeypatch, tmp_path, cpu_override: dict | None, paper_override: dict | None = None):
    """params.yaml with a variant of D_det (VARIANT) in the table and in the profiles' train_on and construct_on
    (its overrides: `cpu_override`, `paper_override`), as README's 'Extending' asks."""
    monkeypatch.setitem(SETS, VARIANT, SetSpec("pgd", "standard", "next", FREE, "D_det (test variant)"))
    monkeypatch.setattr("notbugs.config.DATASETS", (*DATASETS, VARIANT))

    def add(profiles):
        for name, override in (("cpu", cpu_override), ("paper", paper_override or cpu_override)):
            profiles[name]["train_on"][VARIANT] = {}
            profiles[name]["construct_on"][VARIANT] = override

    return _edited(tmp_path, add)


def test_a_variant_of_a_set_is_built_with_its_own_parameters(monkeypatch, tmp_path):
    """D_det at eps 0.875: its recipe holds its eps (the profile's other PGD settings kept), D_det's is as before,
    and only the variant's steps are new: the others' recipes and step hashes stay as they were."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    recipes, hashes = _recipe_hashes(params), _step_hashes(params)
    path = _with_variant(monkeypatch, tmp_path, {"eps": 0.875})
    variant = load_params(path, profile="cpu")
    assert _recipe_hashes(variant) == recipes and _step_hashes(variant) == hashes
    pgd = params.profile.construct.pgd
    recipe = construct_recipe(variant, VARIANT, STAND_IN, bf16=False)
    assert recipe["pgd"] == {**dataclasses.asdict(pgd), "eps": 0.875} and pgd.eps == 0.5
    assert steps.step_params(f"construct@{VARIANT}")[-1] == f"construct_on.{VARIANT}"
    assert steps.step_hash(variant, f"construct@{VARIANT}", "arrays") not in hashes.values()
    # the variant against the paper's build of it: no deviation beyond those the profile has anyway
    assert variant.deviations() == params.deviations()
    other = load_params(_with_variant(monkeypatch, tmp_path, {"eps": 0.875}, {"eps": 1.25}), profile="cpu")
    assert f"construct_on.{VARIANT}.eps: 0.875 (paper: 1.25)" in other.deviations()


def test_a_set_s_own_parameters_reach_its_steps_only(monkeypatch, tmp_path):
    """An override of a paper set (D_det at eps 0.625 in place of 0.5) is a deviation, changes D_det's recipe and the
    steps that read it (its construction, what trains on it, Figure 3's transfer, which attacks as D_det), and no
    other."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    recipes, hashes = _recipe_hashes(params), _step_hashes(params)
    path = _edited(tmp_path, lambda profiles: profiles["cpu"]["construct_on"].update(d_det={"eps": 0.625}))
    changed = load_params(path, profile="cpu")
    after_recipes, after = _recipe_hashes(changed), _step_hashes(changed)
    assert {n for n in recipes if after_recipes[n][1] != recipes[n][1]} == {"d_det"}
    assert after_recipes["d_det"][0]["pgd"]["eps"] == 0.625
    assert {s for s in hashes if after[s] != hashes[s]} == {"construct@d_det", "train@d_det", "transfer"}
    assert set(changed.deviations()) - set(params.deviations()) == {"construct_on.d_det.eps: 0.625 (paper: 0.5)"}


def test_a_section_value_no_set_is_built_with_is_no_deviation(tmp_path):
    """`cpu` builds with 15 PGD steps where the paper takes 100; with every PGD set at 100 steps of its own, no set
    is built with 15, and the deviations say nothing of PGD steps."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    assert "construct.pgd.steps: 15 (paper: 100)" in params.deviations()

    def hundred_steps(profiles):
        own = profiles["cpu"]["construct_on"]
        for name in (n for n, s in SETS.items() if s.kind == "pgd"):
            own[name] = {**(own[name] or {}), "steps": 100}

    own = load_params(_edited(tmp_path, hundred_steps), profile="cpu")
    assert set(params.deviations()) - set(own.deviations()) == {"construct.pgd.steps: 15 (paper: 100)"}
    assert set(own.deviations()) <= set(params.deviations())


def test_restating_a_value_of_the_kind_s_section_changes_no_hash(tmp_path):
    """`d_det: {eps: 0.5}` where construct.pgd's eps is 0.5 builds D_det as before: no step reruns, its recipe is
    the same; `d_det: null` (YAML's empty entry) is no override either."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    recipes, hashes = _recipe_hashes(params), _step_hashes(params)
    for override in ({"eps": 0.5, "use_best": True}, None):
        path = _edited(tmp_path, lambda profiles, o=override: profiles["cpu"]["construct_on"].update(d_det=o))
        same = load_params(path, profile="cpu")
        assert _recipe_hashes(same) == recipes and _step_hashes(same) == hashes, override


def test_empty_overrides_hash_as_before_construct_on():
    """Upgrading to per-set parameters leaves every finished step done: with every override empty, each step's
    hash is the one it had when its parameters did not list construct_on."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    now = _step_hashes(params)
    before = {stage: tuple(k for k in keys if not k.startswith("construct_on."))
              for stage, keys in steps.STEP_PARAMS.items()}
    assert before != steps.STEP_PARAMS
    # the steps of sets with overrides of your own excepted, and what follows them
    own = {n for n in SETS if config.construct_changes(params.profile, n)}
    empty = {s for s in now if s.partition("@")[2] not in own and not (s == "transfer" and "d_det" in own)}
    assert any(s.startswith("construct@") for s in empty)  # in this repository's params.yaml: every step
    with pytest.MonkeyPatch.context() as m:
        m.setattr(steps, "STEP_PARAMS", before)
        then = _step_hashes(params)
    assert {s: then[s] for s in empty} == {s: now[s] for s in empty}


@pytest.mark.parametrize("entry, message", [
    (SetSpec("pgd", "robust", "random", 2, "x"), "the stream of 'd_rand'"),  # it would share d_rand's draws
    (SetSpec("pgd", "robust", None, 4, "x"), "a PGD set random|next"),
    (SetSpec("match", "robust", "next", 4, "x"), "a matching set takes None"),
    (SetSpec("fgsm", "robust", None, 4, "x"), "accepted: match|pgd"),
    (SetSpec("pgd", "cheap", "random", 4, "x"), "accepted: standard|robust"),
    (SetSpec("pgd", "robust", "random", 4, "D_R"), "'d_r' and 'd_new' are both labelled 'D_R'"),
])
def test_config_refuses_a_set_it_cannot_build(monkeypatch, entry, message):
    monkeypatch.setitem(SETS, "d_new", entry)
    with pytest.raises(ConfigError, match="notbugs/sets.py") as e:
        load_params(ROOT / "params.yaml", profile="cpu")
    assert message in str(e.value)


def _recipe_hashes(params) -> dict:
    """Each set's construction recipe and its hash (as stages.prepare_construct makes them) for a stand-in
    source model."""
    out = {}
    for name in DATASETS:
        recipe = construct_recipe(params, name, STAND_IN, bf16=False)
        out[name] = (recipe, sha256_bytes(results.to_json(recipe).encode())[:16])
    return out


def _step_hashes(params) -> dict:
    return {s: steps.step_hash(params, s, "arrays") for s in steps.STEPS if s != "report"}


def test_a_new_set_leaves_the_others_recipes_and_steps_alone(monkeypatch):
    params = load_params(ROOT / "params.yaml", profile="cpu")
    recipes, hashes = _recipe_hashes(params), _step_hashes(params)
    assert recipes["d_r"][0]["set"] == {"kind": "match", "source": "robust", "targets": None, "stream": 0}
    monkeypatch.setitem(SETS, "d_new", NEW)
    load_params(ROOT / "params.yaml", profile="cpu")  # a valid table
    assert _recipe_hashes(params) == recipes and _step_hashes(params) == hashes
    assert steps.step_hash(params, "construct@d_new", "arrays") not in hashes.values()
    assert steps.upstream_steps("construct@d_new") == ("fetch", "source@robust")
    assert steps.step_params("construct@d_new")[-2:] == ("construct.pgd", "construct_on.d_new")


def test_editing_one_entry_reaches_that_set_only(monkeypatch):
    """A changed entry (here D_det's label, then its targets) changes that set's recipe and the steps that read
    it (its construction, what trains on it, Figure 3's transfer from D_det), no other; the label none."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    recipes, hashes = _recipe_hashes(params), _step_hashes(params)
    monkeypatch.setitem(SETS, "d_det", SetSpec("pgd", "standard", "next", 3, "D_next"))
    assert _recipe_hashes(params) == recipes and _step_hashes(params) == hashes
    monkeypatch.setitem(SETS, "d_det", SetSpec("pgd", "robust", "next", 3, "D_det"))
    after_recipes, after = _recipe_hashes(params), _step_hashes(params)
    assert {n for n in recipes if after_recipes[n][1] != recipes[n][1]} == {"d_det"}
    assert {s for s in hashes if after[s] != hashes[s]} == {"construct@d_det", "train@d_det", "transfer"}


def test_dvc_yaml_builds_every_set_from_its_source_with_its_kind():
    """dvc.yaml cannot read sets.py: its construct items repeat each entry's source and kind."""
    import yaml

    construct = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["construct"]
    assert construct["foreach"] == {n: {"source": s.source, "recipe": s.kind} for n, s in SETS.items()}
    assert "notbugs/sets.py" in construct["do"]["deps"]
