"""The table of constructed sets (notbugs/sets.py): what reads it, what an unknown or a duplicate entry gives, and
that a new entry leaves the other sets' recipes and steps alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from notbugs import construct as C
from notbugs import results, sets, steps
from notbugs.config import DATASETS, ConfigError, load_params
from notbugs.sets import SETS, SetSpec
from notbugs.storage import sha256_bytes

ROOT = Path(__file__).resolve().parents[1]
# a set that no entry builds alike: PGD on the robust model towards random targets
NEW = SetSpec(kind="pgd", source="robust", targets="random", stream=4, label="D_rand_R")


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
    assert tuple(SETS) == DATASETS == ("d_r", "d_nr", "d_rand", "d_det")
    assert [s.label for s in SETS.values()] == ["D_R", "D_NR", "D_rand", "D_det"]


def test_an_unknown_set_names_the_table():
    from notbugs.stages import construct_source

    for lookup in (sets.set_spec, construct_source, lambda n: C.assignments(n, np.zeros(4, np.int64), 0),
                   lambda n: steps.step_params(f"construct@{n}"), lambda n: steps.upstream_steps(f"construct@{n}")):
        with pytest.raises(ValueError, match="notbugs/sets.py") as e:
            lookup("d_robust")
        assert all(name in str(e.value) for name in SETS)


def test_config_refuses_two_sets_built_alike(monkeypatch):
    """"D_det at eps 1.0" as one more entry would be built at the profile's construct.pgd eps, as D_det."""
    monkeypatch.setitem(SETS, "d_det_eps1", SetSpec("pgd", "standard", "next", 4, "D_det (eps 1.0)"))
    with pytest.raises(ConfigError, match="per kind") as e:
        load_params(ROOT / "params.yaml", profile="cpu")
    assert "'d_det'" in str(e.value) and "'d_det_eps1'" in str(e.value) and "not supported yet" in str(e.value)


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
    from notbugs.stages import construct_recipe

    meta = {"model_id": "cpu/standard-d-resnet9", "checkpoint_sha256": "0" * 64, "arch": params.profile.arch}
    out = {}
    for name in DATASETS:
        recipe = construct_recipe(params, name, meta, bf16=False)
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
    assert steps.step_params("construct@d_new")[-1] == "construct.pgd"


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
