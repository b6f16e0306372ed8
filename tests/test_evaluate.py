"""Evaluation on models whose outputs are known in advance."""

import pytest
import torch
from torch import nn

from notbugs.evaluate import evaluate, make_transfer_examples, transfer_success

CPU = torch.device("cpu")


class ReadsLabelFromPixel(nn.Module):
    """Predicts class round(9 * x[0, 0, 0]): its answers, and how fragile they are, are known."""

    def forward(self, x):
        level = x[:, 0, 0, 0] * 9
        centres = torch.arange(10, dtype=x.dtype)
        return -(level[:, None] - centres[None, :]) ** 2 * 10


class Constant(nn.Module):
    """Always says class 3, whatever the input: no attack can change its answer."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.bias.expand(len(x), 10) + torch.nn.functional.one_hot(torch.tensor(3), 10) * 5 + 0 * x.sum()


def _images(labels):
    x = torch.full((len(labels), 3, 32, 32), 0.5)
    x[:, 0, 0, 0] = (labels.float() + 0.2) / 9  # off-centre, so the loss has a slope to climb
    return x


def test_clean_accuracy_and_per_class_are_exact():
    labels = torch.arange(10).repeat(5)
    x = _images(labels)
    wrong = labels.clone()
    wrong[:5] = (wrong[:5] + 1) % 10  # the first five images (classes 0-4) are mislabelled
    rows = evaluate(ReadsLabelFromPixel(), "m", x, wrong, eps=(), steps=1, step_factor=2.5, restarts=1,
                    batch_size=7, device=CPU)
    assert len(rows) == 1 and rows[0]["attack"] == "none"
    assert rows[0]["correct"] == 45 and rows[0]["n"] == 50 and rows[0]["accuracy"] == 0.9
    # per class of the *given* label: labels 1-5 each hold one mislabelled image (label 5 six images)
    assert [round(p, 2) for p in rows[0]["per_class_accuracy"]] == [1.0, 0.8, 0.8, 0.8, 0.8, 0.83, 1.0, 1.0, 1.0, 1.0]


def test_pgd_breaks_a_fragile_model_but_not_a_constant_one():
    labels = torch.arange(10).repeat(3)
    x = _images(labels)
    fragile = evaluate(ReadsLabelFromPixel(), "f", x, labels, eps=(0.25,), steps=10, step_factor=2.5,
                       restarts=1, batch_size=16, device=CPU)
    assert fragile[0]["accuracy"] == 1.0 and fragile[1]["accuracy"] < 0.2  # one pixel moved by 0.25 flips it
    const = evaluate(Constant(), "c", x, labels, eps=(0.25, 1.0), steps=5, step_factor=2.5, restarts=2,
                     batch_size=16, device=CPU)
    assert [r["accuracy"] for r in const] == [0.1, 0.1, 0.1]  # 3 of 30 are class 3, attacks change nothing
    assert [r["eps"] for r in const] == [0.0, 0.25, 1.0] and const[2]["restarts"] == 2


def test_transfer_success_counts_hits_on_the_target_class():
    labels = torch.arange(10).repeat(2)
    x = _images(labels)
    adv, targets = make_transfer_examples(ReadsLabelFromPixel(), x, labels, eps=0.5, steps=20, step_size=0.02,
                                          batch_size=8, device=CPU)
    assert torch.equal(targets, (labels + 1) % 10)
    assert transfer_success(ReadsLabelFromPixel(), adv, targets, 8, CPU) > 0.8  # white-box: nearly all hit
    assert transfer_success(Constant(), adv, targets, 8, CPU) == 0.1  # only targets equal to 3 "hit"


def test_an_image_counts_as_robust_only_if_every_restart_fails(monkeypatch):
    """restarts=2: the first restart starts at the image, the second at a random point in the ball; an image
    broken by the first restart but not the second is not robust."""
    from notbugs import evaluate as E

    calls = []

    def first_restart_breaks(model, x, y, eps, steps, step_size, random_start=False, **kw):
        calls.append(random_start)
        if random_start:
            return x.clone()  # this restart found nothing
        broken = x.clone()
        broken[:, 0, 0, 0] = ((y + 1) % 10).float() / 9  # the pixel ReadsLabelFromPixel reads: another class
        return broken

    monkeypatch.setattr(E, "pgd_l2", first_restart_breaks)
    labels = torch.arange(10)
    x = torch.zeros(10, 3, 32, 32)
    x[:, 0, 0, 0] = labels.float() / 9  # read as the right class
    rows = evaluate(ReadsLabelFromPixel(), "m", x, labels, eps=(0.5,), steps=3, step_factor=2.5, restarts=2,
                    batch_size=5, device=CPU)
    assert rows[0]["accuracy"] == 1.0  # clean
    assert rows[1]["accuracy"] == 0.0 and rows[1]["restarts"] == 2
    assert calls == [False, True] * 2  # two batches of 5, each attacked from the image, then from a random start


def test_robust_accuracy_attacks_at_the_given_strength(monkeypatch):
    """Each robust accuracy comes from PGD with `steps` steps of step_factor * eps / steps (the paper's 2.5 * eps /
    steps, which lets an attack reach the ball's edge and move along it) and the given iterate rule (`use_best`:
    the highest-loss iterate). A weaker attack overstates robust accuracy without failing any accuracy check."""
    from notbugs import evaluate as E
    from notbugs.attacks import pgd_l2
    from tests.conftest import Recorder

    attack = Recorder(pgd_l2, lambda a: a["x"].clone())
    monkeypatch.setattr(E, "pgd_l2", attack)
    labels = torch.arange(10)
    for step_factor, use_best in ((2.5, True), (1.5, False)):
        attack.calls.clear()
        evaluate(ReadsLabelFromPixel(), "m", _images(labels), labels, eps=(0.25, 1.0), steps=4,
                 step_factor=step_factor, restarts=1, batch_size=10, device=CPU, use_best=use_best)
        assert [(c["eps"], c["steps"]) for c in attack.calls] == [(0.25, 4), (1.0, 4)]
        for call in attack.calls:
            assert call["step_size"] == pytest.approx(step_factor * call["eps"] / 4)
            assert call["use_best"] is use_best and call["targeted"] is False and call["random_start"] is False


def test_transfer_examples_are_targeted_pgd_at_the_given_settings(monkeypatch):
    """Figure 3's examples: targeted PGD towards y + 1 with the given eps, steps, step size and iterate rule."""
    from notbugs import evaluate as E
    from notbugs.attacks import pgd_l2
    from tests.conftest import Recorder

    attack = Recorder(pgd_l2, lambda a: a["x"].clone())
    monkeypatch.setattr(E, "pgd_l2", attack)
    labels = torch.arange(10)
    for use_best in (True, False):
        attack.calls.clear()
        make_transfer_examples(Constant(), _images(labels), labels, eps=0.5, steps=7, step_size=0.09, batch_size=10,
                               device=CPU, use_best=use_best)
        (call,) = attack.calls
        assert (call["eps"], call["steps"], call["step_size"]) == (0.5, 7, 0.09)
        assert call["targeted"] is True and call["use_best"] is use_best
        assert torch.equal(call["y"], (labels + 1) % 10)
