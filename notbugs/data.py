"""CIFAR-10: fetch from the official archive or an offline mirror, verify, store one canonical format.

Both sources go through the same path: decode to uint8 arrays, check every count and shape, then
write `data/cifar10/{train,test}_{images,labels}.npy` and a manifest with their SHA-256, atomically
(a temporary folder renamed into place), so a failed fetch leaves nothing half-written.

The mirror is the ImageFolder layout (`train/<class>/*.png`, `test/<class>/*.png`), either
extracted or packed into `.tar` / `.tar.gz` parts. Images from either source are ordered by (class
index, file name), the order the mirror's README hashes: the official batches carry the same file
names, so both sources write the same arrays, and every seeded draw (subsets, start images, targets,
batch order) picks the same images whichever a user fetched from.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from notbugs import tempfiles
from notbugs.storage import ArtefactError, load_npy, read_json, save_npy, sha256_file, write_json

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SPLITS = ("train", "test")
# SHA-256 of the whole (N, 32, 32, 3) uint8 arrays in our order, (class index, file name): the figures our
# mirror's README publishes, and what a correct fetch from either source writes. Checked at every full
# fetch, so that a user's official download confirms what our machines cannot reach to check.
CANONICAL_COUNTS = {"train": 50000, "test": 10000}
CANONICAL_SHA256 = {"train": "61bea91e73ac2b02dfb856e685981dce64abe13d4e780aa98a1ac1e7c056d03b",
                    "test": "52a9dc125982c0440d5eed87474b2f521e96c45a98df08e4329aa42c692b9d9d"}


class DataError(ValueError):
    """The source data is missing, corrupt or not CIFAR-10 as expected."""


class DownloadError(DataError):
    """The official archive could not be downloaded (offline, a dropped connection): unlike the other data
    errors, a second try may succeed."""


@dataclass(frozen=True)
class Cifar:
    train_images: np.ndarray  # (50000, 32, 32, 3) uint8
    train_labels: np.ndarray  # (50000,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


# ---------------------------------------------------------------- mirror (ImageFolder, tar parts)

def _decode_png(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (32, 32):
                raise DataError(f"{name}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            if im.mode != "RGB":
                raise DataError(f"{name}: image mode is {im.mode}, expected RGB")
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for truncated or corrupt files
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e


def _split_path(rel: str):
    """'train/cat/x.png' -> ('train', 'cat', 'x.png'); None for anything that is not an image entry."""
    parts = Path(rel).parts
    parts = parts[1:] if parts and parts[0] == "." else parts
    if len(parts) != 3 or parts[0] not in SPLITS or not parts[2].lower().endswith(".png"):
        return None
    return parts[0], parts[1], parts[2]


def _read_mirror_files(mirror: Path) -> dict:
    """{(split, class, filename): png bytes} from an extracted tree and/or tar parts in `mirror`."""
    entries: dict = {}
    for split in SPLITS:
        for path in sorted((mirror / split).glob("*/*")):
            key = _split_path(str(path.relative_to(mirror)))
            if key is None:
                raise DataError(f"{path}: unexpected file in the mirror (expected <class>/<name>.png)")
            entries[key] = path.read_bytes()
    archives = sorted(p for p in mirror.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
    sums = _read_sha256sums(mirror / "SHA256SUMS")
    listed = [name for name in sums if name.endswith((".tar", ".tar.gz", ".tgz"))]
    absent = [name for name in listed if not (mirror / name).exists()]
    if absent and len(absent) < len(listed):  # none there: an extracted tree instead of the parts, which is fine
        raise DataError(f"{mirror}: {', '.join(absent)} listed in SHA256SUMS but absent (an incomplete copy of "
                        f"the mirror?)")
    for archive in archives:
        if archive.name in sums and sha256_file(archive) != sums[archive.name]:
            raise DataError(f"{archive}: SHA-256 does not match {mirror / 'SHA256SUMS'} (corrupt or truncated copy)")
        entries.update(_read_tar(archive))
    if not entries:
        raise DataError(f"{mirror}: no CIFAR-10 images found (expected train/<class>/*.png and "
                        f"test/<class>/*.png, extracted or in .tar/.tar.gz parts)")
    return entries


_GNU_SUM = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>.+)$")  # sha256sum's format
_BSD_SUM = re.compile(r"^SHA256 \((?P<name>.+)\) = (?P<digest>[0-9a-fA-F]{64})$")  # BSD sha256's / shasum --tag


def _read_sha256sums(path: Path) -> dict:
    """{file name: lower-case hex digest} from a SHA256SUMS file in either common format."""
    if not path.exists():
        return {}
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _GNU_SUM.match(line.rstrip()) or _BSD_SUM.match(line.rstrip())
        if m is None:
            raise DataError(f"{path}, line {number}: not a SHA-256 line ('<64 hex digits>  <file>' or "
                            f"'SHA256 (<file>) = <64 hex digits>'): {line[:80]!r}")
        sums[m["name"].strip()] = m["digest"].lower()
    return sums


def _read_tar(archive: Path) -> dict:
    entries = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                key = _split_path(member.name)
                if key is None or not member.isfile():
                    raise DataError(f"{archive}: unexpected entry {member.name!r} (expected "
                                    f"train|test/<class>/<name>.png)")
                entries[key] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, Exception) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{archive}: cannot read archive ({type(e).__name__}: {e}); truncated or corrupt?") from e
    if not entries:
        raise DataError(f"{archive}: archive holds no images")
    return entries


def decode_mirror(mirror: str | Path) -> dict:
    """Decode a mirror into {split: (images uint8 NHWC, labels int64)}, ordered by (class, file name)."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise DataError(f"CIFAR-10 mirror folder {_shown(mirror)} does not exist: point data.mirror (or "
                        f"NOTBUGS_MIRROR) at one, or download the official archive with data.source: official or "
                        f"auto (or NOTBUGS_DATA_SOURCE)")
    entries = _read_mirror_files(mirror)
    out = {}
    for split in SPLITS:
        keys = sorted((k for k in entries if k[0] == split), key=lambda k: (_class_index(k, mirror), k[2]))
        if not keys:
            raise DataError(f"{mirror}: no {split}/ images found")
        missing = sorted(set(CLASSES) - {k[1] for k in keys})
        if missing:
            raise DataError(f"{mirror}: {split}/ has no class folder(s) {missing}; expected exactly {list(CLASSES)}")
        images = np.stack([_decode_png(entries[k], f"{mirror}:{'/'.join(k)}") for k in keys])
        labels = np.array([CLASSES.index(k[1]) for k in keys], dtype=np.int64)
        out[split] = (images, labels)
    return out


def _class_index(key, mirror) -> int:
    if key[1] not in CLASSES:
        raise DataError(f"{mirror}: unknown class folder {key[0]}/{key[1]}; expected exactly {list(CLASSES)}")
    return CLASSES.index(key[1])


# ---------------------------------------------------------------- official archive

def decode_official(download_dir: str | Path) -> dict:
    """Download (if needed) and verify the official python archive with torchvision, then decode it,
    ordered by (class index, file name) as the mirror.

    torchvision checks the archive's MD5 and each batch file's MD5 before unpickling the batches,
    so only the exact official bytes are ever unpickled. Its dataset drops the batches' file names,
    which give the order, so the verified batches are read again here (1.5-2.5 s for both splits on 2 CPU cores).
    """
    from torchvision.datasets import CIFAR10

    out = {}
    for split in SPLITS:
        try:
            ds = CIFAR10(str(download_dir), train=(split == "train"), download=True)
        except Exception as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM):
                raise DataError(f"cannot write the official CIFAR-10 archive into {download_dir} ({e.strerror}): it "
                                f"needs about 350 MB (the archive and its extracted batches); nothing was fetched: "
                                f"free space or make the folder writable, and re-run") from e
            raise DownloadError(
                f"cannot download CIFAR-10 from {CIFAR10.url} ({type(e).__name__}: {e}). Offline? Point at a "
                f"mirror instead: set data.source: mirror in params.yaml (or NOTBUGS_DATA_SOURCE=mirror) and "
                f"data.mirror / NOTBUGS_MIRROR to a folder holding train/ and test/ (ImageFolder PNGs or "
                f".tar/.tar.gz parts)") from e
        if tuple(ds.classes) != CLASSES:
            raise DataError(f"official archive lists classes {ds.classes}, expected {list(CLASSES)}")
        batches = ds.train_list if ds.train else ds.test_list
        out[split] = read_official_batches([Path(ds.root) / ds.base_folder / name for name, _md5 in batches])
    return out


def read_official_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels of official python batch files, ordered by (class index,
    file name). Unpickles them: only for files whose MD5 was checked against the official one."""
    images, labels, names = [], [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # the batches were pickled by Python 2
        missing = {"data", "labels", "filenames"} - set(batch)
        if missing:
            raise DataError(f"{path}: not a CIFAR-10 batch (no {sorted(missing)})")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += list(batch["labels"])
        names += list(batch["filenames"])
    images = np.concatenate(images)
    if not len(images) == len(labels) == len(names):
        raise DataError(f"{paths[0].parent}: {len(images)} images, {len(labels)} labels, {len(names)} file names")
    order = sorted(range(len(labels)), key=lambda i: (labels[i], names[i]))
    return np.ascontiguousarray(images[order]), np.asarray(labels, dtype=np.int64)[order]


# ---------------------------------------------------------------- verify, write, load

def verify(split: str, images: np.ndarray, labels: np.ndarray, per_class: int) -> None:
    """Counts, shapes and label range of one split; a DataError names what is wrong."""
    expected = per_class * len(CLASSES)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(f"{split}: images have shape {images.shape} {images.dtype}, expected (N, 32, 32, 3) uint8")
    if len(images) != len(labels):
        raise DataError(f"{split}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"{split}: labels outside 0..{len(CLASSES) - 1}")
    counts = np.bincount(labels, minlength=len(CLASSES))
    wrong = {CLASSES[c]: int(n) for c, n in enumerate(counts) if n != per_class}
    if wrong:
        raise DataError(f"{split}: classes with the wrong number of images {wrong}, expected {per_class} each "
                        f"({expected} in all, found {len(labels)})")


def _shown(path: str | Path) -> str:
    """A path for an error message: a relative one with the folder it resolves to from here (a relative
    data.mirror is read from the working directory, not from params.yaml's folder)."""
    return str(path) if Path(path).is_absolute() else f"{path} (from {Path.cwd()}: {Path(path).resolve()})"


def resolve_source(source: str, mirror: str | Path) -> str:
    """'auto' is the mirror where its folder exists, else the official archive; other sources as given."""
    if source == "auto":
        return "mirror" if Path(mirror).is_dir() else "official"
    return source


def fetch(source: str, mirror: str | Path, root: str | Path, train_per_class: int = 5000,
          test_per_class: int = 1000) -> dict:
    """Fetch CIFAR-10 from `source` ('auto' | 'official' | 'mirror'), verify it, write the canonical
    format. Returns the manifest, with `source` (the one used) and `origin` (its path or URL) added: the
    written one leaves them out. Nothing under `root` changes unless every check passed."""
    root = Path(root)
    # before decoding 60,000 images (seconds to minutes): a folder we cannot write to fails now
    root.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(root.parent, os.W_OK):
        raise DataError(f"cannot write to {root.parent} (read-only?): the fetched arrays go to {root}")
    used = resolve_source(source, mirror)
    if used == "mirror":
        splits = decode_mirror(mirror)
        origin = str(Path(mirror).resolve())
    elif used == "official":
        try:
            splits = decode_official(root.parent / "cifar10-official")
        except DataError as e:
            if source == "auto":  # the user asked for neither: say that both were tried
                # type(e): a DownloadError stays one (the Prefect task retries those)
                raise type(e)(f"no CIFAR-10 mirror folder at {_shown(mirror)}, and {e}") from e
            raise
        origin = OFFICIAL_URL
    else:
        raise DataError(f"unknown data source {source!r}; accepted: auto, official, mirror")
    per_class = {"train": train_per_class, "test": test_per_class}
    for split, (images, labels) in splits.items():
        verify(split, images, labels, per_class[split])

    for name in (root.name, f"{root.name}.old"):  # left by a fetch that was killed (180 MB for CIFAR-10)
        tempfiles.remove_dead(root.parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=tempfiles.prefix(root.name), dir=root.parent))
    os.chmod(tmp, tempfiles.default_mode(directory=True))
    try:
        files = {}
        for split, (images, labels) in splits.items():
            files[f"{split}_images.npy"] = save_npy(tmp / f"{split}_images.npy", images)
            files[f"{split}_labels.npy"] = save_npy(tmp / f"{split}_labels.npy", labels)
        # Only what the arrays are, not where they came from: DVC hashes this folder, and identical arrays
        # from another mirror path or the official archive must not rerun every stage after fetch. The
        # source is recorded in the `datasets` table's row of D (notbugs.stages.stage_fetch).
        manifest = {
            "dataset": "cifar10", "classes": list(CLASSES),
            "counts": {s: int(len(splits[s][1])) for s in SPLITS}, "files": files,
            # SHA-256 of the raw (N,32,32,3) uint8 bytes: comparable with the mirror README's figures
            "array_sha256": {s: _array_sha(splits[s][0]) for s in SPLITS},
        }
        # the canonical CIFAR-10 or not; None for other counts (tests, a cut-down mirror)
        manifest["canonical"] = (manifest["array_sha256"] == CANONICAL_SHA256
                                 if manifest["counts"] == CANONICAL_COUNTS else None)
        write_json(tmp / "manifest.json", manifest)
        _swap_in(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "source": used, "origin": origin}


def _array_sha(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _swap_in(new: Path, root: Path) -> None:
    """Replace folder `root` by `new` so that a reader sees the old or the new, never a mix."""
    old = None
    if root.exists():
        # named as a temporary folder of this process, so that a later fetch removes it if this one is killed
        old = root.with_name(tempfiles.prefix(f"{root.name}.old") + new.name.rsplit("-", 1)[-1])
        root.rename(old)
    new.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load(root: str | Path = "data/cifar10") -> Cifar:
    """Read the canonical arrays, verifying each against the manifest."""
    root = Path(root)
    rebuild = "notbugs fetch"
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").exists() else None
    if manifest is None:
        raise ArtefactError(f"{root}/manifest.json is missing: CIFAR-10 is not fetched yet; run `{rebuild}`")
    arrays = {name: load_npy(root / name, sha, rebuild) for name, sha in manifest["files"].items()}
    return Cifar(arrays["train_images.npy"], arrays["train_labels.npy"], arrays["test_images.npy"],
                 arrays["test_labels.npy"], tuple(manifest["classes"]))
