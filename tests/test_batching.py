import logging

import pytest

from notbugs.batching import in_batches


def test_out_of_memory_halves_the_batch_and_says_so(caplog):
    seen = []

    def fn(a, b):
        if b - a > 25:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append((a, b))
        return b - a

    with caplog.at_level(logging.WARNING, logger="notbugs"):
        out = in_batches(fn, 0, 100, 100, "PGD eps 0.25")
    assert sum(out) == 100 and seen[0] == (0, 25) and seen[-1] == (75, 100)
    assert "out of GPU memory, retrying with batch size 50" in caplog.text
    assert "retrying with batch size 25" in caplog.text


def test_other_errors_are_not_swallowed():
    def fn(a, b):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        in_batches(fn, 0, 10, 5, "x")
