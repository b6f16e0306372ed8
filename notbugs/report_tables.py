"""Reading the result tables for the report: one profile's rows, the latest of each (results are corrected by
appending), and only those that describe what the data folder holds now (its models' weights and its sets, which
DVC can put back from an earlier run without running a stage); our number for each of the paper's rows; Figure 3's
points; the construction statistics and the training curves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from notbugs import results
from notbugs.report_paper import CONSTRUCTED, ROBUST_EPS, PaperRow
from notbugs.sets import TRAINEE
from notbugs.storage import ArtefactError, read_json


def load_tables(root, profile: str | None) -> tuple[dict[str, pd.DataFrame], str | None, list[str]]:
    """All tables filtered to one profile; without one, the profile written to most recently."""
    tables = {name: results.load(name, root) for name in results.TABLES}
    profiles = sorted({p for df in tables.values() for p in df["profile"].dropna().unique()})
    if profile is None:
        profile = _latest_profile(tables)
    filtered = {name: df[df["profile"] == profile].reset_index(drop=True) for name, df in tables.items()}
    # D's row (where the arrays came from) is the fetch's, under the profile that fetched: every profile reads it
    d = tables["datasets"]
    filtered["datasets"] = pd.concat([filtered["datasets"], d[(d["name"] == "d") & (d["profile"] != profile)]],
                                     ignore_index=True)
    return filtered, profile, profiles


def _latest_profile(tables: dict[str, pd.DataFrame]) -> str | None:
    stamps = []
    for name, column in (("runs", "ended_at"), ("evaluations", "evaluated_at"), ("models", "created_at"),
                         ("datasets", "created_at"), ("transfer", "created_at")):
        df = tables[name]
        if not df.empty:
            row = df.loc[df[column].idxmax()]
            stamps.append((row[column], row["profile"]))
    return max(stamps)[1] if stamps else None


def latest_rows(df: pd.DataFrame, keys: list[str], time_column: str) -> pd.DataFrame:
    """One row per key: the one with the latest timestamp (results are corrected by appending)."""
    if df.empty:
        return df
    return df.sort_values(time_column, kind="stable").drop_duplicates(keys, keep="last")


@dataclass(frozen=True)
class OnDisk:
    sha256: str  # the checkpoint's
    run_id: str  # the run that last saved it (a rerun that restores a finished checkpoint saves it again)


def read_on_disk(data_dir: Path) -> tuple[dict[str, OnDisk], dict[str, str]]:
    """What the data folder holds now: its models (by id, from data/models/**/meta.json) and {set name: run id}
    from the constructed sets' manifests. DVC can put back an earlier run's outputs (`dvc checkout`, its run
    cache) without running the stage, so the tables' latest rows need not describe them."""
    models, sets = {}, {}
    for meta_path in sorted((data_dir / "models").rglob("meta.json")):
        try:
            meta = read_json(meta_path)
            models[str(meta["model_id"])] = OnDisk(str(meta["checkpoint_sha256"]), str(meta["run_id"]))
        except (OSError, ValueError, KeyError, TypeError, ArtefactError):
            continue  # unreadable: the tables' latest rows stand
    for name in CONSTRUCTED:
        try:
            sets[name] = str(read_json(data_dir / "datasets" / name / "manifest.json")["run_id"])
        except (OSError, ValueError, KeyError, TypeError, ArtefactError):
            continue
    return models, sets


def _spans(shas: list, current) -> list[tuple[int, int | None]]:
    """Index ranges [start, end) of the runs of consecutive rows (in time order) whose checkpoint hash is
    `current`; end None for the span still open. A retrained model changes its checkpoint hash; a rerun that
    restores a finished checkpoint does not; weights put back from an earlier run make their span current again."""
    spans, start = [], None
    for i, sha in enumerate(shas):
        if sha == current and start is None:
            start = i
        elif sha != current and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


def weight_periods(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> dict[str, list[tuple]]:
    """Per model id, the periods (start, end or None) during which the weights it has now were its latest
    recorded ones: those on disk where known, else those of its latest row (`_spans`)."""
    periods = {}
    for model_id, rows in models.sort_values("created_at", kind="stable").groupby("model_id", sort=False):
        shas, times = list(rows["checkpoint_sha256"]), list(rows["created_at"])
        current = on_disk[model_id].sha256 if model_id in on_disk else shas[-1]
        periods[model_id] = [(times[a], None if b is None else times[b]) for a, b in _spans(shas, current)]
    return periods


def trained_run(models: pd.DataFrame, model_id: str, on_disk: dict[str, OnDisk]) -> str | None:
    """The run that finished training the model's current weights (those on disk where known, else its latest
    row's): the first `models` row of the last span of rows with their checkpoint hash. Not meta.json's run,
    which names the last run that saved them: a rerun that restores a finished checkpoint (`--redo`,
    `dvc repro -f`) trains nothing. Weights no row describes: meta.json's run."""
    rows = models[models["model_id"] == model_id].sort_values("created_at", kind="stable")
    disk = on_disk.get(model_id)
    shas, ids = list(rows["checkpoint_sha256"]), [str(r) for r in rows["run_id"]]
    spans = _spans(shas, disk.sha256 if disk else (shas[-1] if shas else None))
    if spans:  # the last span's first row: weights made again since (a deterministic retrain) name their run
        return ids[spans[-1][0]]
    return disk.run_id if disk else (ids[-1] if ids else None)


def _describes(periods: dict[str, list[tuple]], model_id: str, when) -> bool:
    """Whether a row made at `when` describes the model's current weights (a model no row lists: yes)."""
    if model_id not in periods:
        return True
    return any(start <= when and (end is None or when < end) for start, end in periods[model_id])


# An evaluation's attack setting (setting_of): rows of a model that share it score it alike, and the latest
# supersedes the others. An attack's row written before 2026-12-08 holds no step size or use_best (null): its
# setting is its own, not taken for a later row's. A clean row has one setting, whenever written.
CLEAN = (0, 0, 0.0, 0.0, 0)


def setting_of(e: pd.Series) -> tuple:
    """The attack setting of one evaluation row, as a hashable and sortable tuple: (steps, restarts, eps, step
    size, use_best), with -1 for a step size or use_best not recorded; CLEAN for a clean row."""
    if e["attack"] == "none":
        return CLEAN
    step = -1.0 if pd.isna(e["step_size"]) else round(float(e["step_size"]), 6)
    best = -1 if pd.isna(e["use_best"]) else int(bool(e["use_best"]))
    return int(e["steps"]), int(e["restarts"]), round(float(e["eps"]), 6), step, best


def latest_evaluations(evaluations: pd.DataFrame, periods: dict[str, list[tuple]]) -> pd.DataFrame:
    """The latest row of every attack setting of every model, leaving out those made on other weights of the
    model than its current ones (before it was retrained, or those an earlier run's put back replaced)."""
    current = np.array([_describes(periods, m, t)
                        for m, t in zip(evaluations["model_id"], evaluations["evaluated_at"], strict=True)], dtype=bool)
    ev = evaluations.loc[current]
    ev = ev.assign(setting=[setting_of(e) for _, e in ev.iterrows()])
    keys = ["model_id", "test_set", "attack", "setting"]
    return latest_rows(ev, keys, "evaluated_at").drop(columns="setting").reset_index(drop=True)


def current_models(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> pd.DataFrame:
    """The models the report describes: those in the data folder, where it holds any of this profile's (after
    `dvc checkout` of an earlier commit they may be another architecture's than the latest rows'), else all."""
    here = models["model_id"].isin(on_disk)
    return models[here] if here.any() else models


def unrecorded_models(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> list[str]:
    """This profile's models whose weights in the data folder no `models` row describes: they have no numbers
    until `notbugs reevaluate` records and scores them."""
    listed = set(zip(models["model_id"], models["checkpoint_sha256"], strict=True))
    ids = set(models["model_id"])
    return sorted(m for m, d in on_disk.items() if m in ids and (m, d.sha256) not in listed)


def main_arch(models: pd.DataFrame) -> str | None:
    """The architecture of the main experiment (the source models), as opposed to transfer targets: that of
    the latest such model, since the tables keep the models of a profile's earlier `arch` too."""
    if models.empty:
        return None
    for mask in (models["training"] == "adversarial", models["train_set"].isin(CONSTRUCTED), models["arch"].notna()):
        if mask.any():
            return str(models[mask].sort_values("created_at", kind="stable")["arch"].iloc[-1])
    return None


def _is_transfer(models: pd.DataFrame) -> pd.Series:
    """Figure 3's extra models (ids `<profile>/transfer/...`), kept out of Figure 2 and Table 1."""
    return models["model_id"].str.contains("/transfer/", regex=False)


# What a trainee's id adds to its first model's: `<first's id>/trainee-<k>` (units.ModelSpec.model_id)
TRAINEE_MARK = f"/{TRAINEE}"


def _is_trainee(models: pd.DataFrame) -> pd.Series:
    """A set's models beyond its first (the profile's `trainees`): counted in its mean and spread, never shown
    as the set's model."""
    return models["model_id"].str.contains(TRAINEE_MARK, regex=False)


def _pick_model(models: pd.DataFrame, training: str, train_set: str, arch: str | None) -> pd.Series | None:
    """The latest such model of the main architecture: never one of another architecture, which would
    pair, say, a ResNet-9 source model with a ResNet-18 trained on its sets."""
    main = models[~_is_transfer(models) & ~_is_trainee(models)]
    found = main[(main["training"] == training) & (main["train_set"] == train_set)]
    if arch is not None:
        found = found[found["arch"] == arch]
    if found.empty:
        return None
    return found.sort_values("created_at", kind="stable").iloc[-1]


def _evaluation(evals: pd.DataFrame, model_id: str, attack: str, eps: float | None = None) -> pd.Series | None:
    """The strongest attack setting evaluated (most steps x restarts; a quick weaker re-check does not
    replace it), the latest among equals."""
    found = evals[(evals["model_id"] == model_id) & (evals["attack"] == attack)]
    if eps is not None:
        found = found[np.isclose(found["eps"].astype(float), eps)]
    if found.empty:
        return None
    found = found.assign(strength=found["steps"].astype(int) * found["restarts"].astype(int))
    return found.sort_values(["strength", "evaluated_at"], kind="stable").iloc[-1]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n - 1), in percent, over the models trained on one build of a set: the
    one shown and its other trainees (the profile's `trainees`)."""
    n: int
    clean_mean: float
    clean_sd: float | None  # None for n = 1 (every other trainee left out)
    robust_mean: float | None  # None where the first model shown has no robust score
    robust_sd: float | None
    left_out: int = 0  # trainees of that build and recipe not scored as the first is shown (`notbugs reevaluate`)


@dataclass(frozen=True)
class Measured:
    ref: PaperRow
    model_id: str | None
    clean: float | None  # percent
    robust: float | None
    robust_steps: int | None
    clean_n: int | None = None  # test images behind each accuracy
    robust_n: int | None = None
    runs: tuple[str, ...] = ()  # the run that trained the weights, then those that scored them (run ids)
    spread: Spread | None = None  # over this model and its set's other trainees, where there are any


def measure(ref: PaperRow, models: pd.DataFrame, evals: pd.DataFrame, arch: str | None,
            on_disk: dict[str, OnDisk] | None = None) -> Measured:
    """The row's model and its scores, and the runs behind them: the one that trained the weights (those on disk
    where the data folder holds them, `on_disk`: `dvc checkout` can put back another run's; `trained_run`), then
    those that scored them."""
    model = _pick_model(models, ref.training, ref.train_set, arch)
    if model is None:
        return Measured(ref, None, None, None, None)
    model_id = str(model["model_id"])
    clean = _evaluation(evals, model_id, "none")
    robust = _evaluation(evals, model_id, "pgd_l2", ROBUST_EPS)
    trained = trained_run(models, model_id, on_disk or {})
    scored = [str(e["run_id"]) for e in (clean, robust) if e is not None]
    return Measured(ref, model_id,
                    None if clean is None else 100.0 * float(clean["accuracy"]),
                    None if robust is None else 100.0 * float(robust["accuracy"]),
                    None if robust is None else int(robust["steps"]),
                    None if clean is None else int(clean["n"]),
                    None if robust is None else int(robust["n"]),
                    tuple(dict.fromkeys([trained, *scored])),
                    trainee_spread(model, models, evals))


def _text(value) -> str | None:
    return None if pd.isna(value) else str(value)


def _recipe_but_seed(recipe) -> dict | None:
    """A `models.recipe` (JSON) without its seed; None for one that is not JSON (rows before 2026-12-07)."""
    try:
        out = json.loads(recipe)
    except (TypeError, ValueError):
        return None
    return {k: v for k, v in out.items() if k != "seed"} if isinstance(out, dict) else None


def _score_like(evals: pd.DataFrame, model_id: str, like: pd.Series) -> pd.Series | None:
    """The model's latest score under the attack setting of `like` (a score of another model): the same attack,
    test set, eps, steps, restarts, step size, use_best (setting_of) and number of test images."""
    found = evals[(evals["model_id"] == model_id) & (evals["attack"] == like["attack"])
                  & (evals["test_set"] == like["test_set"]) & (evals["n"] == like["n"])]
    found = found[[setting_of(e) == setting_of(like) for _, e in found.iterrows()]]
    return None if found.empty else found.sort_values("evaluated_at", kind="stable").iloc[-1]


def trainee_spread(first: pd.Series, models: pd.DataFrame, evals: pd.DataFrame) -> Spread | None:
    """The spread of the scores of `first` (the latest row of a set's model shown) and of its set's other trainees
    that share its recipe but for the seed and its build of the set (their latest rows'), each scored as the first
    is shown (the same attack settings; those that are not are counted as left out); None where the first has no
    score or it has no such trainee."""
    clean0 = _evaluation(evals, str(first["model_id"]), "none")
    if clean0 is None:
        return None
    robust0 = _evaluation(evals, str(first["model_id"]), "pgd_l2", ROBUST_EPS)
    rows = models[models["model_id"].str.startswith(f"{first['model_id']}{TRAINEE_MARK}")]
    latest = rows.sort_values("created_at", kind="stable").drop_duplicates("model_id", keep="last")
    recipe, build = _recipe_but_seed(first["recipe"]), _text(first["train_set_run_id"])
    clean, left_out = [100.0 * float(clean0["accuracy"])], 0
    robust = [] if robust0 is None else [100.0 * float(robust0["accuracy"])]
    for row in latest.sort_values("model_id").itertuples():
        if _text(row.train_set_run_id) != build or _recipe_but_seed(row.recipe) != recipe:
            continue  # trained on another build of the set, or by another recipe (a rerun stopped before it)
        c = _score_like(evals, row.model_id, clean0)
        r = None if robust0 is None else _score_like(evals, row.model_id, robust0)
        if c is None or (robust0 is not None and r is None):
            left_out += 1
            continue
        clean.append(100.0 * float(c["accuracy"]))
        if r is not None:
            robust.append(100.0 * float(r["accuracy"]))
    if len(clean) < 2 and not left_out:
        return None

    def sd(values: list[float]) -> float | None:
        return float(np.std(values, ddof=1)) if len(values) > 1 else None

    return Spread(len(clean), float(np.mean(clean)), sd(clean), float(np.mean(robust)) if robust else None,
                  sd(robust), left_out)


@dataclass(frozen=True)
class TransferPoint:
    arch: str
    success: float | None  # percent of transferred targeted examples that hit their target
    d_det_acc: float | None  # percent clean test accuracy after training on D_det
    source_model_id: str | None
    d_det_model_id: str | None
    d_det_n: int | None = None  # test images behind d_det_acc
    stale: str | None = None  # why the transfer rate is left out: a model it was measured on was retrained since


def transfer_points(transfer: pd.DataFrame, models: pd.DataFrame, evals: pd.DataFrame,
                    periods: dict[str, list[tuple]]) -> list[TransferPoint]:
    """Figure 3's points: the architectures of the latest transfer measurement (one run writes them all),
    not every one the profile ever measured; before any, those of the D_det models. A rate measured on a
    source or target model that has been retrained since is left out: it no longer describes them."""
    d_det = models[(models["train_set"] == "d_det") & (models["training"] == "standard") & ~_is_trainee(models)]
    if transfer.empty:
        latest, archs, last_run = transfer, sorted(set(d_det["arch"])), None
    else:
        last_run = transfer.sort_values("created_at", kind="stable")["run_id"].iloc[-1]
        latest = transfer[transfer["run_id"] == last_run]
        archs = sorted(set(latest["target_arch"]))
    points = []
    for arch in archs:
        row = latest[latest["target_arch"] == arch]
        candidates = d_det[d_det["arch"] == arch]
        # Figure 3's own D_det model, trained by the run that measured the transfer; else the main one it reuses
        own = candidates[_is_transfer(candidates) & (candidates["run_id"] == last_run)]
        candidates = own if not own.empty else candidates[~_is_transfer(candidates)]
        model = None if candidates.empty else candidates.sort_values("created_at", kind="stable").iloc[-1]
        clean = None if model is None else _evaluation(evals, model["model_id"], "none")
        success, source, stale = None, None, None
        if not row.empty:
            row = row.iloc[0]
            source = str(row["source_model_id"])
            changed = [m for m in (row["source_model_id"], row["target_model_id"])
                       if not _describes(periods, m, row["created_at"])]
            if changed:
                stale = f"{', '.join(changed)} has other weights now: transfer not measured on them yet"
            else:
                success = 100.0 * float(row["success_rate"])
        points.append(TransferPoint(
            arch, success,
            None if clean is None else 100.0 * float(clean["accuracy"]),
            source,
            None if model is None else str(model["model_id"]),
            None if clean is None else int(clean["n"]),
            stale,
        ))
    return points


def construction_stats(datasets: pd.DataFrame, on_disk: dict[str, str]) -> dict[str, dict]:
    """Recorded statistics and recipe per constructed set: those of the run that built the set on disk (`on_disk`:
    set name -> run id) where its rows are there, else the latest; unreadable ones become an empty dict."""
    built = datasets[datasets["name"].isin(CONSTRUCTED)]
    mine = np.array([on_disk.get(name) == run for name, run in zip(built["name"], built["run_id"], strict=True)],
                    dtype=bool)
    # a set whose building run's rows are there: those rows only
    built = built[mine | ~built["name"].isin(set(built["name"][mine]))]
    latest = latest_rows(built, ["name"], "created_at")
    stats = {}
    for _, row in latest.iterrows():
        stats[str(row["name"])] = {"stats": _json_dict(row["stats"]), "recipe": _json_dict(row["recipe"]),
                                   "n_images": int(row["n_images"]),
                                   "source_model_id": row["source_model_id"]}
    return stats


def _json_dict(text) -> dict:
    try:
        parsed = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def built_with(recipe: dict) -> str:
    """A constructed set's parameters as its recipe recorded them (its kind's, with its own overrides), in a few
    words; "—" for a recipe that holds none (unreadable, or written by other code)."""
    m, p = recipe.get("match"), recipe.get("pgd")
    # the paper's choices (the best iterate, matching through the fake ReLU) go unsaid; the others are named
    flags = {"use_best": "last iterate", "fake_relu": "true ReLU"}
    try:
        if isinstance(m, dict):
            rule = f"{m['step_size']:g}" + ("" if m["final_step_size"] == m["step_size"]
                                             else f" → {m['final_step_size']:g}")
            text = f"matching, {m['steps']:d} steps of {rule}"
        elif isinstance(p, dict):
            text = f"targeted PGD, eps {p['eps']:g}, {p['steps']:d} steps of {p['step_size']:g}"
        else:
            return "—"
    except (KeyError, TypeError, ValueError):
        return "—"
    section = m if isinstance(m, dict) else p
    return ", ".join([text, *(words for key, words in flags.items() if section.get(key) is False)])


def epoch_curves(epochs: pd.DataFrame, models: pd.DataFrame,
                 on_disk: dict[str, OnDisk] | None = None) -> dict[str, pd.DataFrame]:
    """Per model, one row per epoch: those of the run that trained the weights in the data folder (else those of
    its latest row; `trained_run`, as Figure 2 names it), which writes every epoch of the model, resumed ones
    included (`units.train_unit`). So a model trained again with fewer epochs does not keep the earlier run's
    later ones."""
    curves = {}
    for model_id, rows in epochs.groupby("model_id", sort=True):
        own = rows[rows["run_id"] == trained_run(models, str(model_id), on_disk or {})]
        rows = own if not own.empty else rows.drop_duplicates("epoch", keep="last")  # no models row: the last written
        curves[str(model_id)] = rows.sort_values("epoch")
    return curves
