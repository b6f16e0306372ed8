"""Append-only Parquet result tables.

Every stage of the pipeline records what it did as rows in a handful of fixed
tables (see ``SCHEMAS`` and docs/results.md). A table is a folder under a root
(default ``data/results``); every call to :func:`append` adds one new Parquet
part file to that folder and never touches earlier ones::

    data/results/evaluations/part-20240101T120000123456-4242-1a2b3c4d-run-<run_id>.parquet

A part is first written to a hidden temp file in the same folder, fsynced and
then renamed into place with ``os.replace``. The rename is atomic, so several
processes can append to the same table at once, and a reader (this module,
pandas, pyarrow.dataset or duckdb) sees each write either whole or not at all.
A writer killed mid-write leaves its temp file behind; the next append to the
same table removes it (see notbugs.tempfiles).

This module deliberately depends only on pyarrow and pandas: it runs on GPU
machines that have neither Prefect nor DVC installed.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from notbugs import tempfiles

DEFAULT_ROOT = "data/results"

# Part files are the only files readers should look at. Temp files start with
# "." (pyarrow.dataset skips hidden files) and do not end in ".parquet" (so a
# duckdb glob of "*.parquet" skips them too).
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".writing"
RUN_MARK = "-run-"  # part-<stamp>-<pid>-<random>-run-<run_id>.parquet

_UTC_US = pa.timestamp("us", tz="UTC")


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


# Columns are non-nullable unless a value can genuinely be absent. Keeping the
# integer columns non-nullable also keeps their pandas dtype int64 (a null
# would turn the whole column into float64).
SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema(
        [
            _required("run_id", pa.string()),
            _required("stage", pa.string()),
            _required("profile", pa.string()),
            _required("params_hash", pa.string()),
            _required("code_version", pa.string()),
            _required("input_hashes", pa.string()),  # JSON object: path -> sha256
            _required("device", pa.string()),
            _required("started_at", _UTC_US),
            _required("ended_at", _UTC_US),
            _required("wall_s", pa.float64()),
            _required("status", pa.string()),  # "ok" | "failed" | "stopped" (out of time, progress saved)
            # Added 2026-12-07 (null in earlier rows): the resolved parameters (JSON: the profile's section and
            # `data`), the library versions and host (JSON). A hash alone cannot be turned back into a config.
            _optional("params", pa.string()),
            _optional("versions", pa.string()),
        ]
    ),
    "models": pa.schema(
        [
            _required("model_id", pa.string()),
            _required("profile", pa.string()),
            _required("arch", pa.string()),
            _required("width", pa.float64()),
            _required("train_set", pa.string()),  # "d", "d_r", "d_nr", "d_rand", "d_det"
            _required("training", pa.string()),  # "standard" | "adversarial"
            _required("recipe", pa.string()),  # JSON
            _required("checkpoint_path", pa.string()),
            _required("checkpoint_sha256", pa.string()),
            _required("run_id", pa.string()),
            _required("created_at", _UTC_US),
            # Added 2026-12-07: the build of the training set (its manifest's run id); null for D and earlier rows
            _optional("train_set_run_id", pa.string()),
        ]
    ),
    "datasets": pa.schema(
        [
            _required("dataset_id", pa.string()),
            _required("profile", pa.string()),
            _required("name", pa.string()),  # "d", "d_r", "d_nr", "d_rand", "d_det", ...
            _required("recipe", pa.string()),  # JSON
            # The original CIFAR-10 data has no source model, hence nullable.
            _optional("source_model_id", pa.string()),
            _optional("source_model_sha256", pa.string()),
            _required("n_images", pa.int64()),
            _required("stats", pa.string()),  # JSON
            _required("path", pa.string()),
            _required("run_id", pa.string()),
            _required("created_at", _UTC_US),
        ]
    ),
    "evaluations": pa.schema(
        [
            _required("model_id", pa.string()),
            _required("profile", pa.string()),
            _required("test_set", pa.string()),
            _required("attack", pa.string()),  # "none" | "pgd_l2" | ...
            _required("eps", pa.float64()),
            _required("steps", pa.int64()),
            _required("restarts", pa.int64()),
            _required("accuracy", pa.float64()),  # fraction in [0, 1]
            _required("correct", pa.int64()),
            _required("n", pa.int64()),
            _required("per_class_accuracy", pa.list_(pa.float64())),
            _required("wall_s", pa.float64()),
            _required("run_id", pa.string()),
            _required("evaluated_at", _UTC_US),
            # Added 2026-12-07 (null in earlier rows): the weights scored, as models.checkpoint_sha256
            _optional("checkpoint_sha256", pa.string()),
            # Added 2026-12-08 (null in earlier rows): the attack's step (l2) and whether each restart scored its
            # highest-loss iterate; 0 and false for "none"
            _optional("step_size", pa.float64()),
            _optional("use_best", pa.bool_()),
        ]
    ),
    "transfer": pa.schema(
        [
            _required("source_model_id", pa.string()),
            _required("target_model_id", pa.string()),
            _required("target_arch", pa.string()),
            _required("profile", pa.string()),
            _required("attack", pa.string()),
            _required("eps", pa.float64()),
            _required("steps", pa.int64()),
            _required("success_rate", pa.float64()),
            _required("n", pa.int64()),
            _required("run_id", pa.string()),
            _required("created_at", _UTC_US),
            # Added 2026-12-07 (null in earlier rows): the weights of both models, as models.checkpoint_sha256
            _optional("source_checkpoint_sha256", pa.string()),
            _optional("target_checkpoint_sha256", pa.string()),
            # Added 2026-12-08 (null in earlier rows): the attack's step (l2) and whether it kept each image's
            # lowest target-loss iterate
            _optional("step_size", pa.float64()),
            _optional("use_best", pa.bool_()),
        ]
    ),
    "epochs": pa.schema(
        [
            _required("model_id", pa.string()),
            _required("profile", pa.string()),
            _required("epoch", pa.int64()),
            _required("train_loss", pa.float64()),
            _required("train_acc", pa.float64()),
            _required("lr", pa.float64()),
            _required("wall_s", pa.float64()),
            _required("run_id", pa.string()),
        ]
    ),
}

TABLES: tuple[str, ...] = tuple(SCHEMAS)


# ---------------------------------------------------------------------------
# Small helpers for writers
# ---------------------------------------------------------------------------


def now_utc() -> datetime:
    """Timezone-aware current time in UTC (naive datetimes are refused by append)."""
    return datetime.now(UTC)


def new_run_id() -> str:
    """A fresh unique run id (uuid4 as 32 hex characters)."""
    return uuid.uuid4().hex


def to_json(obj) -> str:
    """Canonical JSON text for the JSON-in-a-string columns (recipe, stats, input_hashes).

    Sorted keys make the text stable, so equal recipes compare equal as strings.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------
# Validation and conversion
# ---------------------------------------------------------------------------


def _schema(table: str) -> pa.Schema:
    if table not in SCHEMAS:
        raise ValueError(f"unknown result table {table!r}; known tables: {', '.join(TABLES)}")
    return SCHEMAS[table]


def _check_columns(table: str, schema: pa.Schema, rows: list[dict]) -> None:
    expected = set(schema.names)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"table {table!r}: row {i} is a {type(row).__name__}, not a dict")
        missing = [field.name for field in schema if field.name not in row and not field.nullable]
        extra = sorted(str(key) for key in row if key not in expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {missing}")
            if extra:
                parts.append(f"extra column(s) {extra}")
            raise ValueError(f"table {table!r}: row {i} has {' and '.join(parts)}")


def _check_value(table: str, field: pa.Field, i: int, value) -> None:
    """Refuse values pyarrow would accept but silently get wrong.

    pyarrow truncates 1.5 to 1 for an int64 column, turns True into 1.0 for a
    float64 column and reads a naive datetime as UTC; all of these are bugs in
    the caller that would otherwise end up as plausible-looking results.
    Everything else is left to pyarrow's own conversion.
    """
    where = f"table {table!r}, column {field.name!r}, row {i}"
    if value is None:
        if not field.nullable:
            raise ValueError(f"{where}: value is required (got None)")
        return
    numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
    if isinstance(value, (bool, np.bool_)) and numeric:
        raise ValueError(f"{where}: expected {field.type}, got bool {value!r}")
    if pa.types.is_integer(field.type) and isinstance(value, (float, np.floating)):
        # np.float64 is a float subclass; np.float32 and np.float16 are not.
        raise ValueError(f"{where}: expected an integer, got float {value!r}")
    if pa.types.is_timestamp(field.type):
        if not isinstance(value, datetime):
            raise ValueError(f"{where}: expected a timezone-aware datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: naive datetime {value!r}; use a timezone-aware one (e.g. now_utc())")


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _to_arrow(table: str, schema: pa.Schema, rows: list[dict]) -> pa.Table:
    """Validate plain-dict rows and convert them to an Arrow table of the table's schema."""
    _check_columns(table, schema, rows)
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]  # a nullable column left out is null
        if field.nullable:  # rows read back with pandas hold a null as NaN or pd.NA
            values = [None if _missing(value) else value for value in values]
        for i, value in enumerate(values):
            _check_value(table, field, i, value)
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            raise ValueError(
                f"table {table!r}, column {field.name!r}: cannot convert to {field.type}: {err}"
            ) from err
    return pa.Table.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _table_dir(table: str, root: str | Path) -> Path:
    return Path(root) / table


def _part_name(run_id: str | None) -> str:
    # Time first, to the microsecond, so that names sort by write time and `load` gives rows in the order
    # they were appended (two parts of one process in the same second came back in random order); pid and a
    # random suffix make names unique across processes. The run id, when all rows share one, lets a corrupt
    # part's error name the stage that wrote it: its rows can no longer say so themselves.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    run = f"{RUN_MARK}{run_id}" if run_id and run_id.isalnum() else ""
    return f"{PART_PREFIX}{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}{run}{PART_SUFFIX}"


def _single_run_id(rows: list[dict]) -> str | None:
    run_ids = {row.get("run_id") for row in rows}
    return run_ids.pop() if len(run_ids) == 1 else None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable. Not possible on every platform
    # (e.g. Windows cannot open a directory), which only costs durability
    # after a power cut, never atomicity, so failures are ignored.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append(table: str, rows: list[dict], root: str | Path = DEFAULT_ROOT) -> Path | None:
    """Append ``rows`` to ``table`` as one new part file; return its path.

    All rows are validated before anything touches the disk, so a bad row
    leaves no file behind. An empty ``rows`` writes nothing and returns None.
    """
    schema = _schema(table)
    rows = list(rows)
    if not rows:
        return None
    arrow_table = _to_arrow(table, schema, rows)

    folder = _table_dir(table, root)
    folder.mkdir(parents=True, exist_ok=True)
    tempfiles.remove_dead(folder)  # temp files of writers that were killed mid-write
    final = folder / _part_name(_single_run_id(rows))
    temp = folder / f"{TEMP_PREFIX}{final.stem}{tempfiles.owner()}{TEMP_SUFFIX}"
    try:
        pq.write_table(arrow_table, temp)
        _fsync_file(temp)
        os.replace(temp, final)
    except OSError as err:  # disk full, read-only folder, ...: say which table, keep the errno
        what = f"cannot append to result table {table!r} in {folder} ({err.strerror or err}); nothing was written"
        raise (OSError(err.errno, what) if err.errno else OSError(what)) from err
    finally:
        # Only reached with the temp file still present if the write failed.
        if temp.exists():
            temp.unlink()
    _fsync_dir(folder)
    return final


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def part_files(table: str, root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """The finished part files of ``table``, oldest name first; temp files are never listed."""
    _schema(table)
    folder = _table_dir(table, root)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{PART_PREFIX}*{PART_SUFFIX}"))


def _corrupt(path: Path, reason: str) -> ValueError:
    return ValueError(f"corrupt result part {path}: {reason}; delete it or re-run {_writer(path)}")


def _writer(path: Path) -> str:
    """The stage that wrote a part, from the run id in its name and the runs table, as far as they tell."""
    stem = path.name.removesuffix(PART_SUFFIX)
    if RUN_MARK not in stem:  # written before parts carried their run id
        return "the stage that wrote it"
    run_id = stem.rsplit(RUN_MARK, 1)[1]
    stages = set()
    for runs_part in part_files("runs", path.parent.parent):
        if runs_part == path:
            continue
        try:
            runs = pq.read_table(runs_part, columns=["run_id", "stage"]).to_pylist()
        except (pa.ArrowException, OSError, KeyError):
            continue  # another corrupt part: its own error names it
        stages.update(row["stage"] for row in runs if row["run_id"] == run_id)
    if not stages:  # killed before its row was written, or its row is in this very part
        return f"the stage that wrote it (run {run_id}; the runs table has no readable row of it)"
    return f"the stage that wrote it: {', '.join(sorted(stages))} (run {run_id})"


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        part = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise _corrupt(path, str(err)) from err
    # A part written before an optional column was added lacks it: the column reads as null there.
    added = [field for field in schema if field.name not in part.schema.names and field.nullable]
    for field in added:
        part = part.append_column(field, pa.nulls(len(part), field.type))
    if sorted(part.schema.names) != sorted(schema.names):
        raise _corrupt(path, f"columns {part.schema.names} differ from the schema's {schema.names}")
    part = part.select(schema.names)
    try:
        # Normalises details Parquet does not round-trip exactly (e.g. the
        # name of a list's child field) so all parts concatenate cleanly.
        return part.cast(schema)
    except (pa.ArrowException, ValueError) as err:
        raise _corrupt(path, f"types do not match the schema: {err}") from err


# A bool column with a null would come back as `object` and one without as `bool`: pandas' nullable boolean
# keeps one dtype whatever the rows hold.
_PANDAS_TYPES = {pa.bool_(): pd.BooleanDtype()}


def load(table: str, root: str | Path = DEFAULT_ROOT) -> pd.DataFrame:
    """All rows of ``table`` as a DataFrame, columns in schema order.

    Returns an empty DataFrame with the schema's columns and dtypes when nothing
    has been written yet. Raises ValueError naming the file if a part is corrupt.
    """
    schema = _schema(table)
    parts = [_read_part(path, schema) for path in part_files(table, root)]
    arrow = pa.concat_tables(parts) if parts else schema.empty_table()
    return arrow.to_pandas(types_mapper=_PANDAS_TYPES.get)


def dataset(table: str, root: str | Path = DEFAULT_ROOT) -> ds.Dataset:
    """A pyarrow dataset over the table's current part files (usable from duckdb too).

    The file list is taken now; parts appended later need a new call.
    """
    schema = _schema(table)
    files = [str(path) for path in part_files(table, root)]
    return ds.dataset(files, schema=schema, format="parquet")


def summary(root: str | Path = DEFAULT_ROOT) -> dict[str, int]:
    """Row count per table (0 for tables not written yet), read from Parquet footers only."""
    counts = {}
    for table in TABLES:
        total = 0
        for path in part_files(table, root):
            try:
                total += pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowException, OSError) as err:
                raise _corrupt(path, str(err)) from err
        counts[table] = total
    return counts
