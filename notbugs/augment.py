"""Batch augmentation on the device: no per-image PIL transforms, no worker processes.

The paper's recipe (the authors' `robustness` library defaults) is RandomCrop(32, padding=4),
RandomHorizontalFlip, ColorJitter(0.25, 0.25, 0.25) and RandomRotation(2). Here each is one batched
tensor operation, drawn from an explicit generator so that an epoch's augmentation is reproducible
(resuming a run replays the same draws). Jitter is applied in a fixed order (brightness, contrast,
saturation) where torchvision shuffles the order per image: a documented deviation.
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


def colour_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s]."""
    n = x.shape[0]
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)[None, :, None, None]
    b = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    x = (x * b).clamp(0, 1)
    c = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    s = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    gray = (x * weights).sum(1, keepdim=True)
    return ((x - gray) * s + gray).clamp(0, 1)


def random_rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-degrees, degrees], zero fill (RandomRotation)."""
    n = x.shape[0]
    angle = _uniform(n, -degrees, degrees, g, x.device) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
