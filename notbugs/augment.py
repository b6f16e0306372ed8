"""Batch augmentation on the device: no per-image PIL transforms, no worker processes.

The paper's recipe (the authors' `robustness` library defaults) is RandomCrop(32, padding=4),
RandomHorizontalFlip, ColorJitter(0.25, 0.25, 0.25) and RandomRotation(2), applied per image to PIL
images. Here each is a batched tensor operation drawn per image, from an explicit generator so that
an epoch's augmentation is reproducible (resuming a run replays the same draws), and each computes
what torchvision's does for one image: the jitter in an order drawn per image, the rotation with
nearest-neighbour sampling (RandomRotation's default; equal to PIL's rotation, tests/test_augment.py).
The one difference: PIL truncates the jittered image to 8 bits after each adjustment, we keep
floats (PIL's result is 1.4 grey levels darker on average, 3.6 at most, on 200 synthetic and
random-pixel images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from notbugs.config import AugmentConfig


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and take a random 32x32 window per image (torchvision's RandomCrop)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n,1,h,1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n,1,1,w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma as PIL's convert("L") weighs it (torchvision's tensor path: 0.2989 for red)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * weights).sum(1, keepdim=True)


def jitter_params(n: int, strength: float, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter(s, s, s)'s draws for n images: factors (n, 3) for brightness, contrast and saturation,
    each uniform in [max(0, 1 - s), 1 + s], and an order (n, 3) of the three (0 brightness, 1 contrast,
    2 saturation), uniformly random per image as ColorJitter's permutation is (its fourth, hue, is off)."""
    low = max(0.0, 1 - strength)
    factors = low + (1 + strength - low) * torch.rand(n, 3, generator=g, device=device)
    order = torch.rand(n, 3, generator=g, device=device).argsort(1)
    return factors, order


def apply_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each image's three adjustments in its own order. Each is a blend, clamped to [0, 1], of the
    image with a degenerate one (torchvision's and PIL's): brightness with black, contrast with the
    image's mean grey, saturation with its grey image; so each place in the order is one blend whose
    factor and degenerate image are, per image, those of the adjustment its order puts there."""
    for place in range(3):
        which = order[:, place]
        f = factors.gather(1, which[:, None])[:, :, None, None]  # (n, 1, 1, 1)
        which = which[:, None, None, None]
        grey = _grey(x)
        degenerate = torch.where(which == 2, grey, torch.where(which == 1, grey.mean((2, 3), keepdim=True), 0.0))
        x = (f * x + (1 - f) * degenerate).clamp(0, 1)
    return x


def colour_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """ColorJitter(s, s, s), drawn and applied per image."""
    return apply_jitter(x, *jitter_params(x.shape[0], strength, g, x.device))


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image i by degrees[i] counter-clockwise about its centre, nearest-neighbour, zero fill:
    torchvision's rotate (and PIL's) with RandomRotation's default interpolation. At 2 degrees or less
    that moves few pixels (0.9% on 500 CIFAR-10 test images at angles uniform in [-2, 2]); the bilinear
    sampling used until 2026-12-06 blurred every image instead (3.6 grey levels from PIL's result on
    average, docs/measurements.md)."""
    angle = degrees * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """RandomRotation(degrees): each image by an angle uniform in [-degrees, degrees]."""
    return rotate(x, _uniform(x.shape[0], -degrees, degrees, g, x.device))


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Apply the configured augmentations to a float batch (N, 3, 32, 32) in [0, 1]."""
    if cfg.crop_pad:
        x = random_crop(x, cfg.crop_pad, g)
    if cfg.flip:
        x = random_flip(x, g)
    if cfg.jitter:
        x = colour_jitter(x, cfg.jitter, g)
    if cfg.rotate:
        x = random_rotate(x, cfg.rotate, g)
    return x
