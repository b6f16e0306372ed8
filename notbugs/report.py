"""The reproduction report: our numbers beside the paper's, as one self-contained page.

`build_report` reads the result tables (notbugs.results), a few sample images of the constructed
sets and CIFAR-10, and writes

- `report.html`: inline CSS, inline SVG figures, base64 PNG samples; no scripts, no external URLs,
  so the file can be mailed or archived as it is;
- `report.md`: the same tables in Markdown, figures as links to SVG / PNG files written beside it;
- `summary.json`: the headline numbers (percent), for `dvc metrics`.

The report is assembled once as a flat list of blocks (heading, paragraph, table, figure, ...) and
rendered twice, so the HTML and the Markdown can never disagree. Anything not run yet shows as a
note instead of an exception: the report is useful while the pipeline is still half done.
Figures are drawn by the small SVG functions below (no matplotlib: the library stays light).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from notbugs import results
from notbugs.sets import SETS
from notbugs.storage import ArtefactError, atomic_write_bytes, read_json

PAPER_CLAIM = (
    "Ilyas et al. (2019) argue that adversarial examples are not bugs but features: a dataset's "
    "predictive signal splits into robust features, which survive a small l2 perturbation, and "
    "non-robust ones, which are predictive yet brittle and invisible to humans. On CIFAR-10 they "
    "build new training sets from the representations of a robust and a standard model (D_R, D_NR) "
    "and from targeted adversarial examples relabelled as their target (D_rand, D_det), train "
    "ordinary classifiers on them and test on the real test set. Training on D_R gives robustness "
    "without adversarial training; training on D_NR gives good accuracy but none; and models "
    "trained only on mislabelled adversarial examples (D_rand, D_det) still generalise to the "
    "correctly labelled test set, so the perturbations carry real, transferable features."
)

ROBUST_EPS = 0.25  # the paper's Figure 2 legend: l2 PGD at eps 0.25
FLAG_PTS = 5.0  # a result further than this from the paper's number is flagged
CHANCE = 10.0  # percent: ten balanced classes
# A difference between two accuracies counts when it exceeds this many standard errors of the test-set
# sampling: against chance (10%), 3 are 0.9 points at 10,000 test images and 2.8 at 1,000; between two
# accuracies near 50% over 1,000 images each, 6.7.
CLEAR_SE = 3.0
# Figure 3's relation is judged over at least this many architectures: two points always correlate
# perfectly (the paper has five).
MIN_ARCHS = 4
SAMPLE_SIZE = 64  # pixels: 32x32 CIFAR images upscaled (nearest) so they are visible
CONSTRUCTED = tuple(SETS)  # the constructed sets (notbugs/sets.py), in the paper's order
SET_LABEL = {"d": "D", **{name: s.label for name, s in SETS.items()}}  # the original training set, and each built one
SERIES_COLOURS = ("#1f5fa8", "#9fc3e9", "#c4501b", "#f4b48f")  # clean ours/paper, robust ours/paper


@dataclass(frozen=True)
class PaperRow:
    """One reference result: which model to look up and what the paper reports for it (percent)."""

    key: str
    training: str  # standard | adversarial
    train_set: str  # "d" or a constructed set (notbugs/sets.py)
    clean: float | None
    robust: float | None
    source: str
    # The paper's point for this row is that robust accuracy is near zero, so a robust accuracy well
    # above the paper's contradicts the result rather than beating it.
    robust_near_zero: bool = False
    robust_approx: bool = False  # the paper gives the robust accuracy as "~0", not as a figure


FIGURE2 = (
    PaperRow("standard", "standard", "d", 95.3, 4.5, "paper Fig. 2 / Table 7", robust_near_zero=True),
    PaperRow("adversarial", "adversarial", "d", 90.8, 82.3, "authors' released checkpoint"),
    PaperRow("d_r", "standard", "d_r", 84.1, 48.3, "paper Fig. 2"),
    PaperRow("d_nr", "standard", "d_nr", 87.7, 0.8, "paper Fig. 2", robust_near_zero=True),
)
TABLE1 = (
    PaperRow("d", "standard", "d", 95.3, None, "paper Table 1"),
    PaperRow("d_rand", "standard", "d_rand", 63.3, 0.0, "paper Table 1", robust_near_zero=True, robust_approx=True),
    PaperRow("d_det", "standard", "d_det", 43.7, 0.0, "paper Table 1", robust_near_zero=True, robust_approx=True),
)


def _row_label(ref: PaperRow) -> str:
    """"Standard training on D_R": how the row's model was trained, and on which set."""
    return f"{ref.training.capitalize()} training on {SET_LABEL[ref.train_set]}"


def _group(ref: PaperRow) -> str:
    """The row's bar group in Figure 2: the training where the set is D ("adversarial (D)"), else the set."""
    return f"{ref.training} ({SET_LABEL['d']})" if ref.train_set == "d" else SET_LABEL[ref.train_set]


# ---------------------------------------------------------------- document blocks


@dataclass(frozen=True)
class Flag:
    """A coloured badge in HTML, bold text in Markdown. kind: bad | warn | ok | missing."""

    text: str
    kind: str


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Note:
    """Something is missing (not run yet, not built yet): shown as a visible box, never hidden."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple


@dataclass(frozen=True)
class Table:
    headers: tuple
    rows: tuple  # of tuples of str | Flag


@dataclass(frozen=True)
class Figure:
    name: str  # file stem for the Markdown side (name.svg)
    svg: str
    caption: str


@dataclass(frozen=True)
class SampleGrid:
    columns: tuple  # column headers (training-set index of the source image)
    rows: tuple  # of (set label, tuple of (uint8 HWC image or None, caption))


@dataclass(frozen=True)
class Measured:
    ref: PaperRow
    model_id: str | None
    clean: float | None  # percent
    robust: float | None
    robust_steps: int | None
    clean_n: int | None = None  # test images behind each accuracy
    robust_n: int | None = None


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and whether our numbers bear it out (holds None: cannot tell yet)."""

    key: str
    text: str
    holds: bool | None
    detail: str


# ---------------------------------------------------------------- reading the tables


def _load_tables(root, profile: str | None) -> tuple[dict[str, pd.DataFrame], str | None, list[str]]:
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


def _latest(df: pd.DataFrame, keys: list[str], time_column: str) -> pd.DataFrame:
    """One row per key: the one with the latest timestamp (results are corrected by appending)."""
    if df.empty:
        return df
    return df.sort_values(time_column, kind="stable").drop_duplicates(keys, keep="last")


@dataclass(frozen=True)
class OnDisk:
    sha256: str  # the checkpoint's
    run_id: str  # the run that trained it


def _on_disk(data_dir: Path) -> tuple[dict[str, OnDisk], dict[str, str]]:
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


def _weight_periods(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> dict[str, list[tuple]]:
    """Per model id, the periods (start, end or None) during which the weights it has now were its latest
    recorded ones: those on disk where known, else those of its latest row. A retrained model changes its
    checkpoint hash; a rerun that restores a finished checkpoint does not; weights put back from an earlier
    run make its period current again."""
    periods = {}
    for model_id, rows in models.sort_values("created_at", kind="stable").groupby("model_id", sort=False):
        shas, times = list(rows["checkpoint_sha256"]), list(rows["created_at"])
        current = on_disk[model_id].sha256 if model_id in on_disk else shas[-1]
        spans, start = [], None
        for sha, t in zip(shas, times, strict=True):
            if sha == current and start is None:
                start = t
            elif sha != current and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, None))
        periods[model_id] = spans
    return periods


def _describes(periods: dict[str, list[tuple]], model_id: str, when) -> bool:
    """Whether a row made at `when` describes the model's current weights (a model no row lists: yes)."""
    if model_id not in periods:
        return True
    return any(start <= when and (end is None or when < end) for start, end in periods[model_id])


def current_evaluations(results_root="data/results", data_dir="data", profile: str | None = None) -> pd.DataFrame:
    """The `evaluations` table as the report reads it, for pandas: per model and attack setting, the latest row
    made while the weights now in `data_dir` were the model's latest. "The latest row" alone can describe other
    weights: the model's before `dvc checkout` (or DVC's run cache) put earlier ones back without running its
    stage, which writes no rows. Rows of models no longer in the data folder are kept (by their latest weights).
    Every profile's rows, or `profile`'s only (the report shows one)."""
    periods = _weight_periods(results.load("models", results_root), _on_disk(Path(data_dir))[0])
    ev = _latest_evaluations(results.load("evaluations", results_root), periods).drop(columns="eps_key")
    return ev if profile is None else ev[ev["profile"] == profile].reset_index(drop=True)


def _latest_evaluations(evaluations: pd.DataFrame, periods: dict[str, list[tuple]]) -> pd.DataFrame:
    """The latest row of every attack setting of every model, leaving out those made on other weights of the
    model than its current ones (before it was retrained, or those an earlier run's put back replaced)."""
    current = np.array([_describes(periods, m, t)
                        for m, t in zip(evaluations["model_id"], evaluations["evaluated_at"], strict=True)], dtype=bool)
    ev = evaluations.loc[current]
    ev = ev.assign(eps_key=ev["eps"].round(6))
    keys = ["model_id", "test_set", "attack", "eps_key", "steps", "restarts"]
    return _latest(ev, keys, "evaluated_at").reset_index(drop=True)


def _current_models(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> pd.DataFrame:
    """The models the report describes: those in the data folder, where it holds any of this profile's (after
    `dvc checkout` of an earlier commit they may be another architecture's than the latest rows'), else all."""
    here = models["model_id"].isin(on_disk)
    return models[here] if here.any() else models


def _unrecorded(models: pd.DataFrame, on_disk: dict[str, OnDisk]) -> list[str]:
    """This profile's models whose weights in the data folder no `models` row describes: they have no numbers
    until `notbugs reevaluate` records and scores them."""
    listed = set(zip(models["model_id"], models["checkpoint_sha256"], strict=True))
    ids = set(models["model_id"])
    return sorted(m for m, d in on_disk.items() if m in ids and (m, d.sha256) not in listed)


def _main_arch(models: pd.DataFrame) -> str | None:
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


def _pick_model(models: pd.DataFrame, training: str, train_set: str, arch: str | None) -> pd.Series | None:
    """The latest such model of the main architecture: never one of another architecture, which would
    pair, say, a ResNet-9 source model with a ResNet-18 trained on its sets."""
    main = models[~_is_transfer(models)]
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


def _measure(ref: PaperRow, models: pd.DataFrame, evals: pd.DataFrame, arch: str | None) -> Measured:
    model = _pick_model(models, ref.training, ref.train_set, arch)
    if model is None:
        return Measured(ref, None, None, None, None)
    clean = _evaluation(evals, model["model_id"], "none")
    robust = _evaluation(evals, model["model_id"], "pgd_l2", ROBUST_EPS)
    return Measured(ref, str(model["model_id"]),
                    None if clean is None else 100.0 * float(clean["accuracy"]),
                    None if robust is None else 100.0 * float(robust["accuracy"]),
                    None if robust is None else int(robust["steps"]),
                    None if clean is None else int(clean["n"]),
                    None if robust is None else int(robust["n"]))


@dataclass(frozen=True)
class TransferPoint:
    arch: str
    success: float | None  # percent of transferred targeted examples that hit their target
    d_det_acc: float | None  # percent clean test accuracy after training on D_det
    source_model_id: str | None
    d_det_model_id: str | None
    d_det_n: int | None = None  # test images behind d_det_acc
    stale: str | None = None  # why the transfer rate is left out: a model it was measured on was retrained since


def _transfer_points(transfer: pd.DataFrame, models: pd.DataFrame, evals: pd.DataFrame,
                     periods: dict[str, list[tuple]]) -> list[TransferPoint]:
    """Figure 3's points: the architectures of the latest transfer measurement (one run writes them all),
    not every one the profile ever measured; before any, those of the D_det models. A rate measured on a
    source or target model that has been retrained since is left out: it no longer describes them."""
    d_det = models[(models["train_set"] == "d_det") & (models["training"] == "standard")]
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


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, only over MIN_ARCHS points or more (fewer always correlate almost perfectly)."""
    if len(xs) < MIN_ARCHS or np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def _clearly_above(a: float, n_a: int, b: float, n_b: int | None = None) -> bool:
    """Whether accuracy a (percent, over n_a test images) exceeds b by more than CLEAR_SE standard errors of
    the sampling: b is another accuracy over n_b images (a two-proportion test), or an exact rate such as
    chance (n_b None)."""
    pa, pb = a / 100.0, b / 100.0
    if n_b is None:
        se = math.sqrt(pb * (1.0 - pb) / n_a)
    else:
        pooled = (pa * n_a + pb * n_b) / (n_a + n_b)
        se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    return pa - pb > CLEAR_SE * se


def _robust_pair(evals: pd.DataFrame, a: str | None, b: str | None) -> tuple | None:
    """The robust accuracies (percent, n) of models a and b at eps ROBUST_EPS under the strongest attack setting
    both were scored with, and that setting's steps: (a %, a n, b %, b n, steps), or None. Each model's own
    strongest would set, say, a 10-step score against a weekly re-evaluation's 100-step one."""
    def settings(model_id):
        found = evals[(evals["model_id"] == model_id) & (evals["attack"] == "pgd_l2")]
        found = found[np.isclose(found["eps"].astype(float), ROBUST_EPS)]
        return {(int(e["steps"]), int(e["restarts"])): e for _, e in found.iterrows()}

    if a is None or b is None:
        return None
    sa, sb = settings(a), settings(b)
    shared = sorted(set(sa) & set(sb), key=lambda k: (k[0] * k[1], k))
    if not shared:
        return None
    ea, eb = sa[shared[-1]], sb[shared[-1]]
    return 100.0 * float(ea["accuracy"]), int(ea["n"]), 100.0 * float(eb["accuracy"]), int(eb["n"]), shared[-1][0]


# The one-sided 5% critical value of Student's t by degrees of freedom (n points: n - 2), for Figure 3's r; above
# 10 the value for 10, which is a little strict.
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812}


def _critical_r(n: int) -> float:
    """The smallest Pearson r over n points that is positive at the one-sided 5% level."""
    t = T95[min(n - 2, 10)]
    return t / math.sqrt(n - 2 + t * t)


def _relation_holds(r: float, n: int) -> bool | None:
    """Figure 3's claim from Pearson's r over n points: True when significantly positive, False when not
    positive, None when positive but not significantly."""
    if r >= _critical_r(n):
        return True
    return False if r <= 0 else None


def _claims(fig2: list[Measured], tab1: list[Measured], points: list[TransferPoint], r: float | None,
            evals: pd.DataFrame) -> list[Claim]:
    """The paper's CIFAR-10 claims, judged by direction rather than by distance from its figures: a weaker
    reproduction (a CPU profile, a smaller model) can bear every claim out while missing every number."""
    m = {row.ref.key: row for row in fig2 + tab1}
    standard, d_r, d_nr = m["standard"], m["d_r"], m["d_nr"]
    claims = []

    text = ("Robust features alone give robustness: standard training on D_R gives a more robust model than "
            "standard training on D")
    pair = _robust_pair(evals, d_r.model_id, standard.model_id)
    if pair is None:
        claims.append(Claim("d_r_robust", text, None, "needs the robust accuracy of D_R's model and of the standard "
                                                      "one under one attack setting"))
    else:
        a, na, b, nb, steps = pair
        claims.append(Claim("d_r_robust", text, _clearly_above(a, na, b, nb),
                            f"robust accuracy ({steps} steps): D_R {a:.1f}, standard {b:.1f}"))

    text = ("Non-robust features alone give accuracy but no robustness: D_NR's model is well above chance on the "
            "test set and less robust than D_R's")
    pair = _robust_pair(evals, d_r.model_id, d_nr.model_id)
    if d_nr.clean is None or pair is None:
        claims.append(Claim("d_nr", text, None, "needs D_NR's clean accuracy, and D_NR's and D_R's robust accuracy "
                                                "under one attack setting"))
    else:
        a, na, b, nb, steps = pair
        holds = _clearly_above(d_nr.clean, d_nr.clean_n, CHANCE) and _clearly_above(a, na, b, nb)
        claims.append(Claim("d_nr", text, holds, f"D_NR clean {d_nr.clean:.1f} (chance {CHANCE:.0f}); robust "
                                                 f"({steps} steps): D_NR {b:.1f}, D_R {a:.1f}"))

    for key, how in (("d_rand", "towards a random class"), ("d_det", "towards the next class")):
        row = m[key]
        text = (f"Non-robust features suffice for generalisation: a model trained only on adversarial examples "
                f"{how}, labelled as their target ({SET_LABEL[key]}), is above chance on the real test set")
        if row.clean is None:
            claims.append(Claim(key, text, None, f"needs the clean accuracy of {SET_LABEL[key]}'s model"))
        else:
            claims.append(Claim(key, text, _clearly_above(row.clean, row.clean_n, CHANCE),
                                f"{row.clean:.1f} (chance {CHANCE:.0f})"))

    complete = [p for p in points if p.success is not None and p.d_det_acc is not None]
    text = ("Transferability goes with learning from non-robust features: architectures the attack transfers to "
            "more learn more from D_det (Figure 3)")
    if r is None:
        claims.append(Claim("figure3", text, None, f"{len(complete)} architecture(s) with both numbers: at least "
                                                   f"{MIN_ARCHS} with some spread are needed to judge (the paper "
                                                   "has 5)"))
    else:
        claims.append(Claim("figure3", text, _relation_holds(r, len(complete)),
                            f"Pearson r = {r:+.2f} over {len(complete)} architectures (positive at the one-sided 5% "
                            f"level from {_critical_r(len(complete)):.2f})"))
    return claims


def _construction_stats(datasets: pd.DataFrame, on_disk: dict[str, str]) -> dict[str, dict]:
    """Recorded statistics per constructed set: those of the run that built the set on disk (`on_disk`: set name
    -> run id) where its rows are there, else the latest; unreadable stats become an empty dict."""
    built = datasets[datasets["name"].isin(CONSTRUCTED)]
    mine = np.array([on_disk.get(name) == run for name, run in zip(built["name"], built["run_id"], strict=True)],
                    dtype=bool)
    # a set whose building run's rows are there: those rows only
    built = built[mine | ~built["name"].isin(set(built["name"][mine]))]
    latest = _latest(built, ["name"], "created_at")
    stats = {}
    for _, row in latest.iterrows():
        try:
            parsed = json.loads(row["stats"])
        except (TypeError, json.JSONDecodeError):
            parsed = {}
        stats[str(row["name"])] = {"stats": parsed if isinstance(parsed, dict) else {},
                                   "n_images": int(row["n_images"]),
                                   "source_model_id": row["source_model_id"]}
    return stats


def _epoch_curves(epochs: pd.DataFrame, models: pd.DataFrame,
                  on_disk: dict[str, OnDisk] | None = None) -> dict[str, pd.DataFrame]:
    """Per model, one row per epoch: those of the run that trained the weights in the data folder (else of its
    latest row), which writes every epoch of the model, resumed ones included (`stages.train_unit`). So a model
    trained again with fewer epochs does not keep the earlier run's later ones."""
    saved_by = _latest(models, ["model_id"], "created_at").set_index("model_id")["run_id"].to_dict()
    saved_by.update({model_id: d.run_id for model_id, d in (on_disk or {}).items()})
    curves = {}
    for model_id, rows in epochs.groupby("model_id", sort=True):
        own = rows[rows["run_id"] == saved_by.get(model_id)]
        rows = own if not own.empty else rows.drop_duplicates("epoch", keep="last")  # no models row: the last written
        curves[str(model_id)] = rows.sort_values("epoch")
    return curves


# ---------------------------------------------------------------- sample images


def _default_load_samples(path: Path, choose) -> dict:
    from notbugs.construct import load_samples  # imports torch: only when samples are drawn

    return load_samples(path, choose)


def _default_load_cifar(path: Path):
    from notbugs.data import load

    return load(path)


def _cifar_classes() -> tuple[str, ...]:
    from notbugs.data import CLASSES

    return CLASSES


def _missing_errors() -> tuple:
    from notbugs.storage import ArtefactError

    return (ArtefactError, OSError, ValueError, KeyError)


def _to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """CHW floats in [0, 1] (constructed sets) or HWC uint8 (CIFAR) -> HWC uint8."""
    if image.dtype == np.uint8:
        return image
    hwc = np.transpose(np.asarray(image, dtype=np.float32), (1, 2, 0))
    return np.round(np.clip(hwc, 0.0, 1.0) * 255.0).astype(np.uint8)


def _upscale(image: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    factor = max(1, size // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _choose_sources(source_index: np.ndarray, original_labels: np.ndarray | None, n: int) -> list[int]:
    """Training-set indices to show: one per class when the labels are known (like the paper's
    Figure 2a), otherwise evenly spaced through the set."""
    if original_labels is not None:
        chosen = []
        for c in np.unique(original_labels):
            chosen.append(int(source_index[np.flatnonzero(original_labels == c)[0]]))
        if len(chosen) >= n:
            return chosen[:n]
    positions = np.linspace(0, len(source_index) - 1, num=min(n, len(source_index))).round().astype(int)
    return [int(source_index[p]) for p in positions]


def _sample_grid(data_dir: Path, n: int, load_samples, load_cifar) -> tuple[SampleGrid | None, list[str]]:
    """The grid of sample images and notes about what could not be shown."""
    errors = _missing_errors()
    notes = []
    try:
        cifar = load_cifar(data_dir / "cifar10")
    except errors as e:
        cifar = None
        state = "could not be read" if (data_dir / "cifar10").exists() else "is not fetched yet"
        notes.append(f"CIFAR-10 {state}, so the D row is empty ({e}).")
    classes = tuple(cifar.classes) if cifar is not None else _cifar_classes()
    chosen: list[int] = []  # the training images shown, chosen from the first set that loads
    rows = []
    for name in CONSTRUCTED:
        def choose(source_index, labels, name=name):
            """Positions in this set of the chosen training images (chosen here for the first set)."""
            if not chosen:
                originals = cifar.train_labels[source_index] if cifar is not None else (
                    labels if SETS[name].kind == "match" else None)  # a matching set keeps the labels
                chosen.extend(_choose_sources(source_index, originals, n))
            position = {int(s): i for i, s in enumerate(source_index)}
            return [position[s] for s in chosen if s in position]

        try:  # only the few sample images are read: a full set is hundreds of MB
            data = load_samples(data_dir / "datasets" / name, choose)
        except errors as e:
            state = "could not be read" if (data_dir / "datasets" / name).exists() else "is not built yet"
            notes.append(f"{SET_LABEL[name]} {state} ({e}).")
            continue
        shown = {int(data["source_index"][p]): (image, int(data["labels"][p]))
                 for p, image in zip(data["positions"], data["images"])}
        cells = tuple((None, "—") if s not in shown else (_upscale(_to_uint8_hwc(shown[s][0])), classes[shown[s][1]])
                      for s in chosen)
        rows.append((SET_LABEL[name], cells))
    if not rows:
        notes.append("No constructed set is built yet, so there are no samples to show.")
        return None, notes
    if cifar is not None:
        original = tuple((_upscale(cifar.train_images[s]), classes[int(cifar.train_labels[s])]) for s in chosen)
    else:
        original = tuple((None, "—") for _ in chosen)
    rows.insert(0, ("D", original))
    return SampleGrid(tuple(f"#{s}" for s in chosen), tuple(rows)), notes


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _grid_png(grid: SampleGrid, gap: int = 4) -> bytes:
    """All sample images in one PNG (rows = sets) for the Markdown report; labels go in a table."""
    n_rows, n_cols = len(grid.rows), len(grid.columns)
    step = SAMPLE_SIZE + gap
    canvas = np.full((n_rows * step + gap, n_cols * step + gap, 3), 255, dtype=np.uint8)
    for r, (_, cells) in enumerate(grid.rows):
        for c, (image, _) in enumerate(cells):
            if image is not None:
                y, x = gap + r * step, gap + c * step
                canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
    return _png_bytes(canvas)


# ---------------------------------------------------------------- formatting


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _paper_robust(ref: PaperRow) -> str:
    return f"~{ref.robust:.0f}" if ref.robust_approx and ref.robust is not None else _pct(ref.robust)


def _compare(ours: float | None, paper: float | None, higher_is_worse: bool = False) -> Flag:
    """Ours against the paper: below is bad, above is a warning (check it) unless higher is worse."""
    if paper is None:
        return Flag("no paper number", "missing")
    if ours is None:
        return Flag("not run yet", "missing")
    diff = ours - paper
    if abs(diff) <= FLAG_PTS:
        return Flag(f"within {FLAG_PTS:.0f} pts ({diff:+.1f})", "ok")
    if diff < 0:
        return Flag(f"below paper by {-diff:.1f} pts", "bad")
    return Flag(f"above paper by {diff:.1f} pts", "bad" if higher_is_worse else "warn")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _when(stamp) -> str:
    return pd.Timestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- SVG figures


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(label)}" '
            f'font-family="Helvetica, Arial, sans-serif" font-size="12">')
    # a white background so the standalone .svg files read well in any viewer
    return "\n".join([head, f'<rect width="{width}" height="{height}" fill="#fff"/>', *body, "</svg>"])


def _text(x: float, y: float, text, anchor: str = "middle", size: int = 12, fill: str = "#222",
          extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"'
            f'{extra}>{_esc(text)}</text>')


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#ccc") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"/>'


def _grouped_bars_svg(groups: list[str], series: list[tuple[str, str, list]], title: str) -> str:
    """Grouped vertical bars on a 0-100 (percent) axis; a missing value is written as 'n/a'."""
    width, height, left, right, top, bottom = 780, 360, 50, 12, 62, 44
    pw, ph = width - left - right, height - top - bottom
    body = [_text(width / 2, 20, title, size=14, extra=' font-weight="bold"')]
    for tick in range(0, 101, 20):
        y = top + ph - ph * tick / 100
        body += [_line(left, y, left + pw, y), _text(left - 6, y + 4, tick, anchor="end", size=11)]
    body.append(_text(14, top + ph / 2, "accuracy (%)", extra=f' transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    group_w = pw / len(groups)
    bar_w = group_w * 0.84 / len(series)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.08
        for s, (_, colour, values) in enumerate(series):
            value, x = values[g], x0 + s * bar_w
            if value is None:
                body.append(_text(x + bar_w / 2, top + ph - 4, "n/a", size=10, fill="#888"))
                continue
            h = ph * min(max(value, 0.0), 100.0) / 100
            body.append(f'<rect x="{x + 1:.1f}" y="{top + ph - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                        f'fill="{colour}" stroke="#555" stroke-width="0.5"/>')
            body.append(_text(x + bar_w / 2, top + ph - h - 4, f"{value:.1f}", size=10))
        body.append(_text(left + (g + 0.5) * group_w, top + ph + 20, group))
    body.append(_line(left, top + ph, left + pw, top + ph, stroke="#333"))
    for s, (name, colour, _) in enumerate(series):
        x = left + s * 180
        body += [f'<rect x="{x}" y="34" width="12" height="12" fill="{colour}" stroke="#555" stroke-width="0.5"/>',
                 _text(x + 17, 44, name, anchor="start")]
    return _svg(width, height, title, body)


def _axis_range(values: list[float]) -> tuple[float, float, float]:
    """A 0-100 sub-range around the values, on a 5 or 10 grid: (low, high, tick step)."""
    lo = max(0.0, math.floor((min(values) - 5) / 10) * 10)
    hi = min(100.0, math.ceil((max(values) + 5) / 10) * 10)
    if hi - lo < 20:
        lo, hi = max(0.0, hi - 20), max(hi, 20.0)
    return lo, hi, 10.0 if hi - lo > 40 else 5.0


def _scatter_svg(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
                 y_chance: float | None = None) -> str:
    """y_chance: a dashed horizontal line at that value (the axis is stretched to show it)."""
    width, height, left, right, top, bottom = 560, 400, 60, 30, 40, 50
    pw, ph = width - left - right, height - top - bottom
    xlo, xhi, xstep = _axis_range([p[1] for p in points])
    ylo, yhi, ystep = _axis_range([p[2] for p in points] + ([] if y_chance is None else [y_chance]))

    def sx(v):
        return left + pw * (v - xlo) / (xhi - xlo)

    def sy(v):
        return top + ph - ph * (v - ylo) / (yhi - ylo)

    body = [_text(width / 2, 22, title, size=14, extra=' font-weight="bold"')]
    for tick in np.arange(xlo, xhi + 1e-9, xstep):
        body += [_line(sx(tick), top, sx(tick), top + ph), _text(sx(tick), top + ph + 16, f"{tick:.0f}", size=11)]
    for tick in np.arange(ylo, yhi + 1e-9, ystep):
        body += [_line(left, sy(tick), left + pw, sy(tick)),
                 _text(left - 6, sy(tick) + 4, f"{tick:.0f}", anchor="end", size=11)]
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    if y_chance is not None:
        body.append(f'<line x1="{left}" y1="{sy(y_chance):.1f}" x2="{left + pw}" y2="{sy(y_chance):.1f}" '
                    f'stroke="#c4501b" stroke-dasharray="6 4"/>')
        body.append(_text(left + pw - 4, sy(y_chance) - 4, "chance", anchor="end", size=11, fill="#c4501b"))
    body.append(_text(left + pw / 2, height - 10, xlabel))
    body.append(_text(16, top + ph / 2, ylabel, extra=f' transform="rotate(-90 16 {top + ph / 2:.1f})"'))
    for label, x, y in points:
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{SERIES_COLOURS[0]}"/>')
        # labels go left of points in the right third so they stay inside the plot
        right_side = sx(x) < left + pw * 0.66
        body.append(_text(sx(x) + (8 if right_side else -8), sy(y) - 6, f"{label} ({x:.1f}, {y:.1f})",
                          anchor="start" if right_side else "end", size=11))
    return _svg(width, height, title, body)


def _line_panel(x: float, y: float, w: float, h: float, xs: list[int], ys: list[float],
                ylo: float, yhi: float, title: str, colour: str, yfmt: str) -> list[str]:
    """One small line chart with its top-left corner at (x, y)."""
    xlo, xhi = min(xs), max(max(xs), min(xs) + 1)

    def sx(v):
        return x + w * (v - xlo) / (xhi - xlo)

    def sy(v):
        return y + h - h * (v - ylo) / (yhi - ylo)

    body = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" stroke="#999"/>',
            _text(x + w / 2, y - 5, title, size=11)]
    for tick in (ylo, (ylo + yhi) / 2, yhi):
        body += [_line(x, sy(tick), x + w, sy(tick), stroke="#eee"),
                 _text(x - 4, sy(tick) + 4, format(tick, yfmt), anchor="end", size=10)]
    body += [_text(sx(xlo), y + h + 13, xlo, size=10), _text(sx(xhi), y + h + 13, xhi, size=10),
             _text(x + w / 2, y + h + 13, "epoch", size=10, fill="#666")]
    path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(xs, ys))
    body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    if len(xs) == 1:
        body.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3" fill="{colour}"/>')
    return body


def _training_curves_svg(curves: dict[str, pd.DataFrame]) -> str:
    """Small multiples: one row per model, training loss on the left, training accuracy on the right."""
    width, row_h, panel_w, panel_h = 780, 150, 320, 95
    body = []
    for r, (model_id, rows) in enumerate(curves.items()):
        top = r * row_h + 22
        epochs = rows["epoch"].astype(int).tolist()
        loss = rows["train_loss"].astype(float).tolist()
        acc = (100.0 * rows["train_acc"].astype(float)).tolist()
        final = f"{model_id}: {len(epochs)} epochs, final train acc {acc[-1]:.1f}%, {rows['wall_s'].sum():.0f} s"
        body.append(_text(10, top, final, anchor="start", size=12, extra=' font-weight="bold"'))
        loss_hi = max(max(loss) * 1.1, 1e-3) if all(map(math.isfinite, loss)) else 1.0
        body += _line_panel(60, top + 22, panel_w, panel_h, epochs, loss, 0.0, loss_hi, "training loss",
                            SERIES_COLOURS[2], ".2f")
        body += _line_panel(60 + panel_w + 70, top + 22, panel_w, panel_h, epochs, acc, 0.0, 100.0,
                            "training accuracy (%)", SERIES_COLOURS[0], ".0f")
    return _svg(width, len(curves) * row_h + 10, "training curves", body)


# ---------------------------------------------------------------- report sections


def _runs_behind(tables: dict[str, pd.DataFrame], models: pd.DataFrame, evals: pd.DataFrame,
                 models_on_disk: dict[str, OnDisk], sets_on_disk: dict[str, str],
                 points: list[TransferPoint]) -> set[str]:
    """The runs that made what the report shows: the models described (the run that trained the weights on
    disk, else the latest row's), their evaluations shown, the sets (those on disk, else the latest rows'; D's
    fetch), the latest transfer where Figure 3 shows its rates."""
    ids = set(evals.loc[evals["model_id"].isin(models["model_id"]), "run_id"])
    for model_id, rows in _latest(models, ["model_id"], "created_at").groupby("model_id"):
        ids.add(models_on_disk[model_id].run_id if model_id in models_on_disk else rows["run_id"].iloc[0])
    for name, rows in _latest(tables["datasets"], ["name"], "created_at").groupby("name"):
        ids.add(sets_on_disk.get(name, rows["run_id"].iloc[0]))  # D's: its fetch
    if any(p.success is not None for p in points):  # Figure 3 shows the latest transfer run's rates
        ids.add(tables["transfer"].sort_values("created_at", kind="stable")["run_id"].iloc[-1])
    return ids


def _runs_table(runs: pd.DataFrame) -> Table:
    rows = []
    for _, run in runs.sort_values("started_at", kind="stable").iterrows():
        # "stopped": a job out of time that saved its progress for the next one, not an error
        status = Flag(run["status"], {"ok": "ok", "stopped": "warn"}.get(run["status"], "bad"))
        rows.append((run["stage"], status, run["code_version"], run["params_hash"], run["device"],
                     _when(run["started_at"]), _when(run["ended_at"]), _duration(float(run["wall_s"]))))
    return Table(("stage", "status", "code version", "parameters", "device", "started", "ended", "wall time"),
                 tuple(rows))


def _shown_runs(runs: pd.DataFrame, behind: set[str]) -> pd.DataFrame:
    """The runs behind the numbers shown, not every run the tables keep: earlier and failed attempts made none
    of them. With none behind any number (nothing trained yet), every run, failures included."""
    shown = runs[runs["run_id"].isin(behind)]
    return runs if shown.empty else shown


def _header_blocks(profile: str | None, profiles: list[str], runs: pd.DataFrame, behind: set[str]) -> list:
    others = [p for p in profiles if p != profile]
    profile_text = f"Profile: {profile or '(none: no results yet)'}."
    if others:
        profile_text += f" Other profiles in the tables, not shown: {', '.join(others)}."
    blocks = [Heading("Adversarial Examples Are Not Bugs, They Are Features: reproduction report", 1),
              Para(PAPER_CLAIM), Para(profile_text),
              Para(f"Report generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC. All times UTC."),
              Heading("Provenance")]
    if runs.empty:
        return blocks + [Note("No stage has run yet for this profile (the runs table is empty): not run yet.")]
    shown = _shown_runs(runs, behind)
    versions = sorted(shown["code_version"].unique())
    if len(versions) > 1:
        blocks.append(Bullets((Flag(f"the results shown come from {len(versions)} code versions: "
                                    f"{', '.join(versions)}", "warn"),)))
    hashes = sorted(shown["params_hash"].unique())
    if len(hashes) > 1:
        blocks.append(Para(f"They come from {len(hashes)} states of params.yaml (column \"parameters\"; each run's "
                           "values are in the runs table's `params`): a change to one recipe reruns its own steps "
                           "only, and changes the hash of every later run."))
    blocks.append(_runs_table(shown))
    total = float(shown["wall_s"].sum())
    span = (shown["ended_at"].max() - shown["started_at"].min()).total_seconds()
    blocks.append(Para(f"{len(shown)} stage runs behind these results, {_duration(total)} of stage time in all, "
                       f"{_duration(span)} from the first start to the last end."))
    rest = runs[~runs["run_id"].isin(shown["run_id"]) & (runs["stage"] != "report")]  # the report's own: no numbers
    if not rest.empty:
        # an attempt that did not finish after the run whose results are shown (the numbers are not the latest
        # attempt's), or of a stage with nothing shown (its numbers are "not run yet" for that reason)
        last_shown = rest["stage"].map(shown.groupby("stage")["started_at"].max())
        later = rest[(rest["status"] != "ok") & (last_shown.isna() | (rest["started_at"] > last_shown))]
        blocks.append(Para(f"{len(rest)} other stage runs of this profile in the runs table are behind no number "
                           "shown (earlier or superseded runs, and failed or stopped ones; the report's own runs not "
                           "counted)."))
        if not later.empty:
            what = "a run" if len(later) == 1 else f"{len(later)} runs"
            blocks += [Bullets((Flag(f"{what} did not finish after the last that made what is shown (or made nothing "
                                     "shown yet): the numbers are not the latest attempt's", "warn"),)),
                       _runs_table(later)]
    return blocks


def _images_used(models: pd.DataFrame, evals: pd.DataFrame) -> str:
    """How many of CIFAR-10's images the profile's models trained on (the source models' recipe) and were tested
    on (the clean evaluations shown): a subset in `tiny` and `cpu`."""
    n_train = set()
    for recipe in models.loc[models["train_set"] == "d", "recipe"]:
        try:
            n_train.add(int(json.loads(recipe)["n_train"]))
        except (TypeError, KeyError, ValueError):
            continue  # a row from before the recipe recorded it
    n_test = set(evals.loc[evals["attack"] == "none", "n"].astype(int))
    parts = []
    if n_train:
        parts.append(f"trained on {' / '.join(f'{n:,}' for n in sorted(n_train))} training images")
    if n_test:
        parts.append(f"tested on {' / '.join(f'{n:,}' for n in sorted(n_test))} test images")
    return f" This profile's models are {' and '.join(parts)}." if parts else ""


def _data_blocks(data_dir: Path, datasets: pd.DataFrame, used: str = "") -> list:
    """Which CIFAR-10 the results come from: the fetched arrays (the fetch manifest), where the last fetch got
    them (the `datasets` row of D), and whether they are the canonical ones (notbugs.data.CANONICAL_SHA256),
    which every run that compares with ours must share."""
    try:
        m = read_json(data_dir / "cifar10" / "manifest.json")
        counts, sha = m["counts"], m["array_sha256"]
    except (OSError, ArtefactError, KeyError, TypeError):
        return []  # not fetched yet (the sample grid says so), or a manifest from before these fields
    where = ""
    d = _latest(datasets[datasets["name"] == "d"], ["name"], "created_at")
    if not d.empty:
        try:
            recipe = json.loads(d["recipe"].iloc[0])
            where = f", from the {recipe['source']} source ({recipe['origin']})"
        except (TypeError, KeyError, json.JSONDecodeError):
            pass
    text = (f"Data: CIFAR-10, {counts['train']:,} training / {counts['test']:,} test images{where}; array "
            f"SHA-256 {sha['train'][:12]}… / {sha['test'][:12]}…")
    canonical = m.get("canonical")
    if canonical is False:
        return [Bullets((Flag(f"{text}: not the canonical CIFAR-10 arrays; results do not compare with runs on "
                              f"them.{used}", "warn"),))]
    return [Para(text + (": the canonical arrays, as published." if canonical else
                         " (not the full sets: not compared with the canonical arrays).") + used)]


def _flag_lines(fig2: list[Measured], tab1: list[Measured]) -> list[Flag]:
    """Every result further than FLAG_PTS from the paper, once each (Table 1's D is Figure 2's model)."""
    lines, seen = [], set()
    for m in fig2 + tab1:
        for metric, ours, paper in (("clean", m.clean, m.ref.clean), ("robust", m.robust, m.ref.robust)):
            if ours is None or paper is None or (m.model_id, metric) in seen:
                continue
            seen.add((m.model_id, metric))
            flag = _compare(ours, paper, metric == "robust" and m.ref.robust_near_zero)
            if flag.kind in ("bad", "warn"):
                quoted = _paper_robust(m.ref) if metric == "robust" else f"{paper:.1f}"
                lines.append(Flag(f"{_row_label(m.ref)} ({m.model_id}), {metric} accuracy {ours:.1f} vs paper "
                                  f"{quoted}: {flag.text}", flag.kind))
    return lines


def _claim_blocks(claims: list[Claim]) -> list:
    verdict = {True: Flag("holds", "ok"), False: Flag("does not hold", "bad"), None: Flag("cannot tell yet", "missing")}
    return [Heading("The paper's claims"),
            Para(f"Whether each claim of the paper's CIFAR-10 experiments holds in our numbers, however far they are "
                 f"from the paper's figures (next section). A difference counts when it exceeds {CLEAR_SE:.0f} "
                 f"standard errors of the test-set sampling; chance is {CHANCE:.0f}%."),
            Table(("claim", "ours", "verdict"), tuple((c.text, c.detail, verdict[c.holds]) for c in claims))]


def _precision_line(runs: pd.DataFrame) -> str | None:
    """Which stages computed under bf16 autocast (their `device` says): the authors' code runs fp32, and the
    `paper` profile's `precision: auto` too runs bf16 where the device has it."""
    bf16 = sorted({stage for stage, device in zip(runs["stage"], runs["device"], strict=True)
                   if str(device).endswith(", bf16")})
    if not bf16:
        return None
    return (f"precision: bf16 autocast in {', '.join(bf16)} (the authors' code runs fp32; README, \"Deviations "
            "from the paper\", Precision; `precision: fp32` runs as they did)")


def _deviation_blocks(flags: list[Flag], deviations: list[str] | None, runs: pd.DataFrame) -> list:
    blocks = [Heading("Deviations from the paper")]
    if flags:
        blocks += [Para(f"Results more than {FLAG_PTS:.0f} points away from the paper's number:"),
                   Bullets(tuple(flags))]
    else:
        blocks.append(Para(f"No measured result is more than {FLAG_PTS:.0f} points away from the paper's number "
                           "(results not run yet are not counted)."))
    if deviations:
        blocks += [Para("Settings of this profile that differ from the `paper` profile, params.yaml's statement "
                        "of the protocol:"), Bullets(tuple(deviations))]
    precision = _precision_line(runs)
    if precision:
        blocks += [Para("How the runs shown computed, where the `paper` profile too departs from the authors' code "
                        "(README, \"Deviations from the paper\", lists every such departure):"),
                   Bullets((precision,))]
    return blocks


def _figure2_blocks(fig2: list[Measured], unrecorded: list[str]) -> list:
    blocks = [Heading("Figure 2: robust and non-robust features"),
              Para("Clean test accuracy and robust accuracy (l2 PGD, eps 0.25) on the real CIFAR-10 test set, "
                   "ours beside the paper's. Standard and adversarial training are on the original D; D_R and "
                   "D_NR are trained with standard training only.")]
    steps = sorted({m.robust_steps for m in fig2 if m.robust_steps is not None})
    if steps:
        blocks.append(Para(f"Our robust accuracy: l2 PGD at eps {ROBUST_EPS} with {'/'.join(map(str, steps))} "
                           f"steps. The paper's figure gives only eps {ROBUST_EPS}; the authors' released "
                           "checkpoints are scored with 20- and 100-step PGD."))
    if all(m.model_id is None for m in fig2):
        blocks.append(Note("Figure 2: no model is trained yet for this profile: not run yet."))
    blocks += [Note(f"{m}: the weights in the data folder are not in the models table (put back without running "
                    f"its stage?), so it has no numbers here: `notbugs reevaluate` records and scores them.")
               for m in unrecorded]
    series = [("clean, ours", SERIES_COLOURS[0], [m.clean for m in fig2]),
              ("clean, paper", SERIES_COLOURS[1], [m.ref.clean for m in fig2]),
              ("robust (eps 0.25), ours", SERIES_COLOURS[2], [m.robust for m in fig2]),
              ("robust, paper", SERIES_COLOURS[3], [m.ref.robust for m in fig2])]
    groups = [_group(m.ref) for m in fig2]
    blocks.append(Figure("figure2", _grouped_bars_svg(groups, series, "Figure 2: test accuracy (%)"),
                         "Figure 2: clean and robust (l2 eps 0.25) test accuracy, ours beside the paper's."))
    rows = tuple((_row_label(m.ref), m.model_id or "not run yet", _pct(m.clean), _pct(m.ref.clean),
                  _compare(m.clean, m.ref.clean), _pct(m.robust), _paper_robust(m.ref),
                  _compare(m.robust, m.ref.robust, m.ref.robust_near_zero), m.ref.source) for m in fig2)
    blocks.append(Table(("training", "model", "clean, ours", "clean, paper", "clean vs paper", "robust, ours",
                         "robust, paper", "robust vs paper", "paper source"), rows))
    return blocks


def _unreported_sets(models: pd.DataFrame, datasets: pd.DataFrame) -> list[str]:
    """The training sets the tables hold models or a dataset row of, for which the report has no row of the
    paper's (FIGURE2, TABLE1): a set added to notbugs/sets.py, or one this code no longer knows."""
    reported = {ref.train_set for ref in FIGURE2 + TABLE1}
    held = set(models["train_set"].dropna()) | set(datasets["name"].dropna())
    return sorted(str(name) for name in held - reported)


def _unreported_blocks(names: list[str]) -> list:
    return [Note(f"{SET_LABEL.get(name, name)} ({name}): the results hold its models or its construction, but this "
                 f"report has no row of the paper's for it (notbugs/report.py FIGURE2 / TABLE1), so Figure 2 and "
                 f"Table 1 leave its models out; the list of evaluations at the end has them.") for name in names]


def _table1_blocks(tab1: list[Measured]) -> list:
    blocks = [Heading("Table 1: non-robust features suffice for generalisation"),
              Para("Clean accuracy on the real CIFAR-10 test set after standard training on D, on D_rand "
                   "(targeted adversarial examples towards a random class, relabelled as the target) and on "
                   "D_det (target = label + 1). On D_rand and D_det every training label is 'wrong' for a "
                   "human; chance is 10%.")]
    if all(m.model_id is None for m in tab1):
        blocks.append(Note("Table 1: no model is trained yet for this profile: not run yet."))
    rows = tuple((SET_LABEL[m.ref.train_set], m.model_id or "not run yet", _pct(m.clean), _pct(m.ref.clean),
                  _compare(m.clean, m.ref.clean), _pct(m.robust), _paper_robust(m.ref),
                  _compare(m.robust, m.ref.robust, m.ref.robust_near_zero)) for m in tab1)
    blocks.append(Table(("training set", "model", "test acc, ours", "test acc, paper", "vs paper",
                         f"robust (eps {ROBUST_EPS}), ours", "robust, paper", "robust vs paper"), rows))
    return blocks


def _figure3_blocks(points: list[TransferPoint]) -> tuple[list, float | None]:
    blocks = [Heading("Figure 3: transferability and learning from non-robust features"),
              Para("For each architecture: the success rate of targeted adversarial examples made on the standard "
                   "source model (D_det settings) when transferred to a standard model of that architecture, and "
                   "the test accuracy of that architecture after training on D_det. The paper (VGG-16, "
                   "Inception-v3, DenseNet, ResNet-18, ResNet-50) finds a positive relation: architectures the "
                   "attack transfers to more also learn more from D_det. It gives its per-architecture values only "
                   "as a plot, so they are not quoted here.")]
    if not points:
        return blocks + [Note("Figure 3: no transfer measurement and no D_det model yet: not run yet.")], None
    complete = [(p.arch, p.success, p.d_det_acc) for p in points if p.success is not None and p.d_det_acc is not None]
    r = _pearson([p[1] for p in complete], [p[2] for p in complete])
    if complete:
        blocks.append(Figure("figure3", _scatter_svg(complete, "transfer success rate (%)",
                                                     "test accuracy after training on D_det (%)",
                                                     "Figure 3: transfer vs learning from D_det", y_chance=CHANCE),
                             "Figure 3: transfer success rate vs test accuracy after training on D_det, "
                             f"one point per architecture; the dashed line is chance ({CHANCE:.0f}%)."))
    else:
        blocks.append(Note("Figure 3: no architecture has both a transfer rate and a D_det accuracy yet: not run yet."))
    if r is None:
        blocks.append(Para(f"{len(complete)} architecture(s) with both numbers: at least {MIN_ARCHS}, with some "
                           "spread, are needed to judge the relation (the paper has 5)."))
    else:
        verdict = {True: Flag("positive, as in the paper", "ok"),
                   None: Flag(f"positive, but not significantly over {len(complete)} architectures", "warn"),
                   False: Flag("not positive, unlike the paper", "bad")}[_relation_holds(r, len(complete))]
        blocks.append(Bullets((f"Pearson r = {r:+.2f} over {len(complete)} architectures (positive at the one-sided "
                               f"5% level from {_critical_r(len(complete)):.2f})", verdict)))

    def success_cell(p: TransferPoint):
        if p.stale is not None:
            return Flag(p.stale, "warn")
        return "not run yet" if p.success is None else _pct(p.success)

    def chance_cell(p: TransferPoint):
        if p.d_det_acc is None:
            return Flag("not run yet", "missing")
        if _clearly_above(p.d_det_acc, p.d_det_n, CHANCE):
            return Flag("above chance", "ok")
        return Flag("not above chance", "bad")

    rows = tuple((p.arch, success_cell(p), _pct(p.d_det_acc) if p.d_det_acc is not None else "not run yet",
                  chance_cell(p), p.source_model_id or "—", p.d_det_model_id or "—") for p in points)
    blocks.append(Table(("architecture", "transfer success (%), ours", "D_det test acc (%), ours",
                         f"D_det vs chance ({CHANCE:.0f}%)", "source model", "D_det model"), rows))
    return blocks, r


def _sample_blocks(grid: SampleGrid | None, notes: list[str]) -> list:
    blocks = [Heading("Samples of the training sets"),
              Para("The same training images in every set (columns: index in the CIFAR-10 training set), with "
                   "the label each set assigns underneath, as in the paper's Figure 2a. D_R and D_NR keep the "
                   "original label; D_rand and D_det carry the attack's target label. Images upscaled "
                   f"{SAMPLE_SIZE // 32}x (nearest neighbour).")]
    blocks += [Note(n) for n in notes]
    if grid is not None:
        blocks.append(grid)
    return blocks


def _construction_blocks(construction: dict[str, dict]) -> list:
    blocks = [Heading("Construction statistics"),
              Para("D_R / D_NR: l2 distance between the constructed image's representation and the target "
                   "image's, at the start (the random start image) and at the end of the matching, absolute and "
                   "relative to the target representation's norm. D_rand / D_det: success rate of the targeted "
                   "attack on the source model. The paper reports neither; they show whether construction did "
                   "its job.")]
    if not construction:
        return blocks + [Note("No constructed set is recorded in the datasets table yet: not run yet.")]

    def start_final(stats, kind):
        start, final = stats.get(f"start_{kind}"), stats.get(f"final_{kind}")
        if start is None and final is None:
            return "—"
        return " → ".join("—" if v is None else f"{float(v):.3f}" for v in (start, final))

    rows = []
    for name in CONSTRUCTED:
        if name not in construction:
            rows.append((SET_LABEL[name], Flag("not run yet", "missing"), "", "", "", ""))
            continue
        entry, stats = construction[name], construction[name]["stats"]
        success = stats.get("success_rate")
        rows.append((SET_LABEL[name], str(entry["n_images"]), entry["source_model_id"] or "—",
                     start_final(stats, "distance"), start_final(stats, "relative"),
                     "—" if success is None else _pct(100.0 * float(success))))
    blocks.append(Table(("set", "images", "source model", "distance start → final", "relative start → final",
                         "attack success (%)"), tuple(rows)))
    return blocks


def _curves_blocks(curves: dict[str, pd.DataFrame]) -> list:
    blocks = [Heading("Training curves")]
    if not curves:
        return blocks + [Note("No training epoch is recorded yet: not run yet.")]
    return blocks + [Figure("training_curves", _training_curves_svg(curves),
                            "Training loss and training accuracy per epoch, one row per model.")]


def _evaluations_blocks(evals: pd.DataFrame) -> list:
    blocks = [Heading("All evaluations"),
              Para("The latest evaluation of every model under every attack setting (a re-evaluation with the "
                   "same setting supersedes an older row; rows made before a model was retrained are left "
                   "out). Figure 2 and Table 1 use the strongest setting at eps 0.25.")]
    if evals.empty:
        return blocks + [Note("No evaluation yet: not run yet.")]
    rows = tuple((e["model_id"], e["test_set"], e["attack"], f"{e['eps']:g}", str(e["steps"]), str(e["restarts"]),
                  _pct(100.0 * e["accuracy"]), str(e["n"]), _when(e["evaluated_at"]))
                 for _, e in evals.sort_values(["model_id", "attack", "eps", "steps", "restarts"]).iterrows())
    return blocks + [Table(("model", "test set", "attack", "eps", "steps", "restarts", "accuracy (%)", "n",
                            "evaluated"), rows)]


def _summary(profile, fig2, tab1, points, r, claims, construction, flags, deviations) -> dict:
    def rounded(v):
        return None if v is None else round(v, 2)

    return {
        "profile": profile,
        "figure2": {m.ref.key: {"model_id": m.model_id, "clean": rounded(m.clean), "robust": rounded(m.robust),
                                "paper_clean": m.ref.clean, "paper_robust": m.ref.robust} for m in fig2},
        "table1": {m.ref.key: {"model_id": m.model_id, "clean": rounded(m.clean), "robust": rounded(m.robust),
                               "paper_clean": m.ref.clean, "paper_robust": m.ref.robust} for m in tab1},
        "figure3": {"points": {p.arch: {"transfer_success": rounded(p.success), "d_det_acc": rounded(p.d_det_acc)}
                               for p in points},
                    "pearson_r": rounded(r)},
        "claims": {c.key: c.holds for c in claims},
        "construction": {name: entry["stats"] for name, entry in construction.items()},
        "flags": [f.text for f in flags],
        "deviations": list(deviations or []),
    }


# ---------------------------------------------------------------- rendering

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #d5d5d5; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; }
tr:nth-child(even) td { background: #fafafa; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 0.85em; white-space: nowrap; }
.badge.bad { background: #fde2e1; color: #9b1c1c; border: 1px solid #e9a5a3; font-weight: 600; }
.badge.warn { background: #fff1d6; color: #8a5300; border: 1px solid #e8c27a; font-weight: 600; }
.badge.ok { background: #e3f4e5; color: #1f6b2a; border: 1px solid #a9d8b0; }
.badge.missing { background: #eee; color: #555; border: 1px solid #ccc; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 8px 0; }
figure { margin: 12px 0 20px; }
figcaption { font-size: 0.85em; color: #555; }
table.samples td { text-align: center; padding: 3px; background: #fff; }
table.samples th[scope=row] { vertical-align: middle; }
table.samples img { image-rendering: pixelated; display: block; margin: 0 auto; }
table.samples .label { font-size: 0.8em; color: #333; }
"""


def _html_cell(value) -> str:
    if isinstance(value, Flag):
        return f'<span class="badge {value.kind}">{_esc(value.text)}</span>'
    return _esc(value)


def _html_samples(grid: SampleGrid) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in ("set", *grid.columns))
    rows = []
    for label, cells in grid.rows:
        tds = []
        for image, caption in cells:
            img = "—" if image is None else (
                f'<img src="data:image/png;base64,{base64.b64encode(_png_bytes(image)).decode()}" '
                f'width="{image.shape[1]}" height="{image.shape[0]}" alt="{_esc(label)}: {_esc(caption)}">')
            tds.append(f'<td>{img}<div class="label">{_esc(caption)}</div></td>')
        rows.append(f'<tr><th scope="row">{_esc(label)}</th>{"".join(tds)}</tr>')
    return f'<table class="samples"><tr>{head}</tr>{"".join(rows)}</table>'


def _render_html(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_esc(block.text)}</p>")
        elif isinstance(block, Note):
            parts.append(f'<div class="note"><strong>Not available:</strong> {_esc(block.text)}</div>')
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_html_cell(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_esc(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            parts.append(f"<figure>{block.svg}<figcaption>{_esc(block.caption)}</figcaption></figure>")
        elif isinstance(block, SampleGrid):
            parts.append(_html_samples(block))
    title = "notbugs reproduction report"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def _md_cell(value) -> str:
    text = f"**{value.text}**" if isinstance(value, Flag) and value.kind in ("bad", "warn") else (
        value.text if isinstance(value, Flag) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_markdown(blocks: list) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the figure files it links to (name -> bytes)."""
    parts, files = [], {}
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Note):
            parts.append(f"> **Not available:** {block.text}")
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {_md_cell(item)}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(_md_table(block.headers, block.rows))
        elif isinstance(block, Figure):
            files[f"{block.name}.svg"] = block.svg.encode()
            parts.append(f"![{block.caption}]({block.name}.svg)\n\n*{block.caption}*")
        elif isinstance(block, SampleGrid):
            files["samples.png"] = _grid_png(block)
            labels = tuple((label, *(caption for _, caption in cells)) for label, cells in block.rows)
            parts.append("![Samples: rows " + ", ".join(r[0] for r in block.rows) + "](samples.png)\n\n"
                         + _md_table(("set", *block.columns), labels))
    return "\n\n".join(parts) + "\n", files


# ---------------------------------------------------------------- entry point


def build_report(results_root, data_dir, out_dir, profile: str | None = None,
                 deviations: list[str] | None = None, *, n_samples: int = 8,
                 load_samples=None, load_cifar=None) -> dict[str, Path]:
    """Write report.html, report.md (+ figure files) and summary.json into out_dir; return their paths.

    profile: the params profile to report (default: the one written to most recently).
    deviations: this profile's known deviations from the paper's protocol, listed verbatim.
    load_samples / load_cifar: loaders for sample images (default: notbugs.construct.load_samples /
    notbugs.data.load); a set that fails to load is reported as not built yet, or as unreadable where its
    folder exists.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, profile, profiles = _load_tables(results_root, profile)
    models_on_disk, sets_on_disk = _on_disk(Path(data_dir))
    periods = _weight_periods(tables["models"], models_on_disk)
    evals = _latest_evaluations(tables["evaluations"], periods)
    models = _current_models(tables["models"], models_on_disk)
    arch = _main_arch(models)
    fig2 = [_measure(ref, models, evals, arch) for ref in FIGURE2]
    tab1 = [_measure(ref, models, evals, arch) for ref in TABLE1]
    points = _transfer_points(tables["transfer"], models, evals, periods)
    construction = _construction_stats(tables["datasets"], sets_on_disk)
    grid, sample_notes = _sample_grid(Path(data_dir), n_samples, load_samples or _default_load_samples,
                                      load_cifar or _default_load_cifar)
    flags = _flag_lines(fig2, tab1)
    figure3, r = _figure3_blocks(points)
    claims = _claims(fig2, tab1, points, r, evals)
    unrecorded = _unrecorded(tables["models"], models_on_disk)
    curves = _epoch_curves(tables["epochs"], tables["models"], models_on_disk)

    behind = _runs_behind(tables, models, evals, models_on_disk, sets_on_disk, points)
    used = _images_used(models, evals[evals["model_id"].isin(models["model_id"])])
    blocks = (_header_blocks(profile, profiles, tables["runs"], behind)
              + _data_blocks(Path(data_dir), tables["datasets"], used) + _claim_blocks(claims)
              + _deviation_blocks(flags, deviations, _shown_runs(tables["runs"], behind))
              + _figure2_blocks(fig2, unrecorded) + _table1_blocks(tab1)
              + _unreported_blocks(_unreported_sets(tables["models"], tables["datasets"]))
              + figure3 + _sample_blocks(grid, sample_notes)
              + _construction_blocks(construction) + _curves_blocks(curves) + _evaluations_blocks(evals))

    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md", "summary": out_dir / "summary.json"}
    markdown, files = _render_markdown(blocks)
    paths.update({Path(name).stem: out_dir / name for name in files})
    summary = _summary(profile, fig2, tab1, points, r, claims, construction, flags, deviations)
    writes = [(out_dir / name, data) for name, data in files.items()]
    writes += [(paths["html"], _render_html(blocks).encode()), (paths["markdown"], markdown.encode()),
               (paths["summary"], (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())]
    for i, (path, data) in enumerate(writes):
        try:
            atomic_write_bytes(path, data)  # each file whole or not at all
        except ArtefactError as e:  # disk full, read-only folder: the files before it are this run's, the rest not
            mixed = f"; the report in {out_dir} now mixes this run's files with the last one's" if i else ""
            raise ArtefactError(f"report: {e}{mixed}; run `notbugs report` again once it can write there") from e
    return paths
