"""Construction at the unit level: what the four sets are made of, checked without trusting the numbers the
construction code reports about itself (tiny models, a few images, no stage)."""

import numpy as np
import pytest
import torch

from notbugs import attacks
from notbugs import construct as C
from notbugs.models import make_model
from tests.conftest import Recorder
from tests.test_attacks import synthetic_batch

CPU = torch.device("cpu")


def _random_resnet9():
    """An untrained ResNet-9: representation matching works on it (its representation is not constant)."""
    torch.manual_seed(0)
    return make_model("resnet9", width=0.125).eval()


def _recipe(**sections) -> dict:
    return {"precision": "fp32", "batch_size": 8, **sections}


def _shard(out_dir, k=0) -> dict:
    with np.load(out_dir / f"shard-{k:05d}.npz") as z:
        return {key: z[key] for key in z.files}


def test_d_rand_targets_are_uniform_and_independent_of_the_labels():
    """D_rand relabels each image with a target drawn uniformly at random, whatever its label; D_det with
    y + 1. Drawn from the seed alone: the same seed gives the same targets for any labels, so the
    targets cannot depend on them (the paper's D_rand has no correlation between target and label)."""
    n = 20_000
    y = np.arange(n) % 10
    targets = C.assignments("d_rand", y, seed=0)["target"]
    assert np.array_equal(targets, C.assignments("d_rand", np.zeros(n, np.int64), seed=0)["target"])
    assert np.array_equal(targets, C.assignments("d_rand", y[::-1].copy(), seed=0)["target"])
    assert not np.array_equal(targets, C.assignments("d_rand", y, seed=1)["target"])  # the seed does matter
    # every (label, target) pair about equally often: expected n / 100 = 200 (std 14) per cell; 5 std either way
    table = np.zeros((10, 10), np.int64)
    np.add.at(table, (y, targets), 1)
    assert table.min() > 200 - 70 and table.max() < 200 + 70, table
    # a chi-square on the 100 cells (99 degrees of freedom, 99 on average; 150 is far out in the tail)
    chi2 = ((table - n / 100) ** 2 / (n / 100)).sum()
    assert chi2 < 150, chi2
    # more than one draw: the target is not the label's deterministic successor
    for seed in range(5):
        t = C.assignments("d_rand", y, seed)["target"]
        assert 0.85 < (t != (y + 1) % 10).mean() < 0.95  # 0.9 for a uniform target
        assert t.min() == 0 and t.max() == 9
    assert np.array_equal(C.assignments("d_det", y, seed=3)["target"], (y + 1) % 10)


def test_matching_starts_are_other_images_drawn_uniformly():
    """D_R / D_NR start each image from another training image, drawn from the seed, uniform over the others."""
    n = 5_000
    y = np.arange(n) % 10
    starts = C.assignments("d_r", y, seed=0)["start"]
    assert (starts != np.arange(n)).all() and starts.min() >= 0 and starts.max() < n
    assert np.array_equal(starts, C.assignments("d_r", np.zeros(n, np.int64), seed=0)["start"])
    assert not np.array_equal(starts, C.assignments("d_nr", y, seed=0)["start"])  # each set its own draw
    # the start's label is as often the image's own as any other (1/10 of the time, not never or always)
    same = (y[starts] == y).mean()
    assert 0.08 < same < 0.12, same


def test_matched_images_take_the_source_image_s_representation_starting_from_another_image(tmp_path):
    """A D_R / D_NR image starts at another image x' and is moved until the model's representation of it is
    that of its source image x: measured here, independently of the statistics the construction reports,
    its representation ends nearer g(x) than g(x'), and the image stays near x' in pixel space (it keeps
    x's label, so it looks like x' and is labelled y)."""
    model = _random_resnet9()
    x, y = synthetic_batch(2)  # 20 images, 2 of each class
    n = len(y)
    labels = y.numpy()
    source_index = np.arange(n) * 7 + 3  # canonical indices, not positions, as in a subset
    assign = C.assignments("d_r", labels, seed=0)
    match = {"steps": 30, "step_size": 0.5, "final_step_size": 0.1, "use_best": True, "fake_relu": True}
    C.build_shard("d_r", model, x, labels, source_index, assign, 0, 0, n, _recipe(match=match, batch_size=n), "h",
                  tmp_path, CPU)
    shard = _shard(tmp_path)
    assert np.array_equal(shard["labels"], labels) and np.array_equal(shard["source_index"], source_index)
    assert np.array_equal(shard["start_index"], source_index[assign["start"]])
    position = {int(i): p for p, i in enumerate(source_index)}
    source = x[[position[int(i)] for i in shard["source_index"]]]
    start = x[[position[int(i)] for i in shard["start_index"]]]
    assert not torch.equal(source, start)
    built = torch.from_numpy(shard["images"].astype(np.float32))

    def rep(z):
        with torch.no_grad():
            return model.features(z).flatten(1)

    to_source = (rep(built) - rep(source)).norm(dim=1)
    to_start = (rep(built) - rep(start)).norm(dim=1)
    apart = (rep(start) - rep(source)).norm(dim=1)
    pixels_to_start = (built - start).flatten(1).norm(dim=1)
    pixels_to_source = (built - source).flatten(1).norm(dim=1)
    # measured: to_source / to_start at most 0.60, to_source / apart at most 0.39 (20 images)
    assert (to_source < 0.8 * to_start).all(), (to_source / to_start).max()
    assert (to_source < 0.7 * apart).all(), (to_source / apart).max()
    assert (pixels_to_start < pixels_to_source).all()


@pytest.mark.parametrize("use_best", [True, False])
def test_targeted_sets_attack_with_the_recipe_s_pgd_settings(tmp_path, monkeypatch, use_best):
    """D_rand / D_det: targeted PGD towards each image's target, with the recipe's eps, steps, step size and
    iterate rule (the reference's `use_best` keeps the lowest target-loss iterate: a weaker attack otherwise)."""
    attack = Recorder(attacks.pgd_l2, lambda a: a["x"].clone())
    monkeypatch.setattr(C, "pgd_l2", attack)
    model = _random_resnet9()
    x, y = synthetic_batch(1)
    labels = y.numpy()
    assign = C.assignments("d_rand", labels, seed=0)
    pgd = {"eps": 0.4, "steps": 7, "step_size": 0.09, "use_best": use_best}
    C.build_shard("d_rand", model, x, labels, np.arange(10), assign, 0, 0, 10, _recipe(pgd=pgd, batch_size=5), "h",
                  tmp_path, CPU)
    assert len(attack.calls) == 2  # two batches of 5
    for i, call in enumerate(attack.calls):
        assert (call["eps"], call["steps"], call["step_size"]) == (0.4, 7, 0.09)
        assert call["targeted"] is True and call["use_best"] is use_best and call["random_start"] is False
        assert torch.equal(call["x"], x[5 * i:5 * i + 5])
        assert torch.equal(call["y"], torch.from_numpy(assign["target"][5 * i:5 * i + 5]))


@pytest.mark.parametrize("use_best,fake_relu", [(True, True), (False, False)])
def test_matched_sets_match_with_the_recipe_s_settings(tmp_path, monkeypatch, use_best, fake_relu):
    """D_R / D_NR: matching starts at the assigned other image and targets the source image's representation,
    with the recipe's steps, step schedule, iterate rule and fake ReLU (a ResNet-9's fake ReLU changes no
    gradient, so only the arguments can show whether the recipe's choice reaches the matching)."""
    stats = {"start_distance": 1.0, "final_distance": 0.5, "start_relative": 0.2, "final_relative": 0.1}
    attack = Recorder(attacks.match_representation, lambda a: (a["start"].clone(), stats))
    monkeypatch.setattr(C, "match_representation", attack)
    model = _random_resnet9()
    x, y = synthetic_batch(1)
    labels = y.numpy()
    assign = C.assignments("d_nr", labels, seed=0)
    match = {"steps": 9, "step_size": 0.3, "final_step_size": 0.02, "use_best": use_best, "fake_relu": fake_relu}
    C.build_shard("d_nr", model, x, labels, np.arange(10), assign, 0, 0, 10, _recipe(match=match, batch_size=5), "h",
                  tmp_path, CPU)
    assert len(attack.calls) == 2
    for i, call in enumerate(attack.calls):
        batch = slice(5 * i, 5 * i + 5)
        assert torch.equal(call["target_images"], x[batch])  # towards the source image's representation
        assert torch.equal(call["start"], x[torch.from_numpy(assign["start"][batch])])  # from the other image
        assert (call["steps"], call["step_size"], call["final_step_size"]) == (9, 0.3, 0.02)
        assert call["use_best"] is use_best and call["fake_relu"] is fake_relu
        assert call["momentum"] == 0.0  # the paper's plain normalised steps
