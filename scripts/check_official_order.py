"""Check the official-archive path of `notbugs fetch` at full size, offline: the mirror's 60,000 images,
under their original file names and in a shuffled order (as the official batches hold them), packed as
the official python archive (`cifar-10-python.tar.gz`: five training batches, a test batch,
batches.meta), served over HTTP on localhost to torchvision's downloader with the archive's MD5s, then
fetched twice with `notbugs.data.fetch("official", ...)` (downloaded and extracted, then from the
kept download). The arrays must hash as the mirror's README publishes, i.e. as a fetch from the mirror.

    python scripts/check_official_order.py [--mirror ../shared/datasets/cifar10] [--work DIR]

The real archive (cs.toronto.edu) is not reachable from our machines; what this checks is our code
on the official format, with the real images and names. Exits 0 when both fetches match, 1 otherwise.
`tests/test_data.py` uses the helpers below at small sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import pickle
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from notbugs import data as D  # noqa: E402

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def mirror_items(paths) -> dict:
    """{split: [(label, file name, image HWC uint8)]}, for the splits found in mirror tar parts and/or PNG
    files laid out as <split>/<class>/<name>.png."""
    items = {"train": [], "test": []}

    def add(rel: str, data) -> None:
        split, cls, name = rel.split("/")[-3:]
        items[split].append((D.CLASSES.index(cls), name, np.asarray(Image.open(data).convert("RGB"))))

    for path in paths:
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile():
                        add(member.name, tar.extractfile(member))
        else:
            add(path.as_posix(), path)
    return {split: entries for split, entries in items.items() if entries}


def write_batches(items: dict, folder: Path, seed: int = 0) -> None:
    """The official batch files of `items` (each split shuffled with `seed`, as the official batches are
    not sorted) and batches.meta, in `folder` (the archive's `cifar-10-batches-py`)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, entries in items.items():
        order = rng.permutation(len(entries))
        for name, part in zip(BATCHES[split], np.array_split(order, len(BATCHES[split]))):
            batch = {"batch_label": name, "labels": [entries[i][0] for i in part],
                     "data": np.stack([entries[i][2] for i in part]).transpose(0, 3, 1, 2).reshape(len(part), -1),
                     "filenames": [entries[i][1] for i in part]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(D.CLASSES)}, protocol=2))


def pack(folder: Path, out: Path) -> tuple[Path, dict]:
    """`out`/cifar-10-python.tar.gz holding `folder`; returns it and {file name: MD5} of it and each batch."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive, {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in [*folder.iterdir(), archive]}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # torchvision's redirect check GETs the archive and closes after the headers (its "Method: HEAD"
        # is a header, not the method): the broken pipe is expected, not worth a traceback
        pass


@contextlib.contextmanager
def serving(archive: Path, md5: dict):
    """Serve `archive` over HTTP on localhost and point torchvision's CIFAR10 (URL, MD5s) at it, restoring
    them on exit."""
    from torchvision.datasets import CIFAR10

    handler = functools.partial(QuietHandler, directory=str(archive.parent))
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    patched = {"url": f"http://127.0.0.1:{server.server_port}/{archive.name}", "tgz_md5": md5[archive.name],
               "train_list": [[name, md5[name]] for name in BATCHES["train"]],
               "test_list": [[name, md5[name]] for name in BATCHES["test"]],
               "meta": {**CIFAR10.meta, "md5": md5["batches.meta"]}}
    before = {key: getattr(CIFAR10, key) for key in patched}
    try:
        for key, value in patched.items():
            setattr(CIFAR10, key, value)
        yield
    finally:
        for key, value in before.items():
            setattr(CIFAR10, key, value)
        server.shutdown()
        server.server_close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    ap.add_argument("--work", default=None,
                    help="folder for the archive and the fetched arrays (default: a temporary one)")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="official-")))
        t0 = time.perf_counter()
        items = mirror_items(sorted(Path(args.mirror).glob("*.tar.gz")))
        print(f"decoded {len(items['train'])} / {len(items['test'])} mirror images ({time.perf_counter() - t0:.1f} s)")
        write_batches(items, work / "src" / "cifar-10-batches-py")
        archive, md5 = pack(work / "src" / "cifar-10-batches-py", work / "serve")
        print(f"official-format archive: {archive.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - t0:.1f} s)")
        ok = True
        with serving(archive, md5):
            for attempt in ("downloaded and extracted", "from the kept download"):
                t = time.perf_counter()
                manifest = D.fetch("official", args.mirror, work / "data" / "cifar10")
                same = manifest["canonical"] is True  # the mirror README's SHA-256s
                ok &= same
                print(f"fetch official, {attempt}: {time.perf_counter() - t:.1f} s, counts {manifest['counts']}, "
                      f"SHA-256 {'as published' if same else 'DIFFERENT: ' + str(manifest['array_sha256'])}")
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
