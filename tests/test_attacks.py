"""l2 PGD and representation matching: they do what they claim, inside their constraints."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from notbugs.attacks import NonFiniteError, frozen, match_representation, pgd_l2, project_l2, random_in_ball
from notbugs.augment import augment
from notbugs.config import AugmentConfig, TrainConfig
from notbugs.models import make_model
from notbugs.train import train
from tests.conftest import synthetic_image

CPU = torch.device("cpu")


def synthetic_batch(n_per_class: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = np.stack([synthetic_image(int(c), rng) for c in labels])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(labels)


RECIPE = TrainConfig(epochs=6, batch_size=32, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                     schedule="onecycle", milestones=(), gamma=0.1, warmup=0.2, label_smoothing=0.0,
                     augment=AugmentConfig(crop_pad=0, flip=False, jitter=0.0, rotate=0.0))


@pytest.fixture(scope="module")
def trained():
    """A small net trained to high accuracy on the synthetic classes."""
    torch.manual_seed(0)
    model = make_model("resnet9", width=0.25)
    x, y = synthetic_batch(32)
    train(model, x, y, RECIPE, seed=0, device=CPU)
    model.eval()
    xt, yt = synthetic_batch(10, seed=1)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"the test model did not learn the synthetic task ({acc:.2f})"
    return model, xt, yt


def test_untargeted_pgd_raises_the_loss_and_stays_in_the_ball(trained):
    model, x, y = trained
    eps = 4.0  # the synthetic classes are very separable: a larger ball is needed to hurt
    with frozen(model):
        adv = pgd_l2(model, x, y, eps=eps, steps=20, step_size=0.5)
        before = F.cross_entropy(model(x), y).item()
        after = F.cross_entropy(model(adv), y).item()
    assert after > before + 0.5, (before, after)
    assert (adv - x).flatten(1).norm(dim=1).max().item() <= eps + 1e-5
    assert adv.min().item() >= 0 and adv.max().item() <= 1


def test_targeted_pgd_reaches_its_target(trained):
    model, x, y = trained
    target = (y + 1) % 10
    with frozen(model):
        # steps of 0.8: with 0.4, 89-96% of the images reached their targets in 40 steps, depending on the
        # rounding of the model's training (one thread or two); with 0.8, 98% either way
        adv = pgd_l2(model, x, target, eps=8.0, steps=40, step_size=0.8, targeted=True)
        hit = (model(adv).argmax(1) == target).float().mean().item()
    assert hit > 0.9
    assert (adv - x).flatten(1).norm(dim=1).max().item() <= 8.0 + 1e-5


class RecordsBatches(torch.nn.Module):
    """The model, recording every image batch it is called on: the iterates an attack visits."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, z):
        self.inputs.append(z.detach().clone())
        return self.model(z)


def test_pgd_at_the_evaluation_settings_takes_steps_of_its_size_and_projects_onto_the_ball(trained):
    """The robust evaluation's attack (eps 0.25, 20 steps of 2.5 * eps / 20): each step moves an image by
    exactly the step size until the ball stops it, never further, and the perturbations end on the sphere
    of radius eps. The images are squeezed into [0.25, 0.75], so that clipping to [0, 1] never shortens a step."""
    model, x, y = trained
    x = 0.25 + 0.5 * x
    eps, steps = 0.25, 20
    step = 2.5 * eps / steps
    recorder = RecordsBatches(model)
    with frozen(model):
        adv = pgd_l2(recorder, x, y, eps=eps, steps=steps, step_size=step)
        before = F.cross_entropy(model(x), y).item()
        after = F.cross_entropy(model(adv), y).item()
    iterates = [*recorder.inputs, adv]
    assert len(iterates) == steps + 1 and torch.equal(iterates[0], x)
    norms = torch.stack([(z - x).flatten(1).norm(dim=1) for z in iterates])  # (steps + 1, images)
    lengths = torch.stack([(b - a).flatten(1).norm(dim=1) for a, b in zip(iterates, iterates[1:])])
    assert (lengths <= step * (1 + 1e-4)).all()
    inside = norms[1:] < eps * (1 - 1e-4)  # steps the projection did not touch
    assert inside[0].all() and torch.allclose(lengths[inside], torch.full_like(lengths[inside], step), rtol=1e-4)
    assert (norms <= eps * (1 + 1e-5)).all()
    assert torch.allclose(norms[-1], torch.full_like(norms[-1], eps), rtol=1e-4), norms[-1]
    assert after > before


def test_random_start_stays_in_the_ball_and_is_reproducible(trained):
    model, x, y = trained
    with frozen(model):
        a = pgd_l2(model, x, y, 0.25, 2, 0.1, random_start=True, g=torch.Generator().manual_seed(1))
        b = pgd_l2(model, x, y, 0.25, 2, 0.1, random_start=True, g=torch.Generator().manual_seed(1))
        other_seed = pgd_l2(model, x, y, 0.25, 2, 0.1, random_start=True, g=torch.Generator().manual_seed(2))
        from_the_image = pgd_l2(model, x, y, 0.25, 2, 0.1, random_start=False)
    assert torch.equal(a, b)
    assert (a - x).flatten(1).norm(dim=1).max().item() <= 0.25 + 1e-5
    # the start is random indeed: another seed, or no random start, ends elsewhere
    assert not torch.allclose(a, other_seed) and not torch.allclose(a, from_the_image)


def test_random_start_is_the_references_uniform_noise_scaled_to_the_sphere():
    g = torch.Generator().manual_seed(0)
    on_sphere = random_in_ball((8, 3, 32, 32), 0.5, g, CPU)
    assert torch.allclose(on_sphere.flatten(1).norm(dim=1), torch.full((8,), 0.5))
    unscaled = random_in_ball((8, 3, 32, 32), 100.0, g, CPU)  # longer than the noise: kept as drawn
    assert unscaled.abs().max().item() <= 0.5 and unscaled.flatten(1).norm(dim=1).max().item() < 20


def test_frozen_restores_training_mode_and_grad_flags(trained):
    model, _, _ = trained
    model.train()
    with frozen(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()


def test_projection():
    d = torch.randn(4, 3, 32, 32)
    p = project_l2(d, 0.5)
    assert torch.allclose(p.flatten(1).norm(dim=1), torch.full((4,), 0.5), atol=1e-5)
    small = d / d.flatten(1).norm(dim=1)[:, None, None, None] * 0.1
    assert torch.allclose(project_l2(small, 0.5), small)


def test_representation_matching_lowers_the_distance(trained):
    model, x, y = trained
    start = x.roll(1, 0)  # start from other images, as in D_R / D_NR
    with frozen(model):
        z, stats = match_representation(model, start, x, steps=40, step_size=0.3)
    assert stats["final_distance"] < 0.5 * stats["start_distance"]
    assert stats["final_relative"] < stats["start_relative"]
    assert z.min().item() >= 0 and z.max().item() <= 1


def test_matching_with_a_decaying_step_is_deterministic(trained):
    model, x, _ = trained
    with frozen(model):
        a, _ = match_representation(model, x.roll(1, 0), x, steps=5, step_size=0.3, final_step_size=0.02)
        b, _ = match_representation(model, x.roll(1, 0), x, steps=5, step_size=0.3, final_step_size=0.02)
    assert torch.equal(a, b)


class RecordsInputs(torch.nn.Module):
    """The model, recording every image batch its representation is computed for: the iterates an attack visits."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def features(self, z, fake_relu=False):
        self.inputs.append(z.detach().clone())
        return self.model.features(z, fake_relu=fake_relu)


def test_matching_steps_follow_the_linear_decay_from_step_size_to_final_step_size(trained):
    """Step k of n moves each image by step_size + (final_step_size - step_size) * k / (n - 1), the rule of the
    `cpu` and `fast` profiles (0.3 -> 0.02): the iterates the matching visits, recorded, are that far apart.
    The images are squeezed into [0.25, 0.75], so that clipping to [0, 1] never shortens a step."""
    model, x, _ = trained
    x = 0.25 + 0.5 * x
    recorder = RecordsInputs(model)
    steps, first, last = 5, 0.3, 0.02
    with frozen(model):
        z, _ = match_representation(recorder, x.roll(1, 0), x, steps=steps, step_size=first, final_step_size=last)
    iterates = [recorder.inputs[1]]  # the first input is the target images, then the start (maybe more than once)
    for seen in recorder.inputs[2:]:
        if not torch.equal(seen, iterates[-1]):
            iterates.append(seen)
    assert torch.equal(iterates[0], x.roll(1, 0)) and torch.equal(iterates[-1], z) and len(iterates) == steps + 1
    lengths = torch.stack([(b - a).flatten(1).norm(dim=1) for a, b in zip(iterates, iterates[1:])])
    expected = torch.tensor([first + (last - first) * k / (steps - 1) for k in range(steps)])  # 0.3, 0.23, ... 0.02
    assert torch.allclose(lengths, expected[:, None].expand_as(lengths), rtol=1e-3), lengths


def test_matching_with_momentum_takes_steps_of_the_same_length_and_lowers_the_distance(trained):
    """Momentum changes each step's direction, not its length: one step equals the plain rule's (the
    velocity starts at zero), later ones differ but each moves an image by at most the step size."""
    model, x, _ = trained
    start = x.roll(1, 0)
    with frozen(model):
        plain, _ = match_representation(model, start, x, steps=1, step_size=0.3)
        first, _ = match_representation(model, start, x, steps=1, step_size=0.3, momentum=0.9)
        z, stats = match_representation(model, start, x, steps=20, step_size=0.3, momentum=0.9)
        no_momentum, _ = match_representation(model, start, x, steps=20, step_size=0.3)
        before, _ = match_representation(model, start, x, steps=19, step_size=0.3, momentum=0.9)
        last, _ = match_representation(model, start, x, steps=20, step_size=0.3, momentum=0.9)
    assert torch.allclose(plain, first, atol=1e-6)
    assert stats["final_distance"] < 0.7 * stats["start_distance"]  # 0.62 measured; 0.44 after 40 steps
    assert not torch.equal(z, no_momentum) and torch.equal(z, last)
    assert (z - before).flatten(1).norm(dim=1).max().item() <= 0.3 + 1e-5  # clipping only shortens a step
    assert z.min().item() >= 0 and z.max().item() <= 1


def test_matching_through_the_fake_relu_lowers_the_distance_it_reports():
    """The reference's loss (a fake ReLU on the representation, `models.FakeReLU`) on a ResNet-18,
    whose representation has a last ReLU: other steps than the true gradient's, the same distance
    measure, lowered."""
    torch.manual_seed(0)
    model = make_model("resnet18", width=0.125)
    x, _ = synthetic_batch(2)
    with frozen(model):
        z, stats = match_representation(model, x.roll(1, 0), x, steps=20, step_size=0.3, fake_relu=True)
        z_true, _ = match_representation(model, x.roll(1, 0), x, steps=20, step_size=0.3)
        reached = (model.features(z) - model.features(x)).flatten(1).norm(dim=1).mean().item()
    assert stats["final_distance"] < 0.7 * stats["start_distance"]
    assert abs(reached - stats["final_distance"]) < 1e-4 * stats["start_distance"]
    assert not torch.allclose(z, z_true, atol=1e-4)
    assert z.min().item() >= 0 and z.max().item() <= 1


def test_best_pgd_returns_the_worst_case_iterate(trained):
    """`use_best` (the reference's) returns, per image, the iterate of highest loss (targeted:
    lowest) among the start and every step; a k-step attack from the same start is the k-th iterate.
    Steps of 4 on a ball of 4 make the iterates jump about, so the last is often not the worst."""
    model, x, y = trained
    target = (y + 1) % 10

    def loss(z, labels):
        with torch.no_grad():
            return F.cross_entropy(model(z), labels, reduction="none")

    with frozen(model):
        for labels, targeted, pick in ((y, False, torch.max), (target, True, torch.min)):
            iterates = [pgd_l2(model, x, labels, 4.0, k, 4.0, targeted=targeted) for k in range(7)]
            losses = torch.stack([loss(z, labels) for z in iterates])
            best = pgd_l2(model, x, labels, 4.0, 6, 4.0, targeted=targeted, use_best=True)
            assert torch.allclose(loss(best, labels), pick(losses, 0).values, atol=1e-5)
            assert (pick(losses, 0).indices != 6).any(), "the test needs an image whose last iterate is not its worst"
            assert (best - x).flatten(1).norm(dim=1).max().item() <= 4.0 + 1e-5
            assert best.min().item() >= 0 and best.max().item() <= 1


def test_best_matching_returns_the_nearest_iterate(trained):
    """With a constant step a k-step match is the k-th iterate of a longer one: `use_best` returns, per
    image, the one nearest the target representation, and reports its distance."""
    model, x, _ = trained
    start = x.roll(1, 0)

    def distance(z):
        with torch.no_grad():
            return (model.features(z) - model.features(x)).flatten(1).norm(dim=1)

    with frozen(model):
        iterates = [match_representation(model, start, x, steps=k, step_size=2.0)[0] for k in range(9)]
        dists = torch.stack([distance(z) for z in iterates])
        z, stats = match_representation(model, start, x, steps=8, step_size=2.0, use_best=True)
    nearest = dists.min(0)
    assert (nearest.indices != 8).any(), "the test needs an image whose last iterate is not its nearest"
    assert torch.allclose(distance(z), nearest.values, atol=1e-4)
    assert stats["final_distance"] == pytest.approx(nearest.values.mean().item(), abs=1e-4)


class SqrtNet(torch.nn.Module):
    """Finite outputs, but an infinite gradient at a black pixel (d sqrt(x) / dx at 0): what a
    diverging model does to an attack somewhere in a batch."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3 * 32 * 32, 10)

    def features(self, x, fake_relu=False):
        return x.flatten(1).sqrt()

    def forward(self, x):
        return self.head(self.features(x))


def test_a_non_finite_gradient_anywhere_in_the_batch_stops_the_attacks():
    """The check runs once on the result, not per step: the NaN an infinite gradient makes must
    survive the normalisation, the projection and the clipping to [0, 1] of every later step."""
    torch.manual_seed(0)
    model = SqrtNet()
    x = torch.rand(4, 3, 32, 32) * 0.5 + 0.25
    x[2, 1, 5, 7] = 0.0  # one pixel of one image
    y = torch.arange(4)
    with frozen(model):
        for targeted, best in ((False, False), (True, False), (False, True)):  # use_best must not pass over it
            with pytest.raises(NonFiniteError, match="PGD result"):
                pgd_l2(model, x, y, eps=0.5, steps=3, step_size=0.1, targeted=targeted, use_best=best)
        for best in (False, True):
            with pytest.raises(NonFiniteError, match="representation-matched images"):
                match_representation(model, x, torch.rand(4, 3, 32, 32), steps=3, step_size=0.1, use_best=best)
        with pytest.raises(NonFiniteError, match="representation-matched images"):
            match_representation(model, x, torch.rand(4, 3, 32, 32), steps=3, step_size=0.1, momentum=0.9)
        x[2, 1, 5, 7] = 0.5  # the same batch without the black pixel is attacked
        assert torch.isfinite(pgd_l2(model, x, y, eps=0.5, steps=3, step_size=0.1)).all()


def test_augment_is_reproducible_and_keeps_shapes_and_range():
    x, _ = synthetic_batch(2)
    cfg = AugmentConfig(crop_pad=4, flip=True, jitter=0.25, rotate=2.0)
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_crop_is_a_shifted_window():
    """Each output is a 32x32 window of the zero-padded image (torchvision's RandomCrop(32, padding=4)),
    the windows are drawn independently per image, and not all of them are the centred one."""
    x = torch.arange(16 * 3 * 32 * 32, dtype=torch.float32).reshape(16, 3, 32, 32) + 1  # no zeros in the image
    out = augment(x, AugmentConfig(crop_pad=4, flip=False, jitter=0.0, rotate=0.0), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(9) for dx in range(9)  # every window of the image padded by 4
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(found) == 1, i
        offsets.append(found[0])
    assert len(set(offsets)) > 4 and any(o != (4, 4) for o in offsets)


def test_flip_mirrors_about_half_of_the_images():
    x = torch.rand(64, 3, 32, 32)
    out = augment(x, AugmentConfig(crop_pad=0, flip=True, jitter=0.0, rotate=0.0), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]  # per image (C, H, W): mirror W
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is either mirrored or unchanged
    assert 16 < sum(flipped) < 48  # both happen, about half each (p = 0.5; 64 draws)


def test_no_augmentation_is_identity():
    x, _ = synthetic_batch(1)
    none = dataclasses.replace(RECIPE.augment)
    assert torch.equal(augment(x, none, torch.Generator()), x)


def test_attacks_in_bf16_do_what_they_claim(trained):
    """bf16 autocast (the GPU's precision, and the CPU's where it is native): PGD still raises the
    loss inside its ball, and matching still lowers the representation distance."""
    model, x, y = trained
    with frozen(model):
        adv = pgd_l2(model, x, y, eps=4.0, steps=20, step_size=0.5, bf16=True)
        before = F.cross_entropy(model(x), y).item()
        after = F.cross_entropy(model(adv), y).item()
        z, stats = match_representation(model, x.roll(1, 0), x, steps=40, step_size=0.3, bf16=True)
        fp32, _ = match_representation(model, x.roll(1, 0), x, steps=40, step_size=0.3, bf16=False)
    assert after > before + 0.5, (before, after)
    assert (adv - x).flatten(1).norm(dim=1).max().item() <= 4.0 + 1e-5
    assert stats["final_distance"] < 0.5 * stats["start_distance"]
    assert z.min().item() >= 0 and z.max().item() <= 1
    assert not torch.equal(z, fp32)  # it did run in another precision


def test_precision_resolution(monkeypatch):
    from notbugs import attacks

    assert attacks.use_bf16("fp32", CPU) is False and attacks.use_bf16("bf16", CPU) is True
    monkeypatch.setattr(attacks, "native_bf16", lambda device: True)
    assert attacks.use_bf16("auto", CPU) is True
    monkeypatch.setattr(attacks, "native_bf16", lambda device: False)
    assert attacks.use_bf16("auto", CPU) is False
    with pytest.raises(ValueError, match="precision must be one of"):
        attacks.use_bf16("fp16", CPU)
    assert attacks.autocast(CPU, None).__class__.__name__ == "nullcontext"  # the old CPU default: fp32
