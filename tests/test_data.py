"""Fetching: two sources, one path; every malformed input refused with nothing written."""

import errno
import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from notbugs import data as D
from notbugs.subset import balanced_subset
from tests.conftest import SHARED_MIRROR, dead_pid, make_mirror, png_bytes, repo_script, synthetic_image


def _fetch(mirror, root):
    return D.fetch("mirror", mirror, root, train_per_class=20, test_per_class=10)


def test_fetch_from_imagefolder_tree(tmp_path, mirror):
    manifest = _fetch(mirror, tmp_path / "cifar10")
    c = D.load(tmp_path / "cifar10")
    assert c.train_images.shape == (200, 32, 32, 3) and c.train_images.dtype == np.uint8
    assert c.test_images.shape == (100, 32, 32, 3)
    assert np.bincount(c.train_labels).tolist() == [20] * 10
    assert manifest["counts"] == {"train": 200, "test": 100} and c.classes == D.CLASSES
    assert not list(tmp_path.glob(".tmp-*"))


def test_fetch_from_tar_parts_equals_tree(tmp_path, mirror):
    tar_mirror = make_mirror(tmp_path / "tars", as_tar=True)  # same seed -> same images
    _fetch(mirror, tmp_path / "a")
    _fetch(tar_mirror, tmp_path / "b")
    a, b = D.load(tmp_path / "a"), D.load(tmp_path / "b")
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.test_labels, b.test_labels)


def _copy(mirror, tmp_path):
    return shutil.copytree(mirror, tmp_path / "m")


def _corrupt_png(m):
    (m / "train/cat/train_3_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _truncated_png(m):
    p = m / "train/cat/train_3_00001.png"
    p.write_bytes(p.read_bytes()[:60])


def _wrong_size(m):
    (m / "train/cat/train_3_00001.png").write_bytes(png_bytes(np.zeros((28, 28, 3), np.uint8)))


def _grayscale(m):
    (m / "test/dog/test_5_00001.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), "L"))


def _rgba(m):
    (m / "test/dog/test_5_00001.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), "RGBA"))


def _missing_class(m):
    shutil.rmtree(m / "train/frog")


def _extra_class(m):
    shutil.copytree(m / "train/frog", m / "train/unicorn")


def _extra_image(m):
    (m / "train/frog/extra.png").write_bytes(png_bytes(synthetic_image(6, np.random.default_rng(1))))


def _missing_image(m):
    (m / "test/ship/test_8_00003.png").unlink()


def _stray_file(m):
    (m / "train/frog/notes.txt").write_text("hello")


def _empty(m):
    shutil.rmtree(m / "train")
    shutil.rmtree(m / "test")


@pytest.mark.parametrize("damage, message", [
    (_corrupt_png, "cannot decode"), (_truncated_png, "cannot decode"), (_wrong_size, "28x28, expected 32x32"),
    (_grayscale, "mode is L"), (_rgba, "mode is RGBA"), (_missing_class, "frog"), (_extra_class, "unicorn"),
    (_extra_image, "wrong number of images"), (_missing_image, "wrong number of images"),
    (_stray_file, "unexpected file"), (_empty, "no CIFAR-10 images"),
])
def test_malformed_mirror_is_refused_and_nothing_is_written(tmp_path, mirror, damage, message):
    m = _copy(mirror, tmp_path)
    root = tmp_path / "out" / "cifar10"
    _fetch(mirror, root)  # an earlier good fetch must survive a failed one untouched
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    damage(m)
    with pytest.raises(D.DataError) as err:
        _fetch(m, root)
    assert message in str(err.value)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert [p.name for p in root.parent.iterdir()] == ["cifar10"]  # no temporary leftovers


def test_a_killed_fetch_s_folders_are_removed_by_the_next(tmp_path, mirror):
    """SIGKILL while writing the arrays leaves the temporary folder (180 MB for CIFAR-10), and between
    the two renames the previous arrays' folder too; the next fetch removes those of dead processes
    on this host, and leaves a live fetch's alone."""
    import socket

    from notbugs import tempfiles

    dead = dead_pid()
    out = tmp_path / "out"
    left = [out / f".tmp-cifar10@{socket.gethostname()}.{dead}-k1ll3d00",
            out / f".tmp-cifar10.old@{socket.gethostname()}.{dead}-k1ll3d00"]
    live = out / f".tmp-cifar10{tempfiles.owner()}-l1ve0000"
    for folder in (*left, live):
        folder.mkdir(parents=True)
        (folder / "train_images.npy").write_bytes(b"\0" * 1000)
    _fetch(mirror, out / "cifar10")
    assert sorted(p.name for p in out.iterdir()) == sorted(["cifar10", live.name])
    _fetch(mirror, out / "cifar10")  # a fetch over an earlier one leaves nothing of either behind
    assert sorted(p.name for p in out.iterdir()) == sorted(["cifar10", live.name])


def _tar_mirror(tmp_path):
    return make_mirror(tmp_path / "tm", as_tar=True)


def test_truncated_archive_is_refused(tmp_path):
    m = _tar_mirror(tmp_path)
    part = m / "part-0.tar.gz"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(D.DataError, match="part-0.tar.gz: cannot read archive"):
        _fetch(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_archive_is_refused(tmp_path):
    m = _tar_mirror(tmp_path)
    with tarfile.open(m / "part-9.tar", "w"):
        pass
    with pytest.raises(D.DataError, match="holds no images"):
        _fetch(m, tmp_path / "out")


def test_wrong_checksum_is_refused(tmp_path):
    m = _tar_mirror(tmp_path)
    (m / "SHA256SUMS").write_text("0" * 64 + "  part-0.tar.gz\n")
    with pytest.raises(D.DataError, match="SHA-256 does not match"):
        _fetch(m, tmp_path / "out")


def _sums(m, style: str, wrong: str | None = None) -> str:
    """A SHA256SUMS text for the mirror's parts; `wrong`: a part given a wrong digest."""
    digests = {p.name: "0" * 64 if p.name == wrong else hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(m.glob("*.tar.gz"))}
    if style == "bsd":  # BSD sha256 / shasum --tag
        return "".join(f"SHA256 ({name}) = {digest}\n" for name, digest in digests.items())
    return "".join(f"{digest.upper()} *{name}\n" for name, digest in digests.items())  # binary mode, upper case


@pytest.mark.parametrize("style", ["bsd", "gnu"])
def test_checksums_in_either_format_are_checked(tmp_path, style):
    m = _tar_mirror(tmp_path)
    (m / "SHA256SUMS").write_text(_sums(m, style))
    _fetch(m, tmp_path / "out")  # right sums: accepted
    (m / "SHA256SUMS").write_text(_sums(m, style, wrong="part-1.tar.gz"))
    with pytest.raises(D.DataError, match="part-1.tar.gz: SHA-256 does not match"):
        _fetch(m, tmp_path / "out2")


def test_a_checksum_line_it_cannot_read_is_refused_with_its_number(tmp_path):
    m = _tar_mirror(tmp_path)
    (m / "SHA256SUMS").write_text(_sums(m, "bsd") + "part-1.tar.gz\n")
    with pytest.raises(D.DataError, match=r"SHA256SUMS, line 3: not a SHA-256 line"):
        _fetch(m, tmp_path / "out")


def test_a_part_listed_but_absent_is_named(tmp_path):
    m = _tar_mirror(tmp_path)
    (m / "SHA256SUMS").write_text(_sums(m, "gnu"))
    (m / "part-1.tar.gz").unlink()
    with pytest.raises(D.DataError, match="part-1.tar.gz listed in SHA256SUMS but absent"):
        _fetch(m, tmp_path / "out")


def test_archive_with_foreign_entry_is_refused(tmp_path):
    m = _tar_mirror(tmp_path)
    with tarfile.open(m / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"root"))
    with pytest.raises(D.DataError, match="unexpected entry"):
        _fetch(m, tmp_path / "out")


def test_missing_mirror_folder_names_the_options(tmp_path):
    with pytest.raises(D.DataError, match="nowhere does not exist: point data.mirror .* data.source: official or auto"):
        _fetch(tmp_path / "nowhere", tmp_path / "out")


def test_corrupt_canonical_array_is_detected_on_load(tmp_path, mirror):
    root = tmp_path / "cifar10"
    _fetch(mirror, root)
    arr = root / "train_images.npy"
    data = bytearray(arr.read_bytes())
    data[-1] ^= 0xFF
    arr.write_bytes(bytes(data))
    with pytest.raises(Exception, match="corrupt.*notbugs fetch"):
        D.load(root)


def test_balanced_subset():
    labels = np.repeat(np.arange(10), 50)
    idx = balanced_subset(labels, 100, seed=3)
    assert len(idx) == 100 and np.bincount(labels[idx]).tolist() == [10] * 10
    assert np.array_equal(idx, balanced_subset(labels, 100, seed=3))
    assert len(balanced_subset(labels, 0, seed=3)) == 500


@pytest.mark.skipif(not SHARED_MIRROR.exists(), reason="the shared CIFAR-10 mirror is not beside the checkout")
def test_real_mirror_matches_its_published_checksums(tmp_path):
    manifest = D.fetch("mirror", SHARED_MIRROR, tmp_path / "cifar10")
    assert manifest["counts"] == {"train": 50000, "test": 10000}
    assert manifest["array_sha256"]["train"] == "61bea91e73ac2b02dfb856e685981dce64abe13d4e780aa98a1ac1e7c056d03b"
    assert manifest["array_sha256"]["test"] == "52a9dc125982c0440d5eed87474b2f521e96c45a98df08e4329aa42c692b9d9d"
    assert manifest["canonical"] is True and D.CANONICAL_SHA256 == manifest["array_sha256"]


# ---------------------------------------------------------------- the official archive, offline

@pytest.fixture
def kit(monkeypatch):
    """scripts/check_official_order.py's helpers: an official-format archive of a mirror's images, served
    over HTTP on localhost to torchvision's downloader."""
    return repo_script("scripts/check_official_order.py", monkeypatch)


def _official_archive(kit, mirror, out):
    kit.write_batches(kit.mirror_items(sorted(mirror.glob("*/*/*.png"))), out / "src" / "cifar-10-batches-py")
    return kit.pack(out / "src" / "cifar-10-batches-py", out / "serve")


def test_official_archive_gives_the_same_arrays_as_the_mirror(tmp_path, mirror, kit):
    """Downloaded, MD5-checked, extracted and decoded as a user's fetch does: the arrays (and so every
    seeded draw downstream) are the mirror's, byte for byte, although the batches are in another order."""
    archive, md5 = _official_archive(kit, mirror, tmp_path)
    with kit.serving(archive, md5):
        official = D.fetch("official", tmp_path / "unused", tmp_path / "a" / "cifar10", train_per_class=20,
                           test_per_class=10)
    from_mirror = _fetch(mirror, tmp_path / "b" / "cifar10")
    assert official["source"] == "official" and official["origin"] == D.OFFICIAL_URL
    assert official["array_sha256"] == from_mirror["array_sha256"]
    assert official["files"] == from_mirror["files"]  # labels too
    assert (tmp_path / "a" / "cifar10-official" / archive.name).exists()  # the download is kept for reruns


def test_official_batch_that_fails_its_md5_is_downloaded_again_never_read(tmp_path, mirror, kit):
    archive, md5 = _official_archive(kit, mirror, tmp_path)
    root = tmp_path / "a" / "cifar10"
    with kit.serving(archive, md5):
        D.fetch("official", tmp_path / "unused", root, train_per_class=20, test_per_class=10)
        batch = tmp_path / "a" / "cifar10-official" / "cifar-10-batches-py" / "data_batch_3"
        batch.write_bytes(batch.read_bytes()[:-10])  # truncated on disk
        archive.unlink()  # and the server has it no more
        (tmp_path / "a" / "cifar10-official" / archive.name).unlink()
        shutil.rmtree(root)
        with pytest.raises(D.DownloadError, match="cannot download CIFAR-10 from http://127.0.0.1.*NOTBUGS_DATA_SOURCE=mirror"):
            D.fetch("official", tmp_path / "unused", root, train_per_class=20, test_per_class=10)
    assert not root.exists()


def test_full_disk_while_extracting_the_official_archive_says_so(tmp_path, mirror, kit, monkeypatch):
    """Not the network's fault, so not the offline message: the folder, the space it needs, nothing written."""
    archive, md5 = _official_archive(kit, mirror, tmp_path)

    def full(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    root = tmp_path / "a" / "cifar10"
    with kit.serving(archive, md5), pytest.raises(D.DataError, match=(
            f"cannot write the official CIFAR-10 archive into {re.escape(str(tmp_path / 'a' / 'cifar10-official'))} "
            r"\(No space left on device\): it needs about 350 MB.*free space")):
        D.fetch("official", tmp_path / "unused", root, train_per_class=20, test_per_class=10)
    assert not root.exists()


@pytest.mark.skipif(not SHARED_MIRROR.exists(), reason="the shared CIFAR-10 mirror is not beside the checkout")
def test_real_test_images_in_the_official_layout_sort_to_the_published_checksum(tmp_path, kit):
    """The real 10,000 test images and their original file names, batched in a shuffled order as the
    official test batch is: read back, they hash as the mirror's README publishes (the official archive
    itself is not reachable from CI; scripts/check_official_order.py does both splits, fetched)."""
    kit.write_batches(kit.mirror_items([SHARED_MIRROR / "cifar10-test.tar.gz"]), tmp_path)
    x, y = D.read_official_batches([tmp_path / "test_batch"])
    assert hashlib.sha256(x.tobytes()).hexdigest() == "52a9dc125982c0440d5eed87474b2f521e96c45a98df08e4329aa42c692b9d9d"
    assert np.bincount(y).tolist() == [1000] * 10


def test_auto_takes_the_mirror_where_its_folder_exists(tmp_path, mirror):
    manifest = D.fetch("auto", mirror, tmp_path / "cifar10", train_per_class=20, test_per_class=10)
    assert manifest["source"] == "mirror" and not (tmp_path / "cifar10-official").exists()


def test_auto_downloads_the_official_archive_where_there_is_no_mirror(tmp_path, mirror, kit):
    """A user's machine: no mirror folder, so the official archive; the same arrays as ours."""
    archive, md5 = _official_archive(kit, mirror, tmp_path)
    with kit.serving(archive, md5):
        manifest = D.fetch("auto", tmp_path / "no-mirror", tmp_path / "a" / "cifar10", train_per_class=20,
                           test_per_class=10)
    assert manifest["source"] == "official"
    assert manifest["array_sha256"] == _fetch(mirror, tmp_path / "b" / "cifar10")["array_sha256"]
    # byte for byte the same folder, manifest included: DVC hashes it, and the same arrays from another source
    # must not rerun every stage after fetch
    a, b = tmp_path / "a" / "cifar10", tmp_path / "b" / "cifar10"
    assert sorted(f.name for f in a.iterdir()) == sorted(f.name for f in b.iterdir())
    assert all((a / f.name).read_bytes() == (b / f.name).read_bytes() for f in a.iterdir())


def test_auto_with_neither_source_names_both(tmp_path, mirror, kit):
    archive, md5 = _official_archive(kit, mirror, tmp_path)
    archive.unlink()  # the server has nothing to give
    root = tmp_path / "a" / "cifar10"
    with kit.serving(archive, md5), pytest.raises(
            D.DownloadError, match="no CIFAR-10 mirror folder at .*no-mirror, and cannot download CIFAR-10 from http"):
        D.fetch("auto", tmp_path / "no-mirror", root, train_per_class=20, test_per_class=10)
    assert not root.exists()


def test_a_full_fetch_says_whether_its_arrays_are_the_canonical_ones(tmp_path, mirror, monkeypatch, caplog):
    """Counts other than CIFAR-10's are not compared (None); the full counts with other images (here: the
    synthetic mirror taken for full size) are flagged, and the fetch stage warns."""
    from notbugs import stages as S
    from notbugs.config import load_params
    from tests.conftest import write_params

    assert _fetch(mirror, tmp_path / "a" / "cifar10")["canonical"] is None
    monkeypatch.setattr(D, "CANONICAL_COUNTS", {"train": 200, "test": 100})
    params = load_params(write_params(tmp_path / "p.yaml", mirror))
    with caplog.at_level("WARNING", logger="notbugs"):
        manifest = S.stage_fetch(params, tmp_path / "data", "cpu")
    assert manifest["canonical"] is False and "not the canonical CIFAR-10" in caplog.text


def test_a_folder_that_cannot_be_written_fails_before_decoding(tmp_path, mirror, monkeypatch):
    """Decoding the mirror takes seconds to minutes: a data folder we cannot write to is refused first."""
    real_access = D.os.access
    monkeypatch.setattr(D.os, "access", lambda path, mode: False if Path(path) == tmp_path / "ro" else
                        real_access(path, mode))
    monkeypatch.setattr(D, "decode_mirror", lambda *a: pytest.fail("decoded before checking the folder"))
    (tmp_path / "ro").mkdir()
    with pytest.raises(D.DataError, match="cannot write to .*ro"):
        _fetch(mirror, tmp_path / "ro" / "cifar10")


def test_a_missing_relative_mirror_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    """A relative data.mirror is read from the working directory: the error says which folder that was."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(D.DataError, match=re.escape(str(tmp_path / "shared" / "cifar10"))):
        D.decode_mirror("shared/cifar10")
