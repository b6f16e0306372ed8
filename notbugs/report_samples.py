"""The report's sample images: the same training images in every constructed set and in CIFAR-10, with the
label each set gives them (the paper's Figure 2a), read a few at a time; and the grid as one PNG."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from notbugs.report_paper import CONSTRUCTED, SET_LABEL
from notbugs.sets import SETS

SAMPLE_SIZE = 64  # pixels: 32x32 CIFAR images upscaled (nearest) so they are visible


@dataclass(frozen=True)
class SampleGrid:
    columns: tuple  # column headers (training-set index of the source image)
    rows: tuple  # of (set label, tuple of (uint8 HWC image or None, caption))


def default_load_samples(path: Path, choose) -> dict:
    from notbugs.construct import load_samples  # imports torch: only when samples are drawn

    return load_samples(path, choose)


def default_load_cifar(path: Path):
    from notbugs.data import load

    return load(path)


def _cifar_classes() -> tuple[str, ...]:
    from notbugs.data import CLASSES

    return CLASSES


def _missing_errors() -> tuple:
    from notbugs.storage import ArtefactError

    return (ArtefactError, OSError, ValueError, KeyError)


def _to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """CHW floats in [0, 1] (constructed sets) or HWC uint8 (CIFAR) -> HWC uint8."""
    if image.dtype == np.uint8:
        return image
    hwc = np.transpose(np.asarray(image, dtype=np.float32), (1, 2, 0))
    return np.round(np.clip(hwc, 0.0, 1.0) * 255.0).astype(np.uint8)


def _upscale(image: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    factor = max(1, size // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _choose_sources(source_index: np.ndarray, original_labels: np.ndarray | None, n: int) -> list[int]:
    """Training-set indices to show: one per class when the labels are known (like the paper's
    Figure 2a), otherwise evenly spaced through the set."""
    if original_labels is not None:
        chosen = []
        for c in np.unique(original_labels):
            chosen.append(int(source_index[np.flatnonzero(original_labels == c)[0]]))
        if len(chosen) >= n:
            return chosen[:n]
    positions = np.linspace(0, len(source_index) - 1, num=min(n, len(source_index))).round().astype(int)
    return [int(source_index[p]) for p in positions]


def sample_grid(data_dir: Path, n: int, load_samples, load_cifar) -> tuple[SampleGrid | None, list[str]]:
    """The grid of sample images and notes about what could not be shown."""
    errors = _missing_errors()
    notes = []
    try:
        cifar = load_cifar(data_dir / "cifar10")
    except errors as e:
        cifar = None
        state = "could not be read" if (data_dir / "cifar10").exists() else "is not fetched yet"
        notes.append(f"CIFAR-10 {state}, so the D row is empty ({e}).")
    classes = tuple(cifar.classes) if cifar is not None else _cifar_classes()
    chosen: list[int] = []  # the training images shown, chosen from the first set that loads
    rows = []
    for name in CONSTRUCTED:
        def choose(source_index, labels, name=name):
            """Positions in this set of the chosen training images (chosen here for the first set)."""
            if not chosen:
                originals = cifar.train_labels[source_index] if cifar is not None else (
                    labels if SETS[name].kind == "match" else None)  # a matching set keeps the labels
                chosen.extend(_choose_sources(source_index, originals, n))
            position = {int(s): i for i, s in enumerate(source_index)}
            return [position[s] for s in chosen if s in position]

        try:  # only the few sample images are read: a full set is hundreds of MB
            data = load_samples(data_dir / "datasets" / name, choose)
        except errors as e:
            state = "could not be read" if (data_dir / "datasets" / name).exists() else "is not built yet"
            notes.append(f"{SET_LABEL[name]} {state} ({e}).")
            continue
        shown = {int(data["source_index"][p]): (image, int(data["labels"][p]))
                 for p, image in zip(data["positions"], data["images"])}
        cells = tuple((None, "—") if s not in shown else (_upscale(_to_uint8_hwc(shown[s][0])), classes[shown[s][1]])
                      for s in chosen)
        rows.append((SET_LABEL[name], cells))
    if not rows:
        notes.append("No constructed set is built yet, so there are no samples to show.")
        return None, notes
    if cifar is not None:
        original = tuple((_upscale(cifar.train_images[s]), classes[int(cifar.train_labels[s])]) for s in chosen)
    else:
        original = tuple((None, "—") for _ in chosen)
    rows.insert(0, ("D", original))
    return SampleGrid(tuple(f"#{s}" for s in chosen), tuple(rows)), notes


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(grid: SampleGrid, gap: int = 4) -> bytes:
    """All sample images in one PNG (rows = sets) for the Markdown report; labels go in a table."""
    n_rows, n_cols = len(grid.rows), len(grid.columns)
    step = SAMPLE_SIZE + gap
    canvas = np.full((n_rows * step + gap, n_cols * step + gap, 3), 255, dtype=np.uint8)
    for r, (_, cells) in enumerate(grid.rows):
        for c, (image, _) in enumerate(cells):
            if image is not None:
                y, x = gap + r * step, gap + c * step
                canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
    return png_bytes(canvas)
