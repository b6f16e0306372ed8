"""Which images a profile uses: class-balanced subsets of CIFAR-10, drawn the same way by every stage.

Its own module because every stage after fetch draws its subset here (and transfer its test images):
`dvc.yaml` declares this file as their dependency, so a change to the draw reruns them, while the rest
of the fetch code (notbugs/data.py) reruns fetch alone.
"""

from __future__ import annotations

import numpy as np


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n images, n/10 per class, drawn with `seed`; n = 0 means all."""
    if n == 0 or n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    if n % len(classes):
        raise ValueError(f"subset size {n} is not a multiple of the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[: n // len(classes)] for c in classes]
    return np.sort(np.concatenate(picks))
