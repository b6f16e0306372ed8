"""Tests for notbugs.results: append-only Parquet result tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from notbugs import results

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sample_row(table: str, i: int = 0) -> dict:
    """One valid row per table; ``i`` varies the ids and numbers."""
    run_id = f"run{i:04d}"
    if table == "runs":
        return {
            "run_id": run_id,
            "stage": "train",
            "profile": "cpu",
            "params_hash": "ph" + str(i),
            "code_version": "abc123",
            "input_hashes": results.to_json({"data/d_r.npz": "0" * 64}),
            "device": "cpu",
            "started_at": T0,
            "ended_at": T0 + timedelta(seconds=5),
            "wall_s": 5.0,
            "status": "ok",
            "params": None if i % 2 else results.to_json({"profile": {"arch": "resnet18"}, "data": {}}),
            "versions": None if i % 2 else results.to_json({"torch": "2.14.1"}),
        }
    if table == "models":
        return {
            "model_id": f"cpu/standard-d_r-resnet18-{i}",
            "profile": "cpu",
            "arch": "resnet18",
            "width": 1.0,
            "train_set": "d_r",
            "training": "standard",
            "recipe": results.to_json({"epochs": 2, "lr": 0.1}),
            "checkpoint_path": f"data/models/{i}.pt",
            "checkpoint_sha256": "f" * 64,
            "run_id": run_id,
            "created_at": T0,
            "train_set_run_id": None if i % 2 else "set" + run_id,
        }
    if table == "datasets":
        return {
            "dataset_id": f"cpu/d_r-{i}",
            "profile": "cpu",
            "name": "d_r",
            "recipe": "{}",
            # Alternate between a source model and none (the nullable columns).
            "source_model_id": None if i % 2 else "cpu/adversarial-d-resnet18",
            "source_model_sha256": None if i % 2 else "e" * 64,
            "n_images": 50000 + i,
            "stats": results.to_json({"mean": [0.5, 0.5, 0.5]}),
            "path": f"data/datasets/d_r-{i}.npz",
            "run_id": run_id,
            "created_at": T0,
        }
    if table == "evaluations":
        return {
            "model_id": f"cpu/standard-d-resnet18-{i}",
            "profile": "cpu",
            "test_set": "test",
            "attack": "pgd_l2",
            "eps": 0.25,
            "steps": np.int64(7),  # numpy scalars, as science code produces them
            "restarts": 1,
            "accuracy": np.float64(0.5),
            "correct": 5000,
            "n": 10000,
            "per_class_accuracy": np.linspace(0.0, 0.9, 10),
            "wall_s": 3.5,
            "run_id": run_id,
            # A non-UTC aware datetime is fine; it is stored as UTC.
            "evaluated_at": T0.astimezone(timezone(timedelta(hours=2))),
            "checkpoint_sha256": None if i % 2 else "f" * 64,
            "step_size": None if i % 2 else 0.25 * 2.5 / 7,
            "use_best": None if i % 2 else np.bool_(True),
        }
    if table == "transfer":
        return {
            "source_model_id": "cpu/standard-d-resnet18",
            "target_model_id": f"cpu/standard-d-vgg11-{i}",
            "target_arch": "vgg11",
            "profile": "cpu",
            "attack": "pgd_l2",
            "eps": 0.5,
            "steps": 20,
            "success_rate": 0.4,
            "n": 1000,
            "run_id": run_id,
            "created_at": T0,
            "source_checkpoint_sha256": None if i % 2 else "d" * 64,
            "target_checkpoint_sha256": None if i % 2 else "c" * 64,
            "step_size": None if i % 2 else 0.1,
            "use_best": None if i % 2 else False,
        }
    if table == "epochs":
        return {
            "model_id": "cpu/standard-d-resnet18",
            "profile": "cpu",
            "epoch": i,
            "train_loss": 1.5,
            "train_acc": 0.4,
            "lr": 0.1,
            "wall_s": 2.0,
            "run_id": run_id,
        }
    raise AssertionError(table)


def expected_dtypes(table: str) -> pd.Series:
    """pyarrow's pandas dtypes, but pandas' nullable `boolean` for a bool column (one dtype with or without
    nulls, docs/results.md)."""
    dtypes = results.SCHEMAS[table].empty_table().to_pandas().dtypes
    return dtypes.where(dtypes != np.dtype(bool), pd.BooleanDtype())


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def test_every_table_sample_covers_its_schema():
    assert results.TABLES == ("runs", "models", "datasets", "evaluations", "transfer", "epochs")
    for table in results.TABLES:
        assert list(sample_row(table)) == results.SCHEMAS[table].names


def documented_schemas() -> dict[str, list[tuple[str, pa.DataType, bool]]]:
    """docs/results.md's tables, as (column, Arrow type, nullable) per table, in the documented order.

    Each table is a `### `name` — ...` section whose rows read `| `column` | type | meaning |`; a type
    is string, int64, float64, bool, timestamp (the section's `timestamp[us, tz=UTC]`) or list<float64>, with
    ", **nullable**" after it for the columns that may be null."""
    text = (REPO_ROOT / "docs" / "results.md").read_text()
    assert "all timestamps are `timestamp[us, tz=UTC]`" in text  # what the documented "timestamp" means
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "timestamp": pa.timestamp("us", tz="UTC"), "list<float64>": pa.list_(pa.float64())}
    tables: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"### `(\w+)` — ", line)
        if heading:
            current = tables.setdefault(heading.group(1), [])
            continue
        if line.startswith("## "):
            current = None
        row = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if current is not None and row:
            name, kind = row.group(1), row.group(2).strip()
            nullable = kind.endswith(", **nullable**")
            kind = kind.removesuffix(", **nullable**")
            assert kind in types, f"docs/results.md: column {name} has an unknown type {kind!r}"
            current.append((name, types[kind], nullable))
    return tables


def test_schemas_are_the_documented_ones():
    """The code's schemas against an independent statement of them, docs/results.md, column by column: name,
    order, Arrow type and nullability. A type changed in either place (eps written as float32, say, which
    loses precision and changes what readers get) fails here; so do docs that drift from the code."""
    documented = documented_schemas()
    assert list(documented) == list(results.TABLES)
    for table, columns in documented.items():
        schema = results.SCHEMAS[table]
        assert [name for name, _, _ in columns] == schema.names, table
        for (name, kind, nullable), field in zip(columns, schema, strict=True):
            assert field.type.equals(kind), f"{table}.{name}: the code says {field.type}, the docs {kind}"
            assert field.nullable == nullable, f"{table}.{name}: nullable {field.nullable} in the code, not in the docs"
    # the documented nullable columns: the two of the original data's missing source model, and the columns
    # added after the first rows were written (null in those)
    assert [(t, c[0]) for t, cols in documented.items() for c in cols if c[2]] == [
        ("runs", "params"), ("runs", "versions"), ("models", "train_set_run_id"),
        ("datasets", "source_model_id"), ("datasets", "source_model_sha256"), ("evaluations", "checkpoint_sha256"),
        ("evaluations", "step_size"), ("evaluations", "use_best"), ("transfer", "source_checkpoint_sha256"),
        ("transfer", "target_checkpoint_sha256"), ("transfer", "step_size"), ("transfer", "use_best")]


@pytest.mark.parametrize("table", results.TABLES)
def test_append_then_load_round_trips(tmp_path, table):
    first = [sample_row(table, 0), sample_row(table, 1)]
    second = [sample_row(table, 2)]
    p1 = results.append(table, first, root=tmp_path)
    p2 = results.append(table, second, root=tmp_path)

    assert p1 != p2
    for path in (p1, p2):
        assert path.parent == tmp_path / table
        assert path.name.startswith("part-") and path.name.endswith(".parquet")

    df = results.load(table, root=tmp_path)
    assert list(df.columns) == results.SCHEMAS[table].names
    pd.testing.assert_series_equal(df.dtypes, expected_dtypes(table))
    assert len(df) == 3

    # Row order across part files is not guaranteed (names only resolve to the
    # second), so match rows up by run_id, which sample_row makes unique.
    df = df.sort_values("run_id", ignore_index=True)
    for got, want in zip(df.to_dict("records"), first + second):
        for column, value in want.items():
            if isinstance(value, datetime):
                assert got[column] == value  # same instant, whatever the zone
                assert str(got[column].tzinfo) == "UTC"
            elif isinstance(value, np.ndarray):
                np.testing.assert_allclose(got[column], value)
            elif value is None:
                assert got[column] is None or pd.isna(got[column])
            else:
                assert got[column] == value, column

    # The Parquet schema as stored is exactly the declared one.
    assert (
        results.dataset(table, root=tmp_path)
        .to_table()
        .schema.equals(results.SCHEMAS[table], check_metadata=False)
    )


@pytest.mark.parametrize("table", results.TABLES)
def test_load_empty_table_has_schema_columns_and_dtypes(tmp_path, table):
    df = results.load(table, root=tmp_path)
    assert df.empty
    assert list(df.columns) == results.SCHEMAS[table].names
    pd.testing.assert_series_equal(df.dtypes, expected_dtypes(table))
    assert results.dataset(table, root=tmp_path).to_table().num_rows == 0


def test_load_gives_rows_in_the_order_they_were_appended(tmp_path):
    """Parts written by one process in the same second come back in the order written, not by their random
    suffix: readers take `load(...).iloc[n:]` as the rows appended after n."""
    for i in range(30):
        results.append("epochs", [sample_row("epochs", i)], tmp_path)
    assert list(results.load("epochs", tmp_path)["epoch"]) == [sample_row("epochs", i)["epoch"] for i in range(30)]


def test_empty_rows_write_nothing(tmp_path):
    assert results.append("runs", [], root=tmp_path) is None
    assert not (tmp_path / "runs").exists()


def test_summary_counts_rows(tmp_path):
    results.append("epochs", [sample_row("epochs", i) for i in range(3)], root=tmp_path)
    results.append("epochs", [sample_row("epochs", 3)], root=tmp_path)
    results.append("runs", [sample_row("runs")], root=tmp_path)
    counts = results.summary(tmp_path)
    assert counts == {"runs": 1, "models": 0, "datasets": 0, "evaluations": 0, "transfer": 0, "epochs": 4}


def test_helpers():
    assert results.now_utc().utcoffset() == timedelta(0)
    a, b = results.new_run_id(), results.new_run_id()
    assert a != b and len(a) == 32
    assert results.to_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


# ---------------------------------------------------------------------------
# Validation: bad rows raise ValueError and write nothing
# ---------------------------------------------------------------------------


def _with(table: str, **changes) -> dict:
    row = sample_row(table)
    row.update(changes)
    return row


def _without(table: str, column: str) -> dict:
    row = sample_row(table)
    del row[column]
    return row


BAD_ROWS = {
    "missing column": ("runs", _without("runs", "device"), "device"),
    "extra column": ("runs", _with("runs", colour="red"), "colour"),
    "string given an int": ("models", _with("models", arch=18), "arch"),
    "int given a string": ("evaluations", _with("evaluations", steps="7"), "steps"),
    "int given a fractional float": ("evaluations", _with("evaluations", correct=1.5), "correct"),
    "float given a bool": ("epochs", _with("epochs", lr=True), "lr"),
    # numpy scalars that are not Python float / bool subclasses, which pyarrow truncates or converts silently
    "int given a numpy float32": ("evaluations", _with("evaluations", correct=np.float32(1.5)), "correct"),
    "int given a numpy bool": ("evaluations", _with("evaluations", n=np.bool_(True)), "n"),
    "float given a numpy bool": ("epochs", _with("epochs", lr=np.bool_(True)), "lr"),
    "list given a scalar": (
        "evaluations",
        _with("evaluations", per_class_accuracy=0.5),
        "per_class_accuracy",
    ),
    "json column given a dict": ("models", _with("models", recipe={"epochs": 2}), "recipe"),
    "required column given None": ("transfer", _with("transfer", n=None), "n"),
    "naive datetime": ("runs", _with("runs", started_at=datetime(2024, 1, 1)), "started_at"),
    "datetime given a string": ("models", _with("models", created_at="2024-01-01"), "created_at"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raises_and_writes_nothing(tmp_path, case):
    table, bad, column = BAD_ROWS[case]
    good = sample_row(table, 1)
    with pytest.raises(ValueError) as info:
        # The bad row comes second: validation must cover every row before writing.
        results.append(table, [good, bad], root=tmp_path)
    message = str(info.value)
    assert column in message and table in message
    assert list(tmp_path.iterdir()) == []  # not even the table folder
    assert results.load(table, root=tmp_path).empty


def test_unknown_table_lists_known_tables(tmp_path):
    with pytest.raises(ValueError, match="evaluations") as info:
        results.append("evals", [sample_row("evaluations")], root=tmp_path)
    assert "evals" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown result table"):
        results.load("evals", root=tmp_path)


def test_nullable_columns_accept_none(tmp_path):
    results.append("datasets", [sample_row("datasets", 1)], root=tmp_path)
    df = results.load("datasets", root=tmp_path)
    assert pd.isna(df.loc[0, "source_model_id"])


# ---------------------------------------------------------------------------
# Other readers
# ---------------------------------------------------------------------------


def _write_some(tmp_path) -> None:
    results.append("evaluations", [sample_row("evaluations", i) for i in range(3)], root=tmp_path)
    results.append("evaluations", [sample_row("evaluations", 3)], root=tmp_path)
    # A leftover temp file must not confuse any reader.
    (tmp_path / "evaluations" / ".tmp-part-x.writing").write_bytes(b"PAR1 half a file")


def test_readable_with_pandas_and_pyarrow(tmp_path):
    _write_some(tmp_path)
    folder = tmp_path / "evaluations"

    df = pd.read_parquet(folder)
    assert len(df) == 4
    assert sorted(df["run_id"]) == ["run0000", "run0001", "run0002", "run0003"]

    table = pads.dataset(folder).to_table()
    assert table.num_rows == 4
    assert table.schema.field("evaluated_at").type == pa.timestamp("us", tz="UTC")

    assert results.dataset("evaluations", root=tmp_path).count_rows() == 4


def test_readable_with_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    _write_some(tmp_path)
    glob = (tmp_path / "evaluations" / "*.parquet").as_posix()
    n, mean_acc = duckdb.sql(f"SELECT count(*), avg(accuracy) FROM '{glob}'").fetchall()[0]
    assert n == 4 and mean_acc == pytest.approx(0.5)

    # duckdb can also scan the pyarrow dataset object directly.
    evaluations = results.dataset("evaluations", root=tmp_path)  # noqa: F841 (used by duckdb by name)
    assert duckdb.sql("SELECT count(*) FROM evaluations").fetchall()[0][0] == 4


# ---------------------------------------------------------------------------
# Crash leftovers and corruption
# ---------------------------------------------------------------------------


def test_load_ignores_temp_file_of_killed_writer(tmp_path):
    results.append("runs", [sample_row("runs")], root=tmp_path)
    leftover = tmp_path / "runs" / ".tmp-part-20240101T000000-99-deadbeef.writing"
    leftover.write_bytes(os.urandom(300))
    df = results.load("runs", root=tmp_path)
    assert len(df) == 1
    assert results.summary(tmp_path)["runs"] == 1
    assert leftover.exists()  # readers never delete anything


def test_corrupt_part_names_the_file(tmp_path):
    results.append("runs", [sample_row("runs")], root=tmp_path)
    bad = tmp_path / "runs" / "part-20240101T000000-99-deadbeef.parquet"
    bad.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(ValueError, match="corrupt result part") as info:
        results.load("runs", root=tmp_path)
    assert str(bad) in str(info.value)
    assert "re-run" in str(info.value)
    with pytest.raises(ValueError, match="corrupt result part"):
        results.summary(tmp_path)


def test_corrupt_part_names_the_stage_that_wrote_it(tmp_path):
    run = dict(sample_row("runs", 7), stage="train@d_r")
    results.append("runs", [run], root=tmp_path)
    part = results.append("evaluations", [sample_row("evaluations", 7)], root=tmp_path)
    assert part.name.endswith(f"-run-{run['run_id']}.parquet")
    part.write_bytes(b"half a file")  # e.g. a disk that failed under it
    with pytest.raises(ValueError, match="corrupt result part") as info:
        results.load("evaluations", root=tmp_path)
    assert str(part) in str(info.value)
    assert f"train@d_r (run {run['run_id']})" in str(info.value)


def test_corrupt_part_of_a_run_without_a_runs_row_says_so(tmp_path):
    # A run killed before its runs row was written, or a corrupt runs part itself.
    part = results.append("runs", [sample_row("runs", 3)], root=tmp_path)
    part.write_bytes(b"x" * 50)
    with pytest.raises(ValueError, match="the runs table has no readable row of it"):
        results.load("runs", root=tmp_path)


def test_parts_of_rows_from_several_runs_carry_no_run_id(tmp_path):
    part = results.append("epochs", [sample_row("epochs", 1), sample_row("epochs", 2)], root=tmp_path)
    assert "-run-" not in part.name
    part.write_bytes(b"x" * 50)
    with pytest.raises(ValueError, match="re-run the stage that wrote it$"):
        results.load("epochs", root=tmp_path)


def test_parts_written_before_an_optional_column_existed_read_it_as_null(tmp_path):
    old_schema = pa.schema([f for f in results.SCHEMAS["evaluations"] if f.name != "checkpoint_sha256"])
    old_row = {k: v for k, v in sample_row("evaluations", 1).items() if k != "checkpoint_sha256"}
    folder = tmp_path / "evaluations"
    folder.mkdir()
    old_part = folder / "part-20240101T000000-1-00000000.parquet"
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema), old_part)
    results.append("evaluations", [dict(sample_row("evaluations", 2), checkpoint_sha256="ab" * 32)], root=tmp_path)
    df = results.load("evaluations", root=tmp_path).sort_values("run_id")
    assert list(df.columns) == results.SCHEMAS["evaluations"].names
    assert df["checkpoint_sha256"].isna().tolist() == [True, False]
    assert results.dataset("evaluations", root=tmp_path).to_table().column("checkpoint_sha256").null_count == 1


def test_rows_read_back_with_pandas_append_again_with_their_nulls(tmp_path):
    results.append("evaluations", [sample_row("evaluations", 1)], root=tmp_path)  # a null checkpoint_sha256
    rows = results.load("evaluations", root=tmp_path).to_dict("records")
    assert rows[0]["checkpoint_sha256"] is None or rows[0]["checkpoint_sha256"] != rows[0]["checkpoint_sha256"]
    results.append("evaluations", [dict(rows[0], checkpoint_sha256=float("nan"), run_id="again")], root=tmp_path)
    results.append("evaluations", [dict(rows[0], checkpoint_sha256=pd.NA, run_id="again")], root=tmp_path)
    assert results.load("evaluations", root=tmp_path)["checkpoint_sha256"].isna().all()
    with pytest.raises(ValueError, match="'model_id'"):  # a required column stays required
        results.append("evaluations", [dict(rows[0], model_id=float("nan"))], root=tmp_path)


def test_a_nullable_column_left_out_of_a_row_is_null_and_a_required_one_is_refused(tmp_path):
    row = {k: v for k, v in sample_row("runs").items() if k not in ("params", "versions")}
    results.append("runs", [row], root=tmp_path)
    assert results.load("runs", root=tmp_path)["params"].isna().all()
    del row["status"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['status'\]"):
        results.append("runs", [row], root=tmp_path)


def test_part_with_wrong_columns_names_the_file(tmp_path):
    results.append("epochs", [sample_row("epochs")], root=tmp_path)
    bad = tmp_path / "epochs" / "part-20240101T000000-99-0badc0de.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(bad)
    with pytest.raises(ValueError, match="corrupt result part") as info:
        results.load("epochs", root=tmp_path)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------
# Concurrency with real processes
# ---------------------------------------------------------------------------

WRITERS = 4
WRITES_PER_WRITER = 25
ROWS_PER_WRITE = 4

# Each writer waits for a "go" file so all four start appending together.
WRITER_SCRIPT = f"""
import os, sys, time
from notbugs import results

root, go, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.005)
for w in range({WRITES_PER_WRITER}):
    rows = [
        dict(model_id=f"w{{writer}}-{{w}}-{{k}}", profile="cpu", epoch=w, train_loss=1.0,
             train_acc=0.5, lr=0.1, wall_s=0.0, run_id=f"w{{writer}}-{{w}}")
        for k in range({ROWS_PER_WRITE})
    ]
    results.append("epochs", rows, root=root)
"""


def _check_whole_writes(df: pd.DataFrame) -> None:
    assert len(df) % ROWS_PER_WRITE == 0
    assert df["model_id"].is_unique
    # Every write that is visible is visible with all its rows.
    assert (df.groupby("run_id").size() == ROWS_PER_WRITE).all()


def test_concurrent_appends_from_processes(tmp_path):
    root = tmp_path / "results"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(root), str(go), str(n)], env=env)
        for n in range(WRITERS)
    ]
    # Give the interpreters time to import pandas/pyarrow before releasing them.
    time.sleep(1.5)
    go.touch()

    loads_during_writes = 0
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in writers):
        assert time.monotonic() < deadline, "writers did not finish in time"
        _check_whole_writes(results.load("epochs", root=root))
        loads_during_writes += 1

    assert [p.wait() for p in writers] == [0] * WRITERS
    assert loads_during_writes > 0

    df = results.load("epochs", root=root)
    _check_whole_writes(df)
    assert len(df) == WRITERS * WRITES_PER_WRITER * ROWS_PER_WRITE
    assert df["model_id"].nunique() == len(df)
    assert len(results.part_files("epochs", root=root)) == WRITERS * WRITES_PER_WRITER
    # No temp files left behind by writers that finished normally.
    assert [p for p in (root / "epochs").iterdir() if p.name.startswith(".")] == []


def test_import_pulls_in_no_orchestration_layer():
    # The GPU machines have neither Prefect nor DVC installed.
    code = "import sys, notbugs.results; print(sorted({'prefect', 'dvc'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
