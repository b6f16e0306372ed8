"""Run work over [0, n) in batches, halving the batch on GPU out-of-memory instead of failing."""

from __future__ import annotations

import logging

import torch

from notbugs.progress import Progress

log = logging.getLogger("notbugs")


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def in_batches(fn, start: int, stop: int, batch_size: int, desc: str, unit: str = "img", should_stop=None) -> list:
    """[fn(a, b) for consecutive batches covering [start, stop)]; on OOM the batch is halved and retried.

    `should_stop()`, asked after each batch, ends the loop early: the result then covers a prefix."""
    out, a = [], start
    bar = Progress(stop - start, desc, unit)
    while a < stop:
        b = min(a + batch_size, stop)
        try:
            out.append(fn(a, b))
        except RuntimeError as e:
            if not is_oom(e) or batch_size == 1:
                raise
            batch_size = max(batch_size // 2, 1)
            torch.cuda.empty_cache()
            log.warning("%s: out of GPU memory, retrying with batch size %d", desc, batch_size)
            continue
        bar.update(b - a)
        a = b
        if a < stop and should_stop is not None and should_stop():
            break
    bar.close()
    return out
