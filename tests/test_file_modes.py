"""Artefacts get the modes the user's umask gives any new file, not the private ones of a temporary file:
on a shared cluster, colleagues and a web server read the report, the models and the arrays."""

import os
import stat

import pytest

from notbugs import data as D
from notbugs import tempfiles
from notbugs.storage import atomic_write_bytes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_an_atomic_write_gives_the_umask_s_mode(tmp_path, umask, mask, expected):
    umask(mask)
    assert tempfiles.current_umask() == mask
    atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    assert _mode(tmp_path / "report.html") == expected


def test_fetched_arrays_and_their_folder_are_readable_by_others(tmp_path, mirror, umask):
    umask(0o022)
    D.fetch("mirror", mirror, tmp_path / "cifar10", train_per_class=20, test_per_class=10)
    assert _mode(tmp_path / "cifar10") == 0o755
    for f in (tmp_path / "cifar10").iterdir():
        assert _mode(f) == 0o644, f.name
