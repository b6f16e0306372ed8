"""The constructed training sets (notbugs/sets.py), built in shards that survive a killed run.

- kind "match" (D_R / D_NR): for each training image x (label y), start from another training image x'
  drawn with the seed and match the source model's (robust for D_R, standard for D_NR) penultimate
  representation of x; the result keeps label y.
- kind "pgd" (D_rand / D_det): targeted l2 PGD on the source model from x towards t (targets "random":
  uniform; "next": (y + 1) mod 10); the result is relabelled t.

Assignments (start images, targets) are drawn up front for the whole set from the seed, so each
shard is independent of the others. A shard is `shard-XXXXX.npz` (float16 images, never re-quantised
to 8 bits, labels, source and start indices) plus `shard-XXXXX.json` (checksum, recipe hash,
statistics), the JSON written last: a shard counts as done only when its JSON exists, matches the
recipe and the npz checksum. `manifest.json`, written when every shard is done, marks the set
complete. A job that runs out of time mid-shard keeps the shard's finished batches in
`shard-XXXXX.partial.npz` / `.partial.json` (same rules), and the next job continues from there.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from notbugs.attacks import as_in_the_steps, autocast, frozen, match_representation, pgd_l2
from notbugs.batching import in_batches
from notbugs.deadline import Deadline, Stopped
from notbugs.sets import set_spec
from notbugs.storage import ArtefactError, atomic_write_bytes, read_json, sha256_bytes, sha256_file, write_json

log = logging.getLogger("notbugs.construct")

# The library files a constructed image depends on, with the source model's architecture's (models.arch_code);
# the recipe records their digest, so that shards built by other code are rebuilt, not reused, when a stage
# reruns for a code change (steps.STEP_CODE lists the same). Not sets.py: the recipe holds the set's own entry
# (sets.construction), so that a new set leaves the others' shards alone.
CONSTRUCT_CODE = ("construct.py", "attacks.py")

# what reading a damaged, truncated or foreign .npz raises
UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile)


def assignments(name: str, labels: np.ndarray, seed: int, num_classes: int = 10) -> dict:
    """Start image positions (matching sets) or target labels (PGD sets), for every position, drawn from the
    set's own random stream (sets.SetSpec.stream)."""
    s = set_spec(name)
    rng = np.random.default_rng([seed, s.stream])
    n = len(labels)
    if s.kind == "match":
        # uniform over the *other* images: an offset in 1..n-1 never maps an image to itself
        return {"start": (np.arange(n) + rng.integers(1, n, size=n)) % n}
    if s.kind == "pgd" and s.targets == "random":
        return {"target": rng.integers(0, num_classes, size=n)}
    if s.kind == "pgd" and s.targets == "next":
        return {"target": (labels + 1) % num_classes}
    raise ValueError(f"set {name!r}: no assignment for kind {s.kind!r} with targets {s.targets!r} (notbugs/sets.py)")


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def npz_bytes(arrays: dict) -> bytes:
    """An .npz archive with fixed timestamps, so equal arrays give byte-identical files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _verified(meta_path: Path, data_path: Path, recipe_hash: str) -> dict | None:
    """A shard's (or partial shard's) JSON, if both files are there, it is this recipe's and the npz
    matches its checksum; None otherwise."""
    if not meta_path.exists() or not data_path.exists():
        return None
    try:
        meta = read_json(meta_path)
    except ArtefactError:
        return None
    if meta.get("recipe_hash") != recipe_hash or meta.get("sha256") != sha256_file(data_path):
        return None
    return meta


def shard_done(out_dir: Path, k: int, recipe_hash: str) -> bool:
    return _verified(out_dir / f"shard-{k:05d}.json", out_dir / f"shard-{k:05d}.npz", recipe_hash) is not None


def partial_paths(out_dir: Path, k: int) -> tuple[Path, Path]:
    return out_dir / f"shard-{k:05d}.partial.npz", out_dir / f"shard-{k:05d}.partial.json"


def load_partial(out_dir: Path, k: int, a: int, recipe_hash: str) -> tuple[list, list, int, float]:
    """The batches of shard k (starting at position a) that a stopped job finished:
    (images, batch statistics, next position, seconds spent); nothing if absent or not this recipe's."""
    data_path, meta_path = partial_paths(out_dir, k)
    nothing = [], [], a, 0.0
    meta = _verified(meta_path, data_path, recipe_hash)
    if meta is None or meta.get("start") != a:
        return nothing
    try:
        with np.load(data_path, allow_pickle=False) as z:
            images = z["images"]
    except UNREADABLE:
        return nothing
    if len(images) != meta["upto"] - a:
        return nothing
    return [torch.from_numpy(images)], list(meta["stats"]), int(meta["upto"]), float(meta["wall_s"])


def targeted_pgd_batch(model, x: torch.Tensor, targets: torch.Tensor, eps: float, steps: int, step_size: float,
                       use_best: bool, bf16: bool) -> tuple[torch.Tensor, float]:
    """One D_rand / D_det batch: targeted l2 PGD, and how many of its images the model assigns to their target."""
    z = pgd_l2(model, x, targets, eps, steps, step_size, targeted=True, bf16=bf16, use_best=use_best)
    with autocast(x.device, bf16):
        return z, (as_in_the_steps(model, z).argmax(1) == targets).float().sum().item()


def build_shard(name: str, model, images: torch.Tensor, labels: np.ndarray, source_index: np.ndarray,
                assign: dict, k: int, a: int, b: int, recipe: dict, recipe_hash: str, out_dir: Path,
                device: torch.device, deadline: Deadline | None = None) -> dict:
    """Construct positions [a, b) of the set and write shard k; returns its statistics.

    When `deadline` expires, the finished batches are kept as the shard's partial files and
    `Stopped` is raised; a later call continues after them (the batches stay where they were)."""
    t0 = time.perf_counter()
    bf16 = recipe["precision"] == "bf16"  # resolved by the stage; part of the recipe, so of its hash
    kind = set_spec(name).kind  # "match" or "pgd": config.check_sets refuses any other when parameters load

    def one_batch(s: int, e: int):
        x = images[s:e].to(device)
        if kind == "match":
            m = recipe["match"]
            start = images[torch.as_tensor(assign["start"][s:e])].to(device)
            z, st = match_representation(model, start, x, m["steps"], m["step_size"], m["final_step_size"], bf16=bf16,
                                         use_best=m["use_best"], fake_relu=m["fake_relu"])
        else:  # "pgd"
            p = recipe["pgd"]
            t = torch.as_tensor(assign["target"][s:e], device=device)
            z, hits = targeted_pgd_batch(model, x, t, p["eps"], p["steps"], p["step_size"], p["use_best"], bf16)
            st = {"success": hits}
        return z.to(torch.float16).cpu(), {**st, "n": e - s}

    outs, stats, begin, spent = load_partial(out_dir, k, a, recipe_hash)
    if begin > a:
        log.info("%s shard %d: continuing after the %d of %d images an earlier job built", name, k, begin - a, b - a)
    with frozen(model):
        done = in_batches(one_batch, begin, b, recipe["batch_size"], f"{name} shard {k}",
                          should_stop=None if deadline is None else deadline.expired)
    outs, stats = outs + [z for z, _ in done], stats + [st for _, st in done]
    reached = begin + sum(st["n"] for _, st in done)
    out = torch.cat(outs).numpy()
    if not np.isfinite(out).all():
        raise ArtefactError(f"{name} shard {k}: constructed images contain NaN or inf; nothing written")
    data_path, meta_path = partial_paths(out_dir, k)
    if reached < b:  # stopped: keep the finished batches, the JSON last
        data = npz_bytes({"images": out})
        atomic_write_bytes(data_path, data)
        write_json(meta_path, {"shard": k, "start": a, "upto": reached, "recipe_hash": recipe_hash,
                               "sha256": sha256_bytes(data), "stats": stats,
                               "wall_s": spent + time.perf_counter() - t0})
        raise Stopped(f"{name} shard {k}: {deadline.reason} after {reached - a} of its {b - a} images; "
                      f"they are kept in {data_path}")
    new_labels = labels[a:b] if kind == "match" else assign["target"][a:b]
    start_index = source_index[assign["start"][a:b]] if kind == "match" else np.full(b - a, -1)
    data = npz_bytes({"images": out, "labels": new_labels.astype(np.int64),
                      "source_index": source_index[a:b].astype(np.int64), "start_index": start_index.astype(np.int64)})
    atomic_write_bytes(out_dir / f"shard-{k:05d}.npz", data)
    n = sum(st["n"] for st in stats)
    summary = {"n": n, "wall_s": spent + time.perf_counter() - t0}
    for key in stats[0]:
        if key != "n":  # batch means weighted by batch size; 'success' is a count -> rate
            total = sum(st[key] * (1 if key == "success" else st["n"]) for st in stats)
            summary["success_rate" if key == "success" else key] = total / n
    write_json(out_dir / f"shard-{k:05d}.json", {"shard": k, "start": a, "stop": b, "recipe_hash": recipe_hash,
                                                   "sha256": sha256_bytes(data), "stats": summary})
    meta_path.unlink(missing_ok=True)
    data_path.unlink(missing_ok=True)
    return summary


def _read_shard(path: Path, keys, rebuild: str, num_classes: int = 10) -> dict:
    """One shard's arrays (never a pickle), checked on their own so that an error names the shard."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in keys}
    except UNREADABLE as e:
        raise ArtefactError(f"{path} is not a shard of plain arrays ({type(e).__name__}: {e}); run `{rebuild}`") from e
    images, labels = arrays["images"], arrays["labels"]
    if images.shape[1:] != (3, 32, 32) or any(len(a) != len(images) for a in arrays.values()):
        shapes = {k: a.shape for k, a in arrays.items()}
        raise ArtefactError(f"{path}: arrays of shapes {shapes}, expected images (n, 3, 32, 32) and n of each "
                            f"other; run `{rebuild}`")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ArtefactError(f"{path}: labels outside 0..{num_classes - 1}; run `{rebuild}`")
    return arrays


def _manifest(out_dir: Path) -> tuple[dict, str]:
    """A complete set's manifest (checked to list shards), and the command that rebuilds the set."""
    rebuild = f"dvc repro construct@{out_dir.name}  (or: notbugs construct {out_dir.name})"
    if not (out_dir / "manifest.json").exists():
        raise ArtefactError(f"{out_dir}: constructed set is incomplete (no manifest.json); run `{rebuild}`")
    manifest = read_json(out_dir / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ArtefactError(f"{out_dir}/manifest.json lists no shards; run `{rebuild}`")
    return manifest, rebuild


def load_constructed(out_dir: str | Path) -> dict:
    """Read a complete constructed set, verifying every shard against the manifest."""
    out_dir = Path(out_dir)
    manifest, rebuild = _manifest(out_dir)
    parts = {"images": [], "labels": [], "source_index": [], "start_index": []}
    for shard in manifest["shards"]:
        path = out_dir / shard["file"]
        if not path.exists() or sha256_file(path) != shard["sha256"]:
            raise ArtefactError(f"{path} is missing or corrupt (checksum differs from the manifest); run `{rebuild}`")
        for key, value in _read_shard(path, parts, rebuild).items():
            parts[key].append(value)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if not np.isfinite(arrays["images"]).all():
        raise ArtefactError(f"{out_dir}: constructed images contain NaN or inf; run `{rebuild}`")
    if arrays["images"].shape[1:] != (3, 32, 32):
        raise ArtefactError(f"{out_dir}: images have shape {arrays['images'].shape}, expected (N, 3, 32, 32)")
    arrays["manifest"] = manifest
    return arrays


def load_samples(out_dir: str | Path, choose) -> dict:
    """A few images of a complete set, for the report's sample grid, without reading the set.

    Reads every shard's labels and source indices (a few hundred kB for 50,000 images), asks
    `choose(source_index, labels)` for the positions to show, and reads only those images, by
    seeking in the shards (a `fast` set is 300 MB; loading the four took 6-9 s of the report's
    sample grid on a 2-core CPU, this 0.2 s). Not a verification: the shards' checksums are not
    computed (the stages that train on a set verify it). Returns labels, source_index, positions,
    and the images at those positions."""
    out_dir = Path(out_dir)
    manifest, rebuild = _manifest(out_dir)
    index = {"labels": [], "source_index": []}
    for shard in manifest["shards"]:
        path = out_dir / shard["file"]
        if not path.exists():
            raise ArtefactError(f"{path} is missing; run `{rebuild}`")
        try:
            with np.load(path, allow_pickle=False) as z:  # reads only the members asked for
                for key in index:
                    index[key].append(z[key])
        except UNREADABLE as e:
            raise ArtefactError(f"{path} is not a shard of plain arrays ({type(e).__name__}: {e}); "
                                f"run `{rebuild}`") from e
    starts = np.cumsum([0] + [len(labels) for labels in index["labels"]])
    arrays = {k: np.concatenate(v) for k, v in index.items()}
    positions = np.asarray(choose(arrays["source_index"], arrays["labels"]), dtype=np.int64)
    if len(positions) and not (0 <= positions.min() and positions.max() < starts[-1]):
        raise ValueError(f"sample positions must lie in 0..{starts[-1] - 1} for {out_dir}")
    images = np.zeros((len(positions), 3, 32, 32), dtype=np.float16)
    for k, shard in enumerate(manifest["shards"]):
        mine = np.flatnonzero((positions >= starts[k]) & (positions < starts[k + 1]))
        if len(mine):
            path = out_dir / shard["file"]
            try:
                images[mine] = _npy_rows(path, "images.npy", positions[mine] - starts[k])
            except UNREADABLE as e:
                raise ArtefactError(f"{path}: cannot read its images ({type(e).__name__}: {e}); "
                                    f"run `{rebuild}`") from e
    if not np.isfinite(images).all():
        raise ArtefactError(f"{out_dir}: constructed images contain NaN or inf; run `{rebuild}`")
    return {**arrays, "positions": positions, "images": images, "manifest": manifest}


def _npy_rows(path: Path, member: str, rows: np.ndarray) -> np.ndarray:
    """Rows of one array of an .npz, read by seeking to them: our shards (and np.savez) store their
    members uncompressed, so an array's bytes lie in the file as they are, after a zip and a .npy header."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:  # np.savez_compressed: no seeking, read it all
            with z.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=False)[rows]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local zip header: fixed part, then its name and extra field
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"no zip header for {member}")
        f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
               + int.from_bytes(local[28:30], "little"))
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"{member} is not a C-ordered array of plain numbers")
        row_shape = shape[1:]
        row_bytes = dtype.itemsize * int(np.prod(row_shape))
        base = f.tell()
        out = np.empty((len(rows), *row_shape), dtype)
        for j, i in enumerate(rows):
            if not 0 <= i < shape[0]:
                raise ValueError(f"row {i} of {member} is outside its {shape[0]} rows")
            f.seek(base + int(i) * row_bytes)
            buf = f.read(row_bytes)
            if len(buf) != row_bytes:
                raise ValueError(f"{member} is truncated at row {i}")
            out[j] = np.frombuffer(buf, dtype).reshape(row_shape)
    return out
