"""The batched augmentation computes, per image, what the reference's torchvision transforms do on PIL images."""

import itertools

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from notbugs.augment import apply_jitter, augment, jitter_params, rotate
from notbugs.config import AugmentConfig
from tests.conftest import synthetic_image

TORCHVISION = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}


def images_u8(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 32, 32) uint8: half structured synthetic images, half random pixels (the hardest case
    for interpolation and rounding)."""
    rng = np.random.default_rng(seed)
    half = np.stack([synthetic_image(i % 10, rng) for i in range(n // 2)])
    noise = rng.integers(0, 256, (n - n // 2, 32, 32, 3), dtype=np.uint8)
    return torch.from_numpy(np.concatenate([half, noise])).permute(0, 3, 1, 2).contiguous()


def test_rotation_is_torchvisions_nearest_rotation():
    u8 = images_u8(40)
    x = u8.float() / 255
    degrees = torch.linspace(-2, 2, len(x))
    ours = rotate(x, degrees)
    for i in range(len(x)):  # torchvision's tensor path: the same sampling grid, so exactly equal
        assert torch.equal(ours[i], TF.rotate(x[i], float(degrees[i]), interpolation=InterpolationMode.NEAREST))
    # PIL's (what the reference ran): equal but for pixels whose source lies on a rounding boundary
    pil = torch.stack([TF.to_tensor(TF.rotate(TF.to_pil_image(u8[i]), float(degrees[i]))) for i in range(len(x))])
    assert (ours != pil).any(1).float().mean() < 1e-3
    assert not torch.equal(ours, x)  # the large angles do move pixels


def test_jitter_in_each_order_is_torchvisions():
    """Every one of the six orders, each image its own factors: the tensor path to float rounding,
    PIL's to a few grey levels (it truncates to 8 bits after each adjustment: 200 images, the six
    orders, gave 1.4 levels darker on average, 3.6 at most)."""
    u8 = images_u8(12, seed=1)
    x = u8.float() / 255
    g = torch.Generator().manual_seed(0)
    factors = 0.75 + 0.5 * torch.rand(len(x), 3, generator=g)
    for order in itertools.permutations(range(3)):
        ours = apply_jitter(x, factors, torch.tensor([order] * len(x)))
        for i in range(len(x)):
            tensor, pil = x[i], TF.to_pil_image(u8[i])
            for op in order:
                tensor = TORCHVISION[op](tensor, float(factors[i, op]))
                pil = TORCHVISION[op](pil, float(factors[i, op]))
            # torchvision's tensor grey weighs red 0.2989, ours (and PIL's) 0.299
            assert (ours[i] - tensor).abs().max() < 1e-3
            gap = (ours[i] - TF.to_tensor(pil)).abs()
            assert gap.max() <= 4 / 255 and gap.mean() <= 2 / 255


def test_jitter_draws_every_order_equally_and_factors_in_range():
    n = 6000
    factors, order = jitter_params(n, 0.25, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert factors.shape == (n, 3) and factors.min() >= 0.75 and factors.max() <= 1.25
    assert abs(factors.mean().item() - 1.0) < 0.01
    assert torch.equal(order.sort(1).values, torch.arange(3).expand(n, 3))  # each row a permutation
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 6 and (counts - n / 6).abs().max() < 5 * (n / 6 * 5 / 6) ** 0.5
    strong, _ = jitter_params(100, 1.5, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert strong.min() >= 0  # ColorJitter's range is clipped at 0


def test_the_papers_augmentation_moves_each_image_its_own_way():
    x = images_u8(64, seed=2).float() / 255
    cfg = AugmentConfig(crop_pad=0, flip=False, jitter=0.25, rotate=0.0)
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    # a per-image factor: the ratio to the input differs between images (not one batch-wide draw)
    means = out.flatten(1).mean(1) / x.flatten(1).mean(1)
    assert means.std() > 0.05
