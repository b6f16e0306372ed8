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

This file holds the report's sections, in the order they appear, and its entry points; beside it:
report_paper.py (the paper's numbers), report_tables.py (reading the result tables), report_claims.py
(whether the paper's claims hold), report_samples.py (the sample images), report_svg.py (the figures,
as small SVG functions: no matplotlib, the library stays light) and report_blocks.py (the blocks and
their HTML and Markdown rendering).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from notbugs import results
from notbugs.report_blocks import Bullets, Figure, Flag, Heading, Note, Para, Table, render_html, render_markdown
from notbugs.report_claims import (CLEAR_SE, MIN_ARCHS, Claim, clearly_above, critical_r, judge_claims, pearson,
                                   relation_holds)
from notbugs.report_paper import (CHANCE, CONSTRUCTED, FIGURE2, PAPER_CLAIM, ROBUST_EPS, SET_LABEL, TABLE1, PaperRow,
                                  bar_group, row_label)
from notbugs.report_samples import SAMPLE_SIZE, SampleGrid, default_load_cifar, default_load_samples, sample_grid
from notbugs.report_svg import SERIES_COLOURS, grouped_bars_svg, scatter_svg, training_curves_svg
from notbugs.report_tables import (TRAINEE_MARK, Measured, OnDisk, Spread, TransferPoint, built_with,
                                   construction_stats, current_models, epoch_curves, latest_evaluations, latest_rows,
                                   load_tables, main_arch, measure, read_on_disk, trained_run, transfer_points,
                                   unrecorded_models, weight_periods)
from notbugs.storage import ArtefactError, atomic_write_bytes, read_json

FLAG_PTS = 5.0  # a result further than this from the paper's number is flagged


def current_evaluations(results_root="data/results", data_dir="data", profile: str | None = None) -> pd.DataFrame:
    """The `evaluations` table as the report reads it, for pandas: per model and attack setting, the latest row
    made while the weights now in `data_dir` were the model's latest. "The latest row" alone can describe other
    weights: the model's before `dvc checkout` (or DVC's run cache) put earlier ones back without running its
    stage, which writes no rows. Rows of models no longer in the data folder are kept (by their latest weights).
    Every profile's rows, or `profile`'s only (the report shows one)."""
    periods = weight_periods(results.load("models", results_root), read_on_disk(Path(data_dir))[0])
    ev = latest_evaluations(results.load("evaluations", results_root), periods)
    return ev if profile is None else ev[ev["profile"] == profile].reset_index(drop=True)


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


# ---------------------------------------------------------------- report sections


def _runs_behind(tables: dict[str, pd.DataFrame], models: pd.DataFrame, evals: pd.DataFrame,
                 models_on_disk: dict[str, OnDisk], sets_on_disk: dict[str, str],
                 points: list[TransferPoint]) -> set[str]:
    """The runs that made what the report shows: the models described (the run that trained their current
    weights: `trained_run`), their evaluations shown, the sets (those on disk, else the latest rows'; D's
    fetch), the latest transfer where Figure 3 shows its rates."""
    ids = set(evals.loc[evals["model_id"].isin(models["model_id"]), "run_id"])
    ids |= {trained_run(models, model_id, models_on_disk) for model_id in models["model_id"].unique()}
    for name, rows in latest_rows(tables["datasets"], ["name"], "created_at").groupby("name"):
        ids.add(sets_on_disk.get(name, rows["run_id"].iloc[0]))  # D's: its fetch
    if any(p.success is not None for p in points):  # Figure 3 shows the latest transfer run's rates
        ids.add(tables["transfer"].sort_values("created_at", kind="stable")["run_id"].iloc[-1])
    return ids


def _run_short(run_id) -> str:
    """A run id as the report prints it: its first 8 hex digits (32 in the tables), enough to tell a profile's
    runs apart and to find the row with `runs["run_id"].str.startswith(...)`."""
    return str(run_id)[:8]


def _runs_cell(m: Measured) -> str:
    """Figure 2's and Table 1's `runs` column: the run that trained the model, then those that scored it, as the
    Provenance table names them."""
    return ", ".join(_run_short(r) for r in m.runs) or "—"


def _runs_table(runs: pd.DataFrame) -> Table:
    rows = []
    for _, run in runs.sort_values("started_at", kind="stable").iterrows():
        # "stopped": a job out of time that saved its progress for the next one, not an error
        status = Flag(run["status"], {"ok": "ok", "stopped": "warn"}.get(run["status"], "bad"))
        rows.append((_run_short(run["run_id"]), run["stage"], status, run["code_version"], run["params_hash"],
                     run["device"], _when(run["started_at"]), _when(run["ended_at"]), _duration(float(run["wall_s"]))))
    return Table(("run", "stage", "status", "code version", "parameters", "device", "started", "ended", "wall time"),
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
                       f"{_duration(span)} from the first start to the last end. Column \"run\": the first 8 "
                       "characters of the run id (`run_id` in the result tables), by which Figure 2 and Table 1 "
                       "name the runs behind each number."))
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
    d = latest_rows(datasets[datasets["name"] == "d"], ["name"], "created_at")
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
                lines.append(Flag(f"{row_label(m.ref)} ({m.model_id}), {metric} accuracy {ours:.1f} vs paper "
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
                   "D_NR are trained with standard training only. Column \"runs\" (here and in Table 1): the "
                   "run that trained the model, then those that scored it, by the ids the Provenance table uses.")]
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
    groups = [bar_group(m.ref) for m in fig2]
    blocks.append(Figure("figure2", grouped_bars_svg(groups, series, "Figure 2: test accuracy (%)"),
                         "Figure 2: clean and robust (l2 eps 0.25) test accuracy, ours beside the paper's."))
    rows = tuple((row_label(m.ref), m.model_id or "not run yet", _pct(m.clean), _pct(m.ref.clean),
                  _compare(m.clean, m.ref.clean), _pct(m.robust), _paper_robust(m.ref),
                  _compare(m.robust, m.ref.robust, m.ref.robust_near_zero), m.ref.source, _runs_cell(m))
            for m in fig2)
    blocks.append(Table(("training", "model", "clean, ours", "clean, paper", "clean vs paper", "robust, ours",
                         "robust, paper", "robust vs paper", "paper source", "runs"), rows))
    return blocks + _spread_blocks(fig2)


def _spread_cell(value: float | None, sd: float | None) -> str:
    return "" if value is None or sd is None else f"{value:.1f} ± {sd:.1f}"


def _models_cell(spread: Spread) -> str:
    if not spread.left_out:
        return str(spread.n)
    return (f"{spread.n} ({spread.left_out} more not scored with the first's attack settings: `notbugs reevaluate` "
            "scores them all alike)")


def _spread_blocks(measured: list[Measured]) -> list:
    """Where sets have more than one model (the profile's `trainees`), the mean and spread over them."""
    spread = [m for m in measured if m.spread is not None]
    if not spread:
        return []
    rows = tuple((SET_LABEL.get(m.ref.train_set, m.ref.train_set), _models_cell(m.spread),
                  _spread_cell(m.spread.clean_mean, m.spread.clean_sd),
                  _spread_cell(m.spread.robust_mean, m.spread.robust_sd), _pct(m.clean), _pct(m.robust))
                 for m in spread)
    return [Para("Over the models trained on the set (the profile's `trainees`): the first, shown above, and those "
                 "trained by its recipe from other seeds on the same build of the set, scored with the same attack "
                 "settings. Mean ± sample standard deviation, beside the first model's numbers. The spread is that of "
                 "training alone: every one learns from the same constructed images."),
            Table(("training set", "models", "clean, mean ± sd", f"robust (eps {ROBUST_EPS}), mean ± sd",
                   "clean, first", "robust, first"), rows)]


def _unreported_sets(models: pd.DataFrame, datasets: pd.DataFrame) -> list[str]:
    """The training sets the tables hold models or a dataset row of, for which the report has no row of the
    paper's (FIGURE2, TABLE1): a set added to notbugs/sets.py, or one this code no longer knows."""
    reported = {ref.train_set for ref in FIGURE2 + TABLE1}
    held = set(models["train_set"].dropna()) | set(datasets["name"].dropna())
    return sorted(str(name) for name in held - reported)


def _other_sets_blocks(others: list[Measured]) -> list:
    """The sets without a row of the paper's (a variant of a set, a new one): a line each, and their models'
    numbers, as Figure 2 and Table 1 give them for the paper's sets, with no paper's number to compare."""
    if not others:
        return []
    rows = tuple((SET_LABEL.get(m.ref.train_set, m.ref.train_set), m.model_id or "not run yet", _pct(m.clean),
                  _pct(m.robust), "" if m.robust_steps is None else str(m.robust_steps), _runs_cell(m))
                 for m in others)
    return ([Heading("Other constructed sets"),
             Para("Sets the paper does not build (notbugs/sets.py beyond its four, or sets this code no longer "
                  "knows): the standard-trained model on each, on the real CIFAR-10 test set, as Figure 2 and Table 1 "
                  "give the paper's sets' (for a set of notbugs/sets.py, the construction table below says how it "
                  "was built).")]
            + [Para(f"{SET_LABEL.get(m.ref.train_set, m.ref.train_set)} ({m.ref.train_set}): no row of the paper's "
                    f"(notbugs/report_paper.py FIGURE2 / TABLE1), so Figure 2 and Table 1 leave it out; "
                    + ("this table has its model." if m.model_id else "no model is trained on it yet."))
               for m in others]
            + [Table(("training set", "model", "clean", f"robust (eps {ROBUST_EPS})", "attack steps", "runs"), rows)]
            + _spread_blocks(others))


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
                  _compare(m.robust, m.ref.robust, m.ref.robust_near_zero), _runs_cell(m)) for m in tab1)
    blocks.append(Table(("training set", "model", "test acc, ours", "test acc, paper", "vs paper",
                         f"robust (eps {ROBUST_EPS}), ours", "robust, paper", "robust vs paper", "runs"), rows))
    return blocks + _spread_blocks(tab1)


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
    r = pearson([p[1] for p in complete], [p[2] for p in complete])
    if complete:
        blocks.append(Figure("figure3", scatter_svg(complete, "transfer success rate (%)",
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
                   False: Flag("not positive, unlike the paper", "bad")}[relation_holds(r, len(complete))]
        blocks.append(Bullets((f"Pearson r = {r:+.2f} over {len(complete)} architectures (positive at the one-sided "
                               f"5% level from {critical_r(len(complete)):.2f})", verdict)))

    def success_cell(p: TransferPoint):
        if p.stale is not None:
            return Flag(p.stale, "warn")
        return "not run yet" if p.success is None else _pct(p.success)

    def chance_cell(p: TransferPoint):
        if p.d_det_acc is None:
            return Flag("not run yet", "missing")
        if clearly_above(p.d_det_acc, p.d_det_n, CHANCE):
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


def _construction_blocks(construction: dict[str, dict], groups: list[list[str]]) -> list:
    blocks = [Heading("Construction statistics"),
              Para("D_R / D_NR: l2 distance between the constructed image's representation and the target "
                   "image's, at the start (the random start image) and at the end of the matching, absolute and "
                   "relative to the target representation's norm. D_rand / D_det: success rate of the targeted "
                   "attack on the source model. The paper reports neither; they show whether construction did "
                   "its job. \"Built with\": the parameters its recorded recipe holds (an l2 step size for "
                   "matching, which decays linearly where two are given), and, for sets built alike but from "
                   "random streams of their own (replicates: the same recipe on other start images or targets), "
                   "each one's stream.")]
    if not construction:
        return blocks + [Note("No constructed set is recorded in the datasets table yet: not run yet.")]

    def start_final(stats, kind):
        start, final = stats.get(f"start_{kind}"), stats.get(f"final_{kind}")
        if start is None and final is None:
            return "—"
        return " → ".join("—" if v is None else f"{float(v):.3f}" for v in (start, final))

    replicates = {name for group in groups for name in group}  # `_replicates`' groups
    rows = []
    for name in CONSTRUCTED:
        if name not in construction:
            rows.append((SET_LABEL[name], Flag("not run yet", "missing"), "", "", "", "", ""))
            continue
        entry, stats = construction[name], construction[name]["stats"]
        success = stats.get("success_rate")
        how = built_with(entry["recipe"])
        if name in replicates:
            how += f"; draws of stream {entry['recipe']['set']['stream']}"
        rows.append((SET_LABEL[name], str(entry["n_images"]), entry["source_model_id"] or "—",
                     how, start_final(stats, "distance"), start_final(stats, "relative"),
                     "—" if success is None else _pct(100.0 * float(success))))
    blocks.append(Table(("set", "images", "source model", "built with", "distance start → final",
                         "relative start → final", "attack success (%)"), tuple(rows)))
    return blocks


def _replicates(construction: dict[str, dict]) -> list[list[str]]:
    """Groups of sets whose recorded recipes are alike but for their name and random stream (kind, source model,
    targets, parameters, subset, precision, code): replicates, the same recipe on other draws (config.validate
    allows them only for sets that draw). Each group in the table's order (notbugs/sets.py)."""
    alike: dict[str, list[str]] = {}
    for name in [n for n in CONSTRUCTED if n in construction] + sorted(set(construction) - set(CONSTRUCTED)):
        recipe = construction[name]["recipe"]
        spec = recipe.get("set")
        if isinstance(spec, dict) and "stream" in spec:  # recorded from 2026-12-07
            rest = {**recipe, "name": None, "set": {**spec, "stream": None}}
            alike.setdefault(json.dumps(rest, sort_keys=True), []).append(name)
    return [names for names in alike.values() if len(names) > 1]


def _build_scores(m: Measured) -> tuple[float | None, float | None]:
    """A build's clean and robust accuracy: the mean over its models where it has more than one, else its first's."""
    if m.spread is None:
        return m.clean, m.robust
    return m.spread.clean_mean, m.spread.robust_mean


def _replicate_rows(groups: list[list[str]], measured: list[Measured]) -> list[dict]:
    """Per group of replicates: each build's scores (`_build_scores`) and their mean and sample standard
    deviation over the builds scored (None below two)."""
    by_set = {m.ref.train_set: m for m in measured if m.ref.training == "standard"}
    out = []
    for group in groups:
        builds = {name: _build_scores(by_set[name]) if name in by_set else (None, None) for name in group}
        row = {"sets": group, "builds": {name: {"clean": c, "robust": r} for name, (c, r) in builds.items()}}
        for i, key in enumerate(("clean", "robust")):
            values = [b[i] for b in builds.values() if b[i] is not None]
            enough = len(values) >= 2
            row[f"{key}_mean"] = statistics.mean(values) if enough else None
            row[f"{key}_sd"] = statistics.stdev(values) if enough else None
        out.append(row)
    return out


def _replicates_blocks(rows: list[dict]) -> list:
    """The spread over construction draws, for sets built more than once alike (replicates)."""
    if not rows:
        return []
    cells = tuple((", ".join(SET_LABEL.get(n, n) for n in row["sets"]),
                   ", ".join(_pct(b["clean"]) for b in row["builds"].values()),
                   _spread_cell(row["clean_mean"], row["clean_sd"]),
                   ", ".join(_pct(b["robust"]) for b in row["builds"].values()),
                   _spread_cell(row["robust_mean"], row["robust_sd"])) for row in rows)
    return [Heading("Replicates: the spread over construction draws"),
            Para("Sets built alike but from random streams of their own (the same recipe on other start images or "
                 "targets). Each build's score is the mean over its models where it has several (the profile's "
                 "`trainees`), else its first model's; then their mean ± sample standard deviation over the "
                 "builds. That spread holds the draws' share and what is left of the training seeds' after "
                 "averaging within a build."),
            Table(("sets", "clean per build", "clean over builds, mean ± sd", f"robust (eps {ROBUST_EPS}) per build",
                   "robust over builds, mean ± sd"), cells)]


def _curves_blocks(curves: dict[str, pd.DataFrame]) -> list:
    blocks = [Heading("Training curves")]
    if not curves:
        return blocks + [Note("No training epoch is recorded yet: not run yet.")]
    return blocks + [Figure("training_curves", training_curves_svg(curves),
                            "Training loss and training accuracy per epoch, one row per model.")]


def _evaluations_blocks(evals: pd.DataFrame) -> list:
    blocks = [Heading("All evaluations"),
              Para("The latest evaluation of every model under every attack setting: eps, steps, restarts, and "
                   "the step (its l2 size, and whether each image is scored by its worst iterate, the highest-loss "
                   "one, or by the last). A re-evaluation with the same setting supersedes an older row; rows made "
                   "before a model was retrained are left out. Figure 2 and Table 1 use the strongest setting at "
                   "eps 0.25 (most steps x restarts).")]
    if evals.empty:
        return blocks + [Note("No evaluation yet: not run yet.")]
    rows = tuple((e["model_id"], e["test_set"], e["attack"], f"{e['eps']:g}", str(e["steps"]), str(e["restarts"]),
                  _step(e), _pct(100.0 * e["accuracy"]), str(e["n"]), _when(e["evaluated_at"]))
                 for _, e in evals.sort_values(["model_id", "attack", "eps", "steps", "restarts", "step_size",
                                                "use_best"]).iterrows())
    return blocks + [Table(("model", "test set", "attack", "eps", "steps", "restarts", "step", "accuracy (%)", "n",
                            "evaluated"), rows)]


def _step(e: pd.Series) -> str:
    """An attack's step size and the iterate that scores an image: "0.0625, worst", "0.0625, last"; "-" for
    none; "not recorded" in rows written before 2026-12-08."""
    if e["attack"] == "none":
        return "-"
    if pd.isna(e["step_size"]) or pd.isna(e["use_best"]):
        return "not recorded"
    return f"{float(e['step_size']):.4g}, {'worst' if bool(e['use_best']) else 'last'}"


def _summary(profile, fig2, tab1, others, points, r, claims, construction, flags, deviations, replicates) -> dict:
    def rounded(v):
        return None if v is None else round(v, 2)

    def entry(m: Measured) -> dict:
        out = {"model_id": m.model_id, "clean": rounded(m.clean), "robust": rounded(m.robust),
               "paper_clean": m.ref.clean, "paper_robust": m.ref.robust}
        if m.spread is not None:  # the profile's `trainees` > 1
            out["trainees"] = {key: rounded(v) if isinstance(v, float) else v
                               for key, v in dataclasses.asdict(m.spread).items()}
        return out

    return {
        "profile": profile,
        "figure2": {m.ref.key: entry(m) for m in fig2},
        "table1": {m.ref.key: entry(m) for m in tab1},
        "other_sets": {m.ref.key: entry(m) for m in others},  # no paper's numbers: theirs are null
        "figure3": {"points": {p.arch: {"transfer_success": rounded(p.success), "d_det_acc": rounded(p.d_det_acc)}
                               for p in points},
                    "pearson_r": rounded(r)},
        "claims": {c.key: c.holds for c in claims},
        "construction": {name: entry["stats"] for name, entry in construction.items()},
        # groups of sets built alike from their own draws: each build's scores and their spread over builds
        "replicates": [{"sets": row["sets"],
                        "builds": {n: {k: rounded(v) for k, v in b.items()} for n, b in row["builds"].items()},
                        **{k: rounded(row[k]) for k in ("clean_mean", "clean_sd", "robust_mean", "robust_sd")}}
                       for row in replicates],
        "flags": [f.text for f in flags],
        "deviations": list(deviations or []),
    }


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
    tables, profile, profiles = load_tables(results_root, profile)
    models_on_disk, sets_on_disk = read_on_disk(Path(data_dir))
    periods = weight_periods(tables["models"], models_on_disk)
    evals = latest_evaluations(tables["evaluations"], periods)
    models = current_models(tables["models"], models_on_disk)
    arch = main_arch(models)
    fig2 = [measure(ref, models, evals, arch, models_on_disk) for ref in FIGURE2]
    tab1 = [measure(ref, models, evals, arch, models_on_disk) for ref in TABLE1]
    others = [measure(PaperRow(name, "standard", name, None, None, "not in the paper"), models, evals, arch,
                      models_on_disk) for name in _unreported_sets(tables["models"], tables["datasets"])]
    points = transfer_points(tables["transfer"], models, evals, periods)
    construction = construction_stats(tables["datasets"], sets_on_disk)
    grid, sample_notes = sample_grid(Path(data_dir), n_samples, load_samples or default_load_samples,
                                     load_cifar or default_load_cifar)
    flags = _flag_lines(fig2, tab1)
    figure3, r = _figure3_blocks(points)
    claims = judge_claims(fig2, tab1, points, r, evals)
    unrecorded = unrecorded_models(tables["models"], models_on_disk)
    curves = epoch_curves(tables["epochs"], tables["models"], models_on_disk)
    # a set's first model stands for its trainees, as in the tables
    curves = {model_id: rows for model_id, rows in curves.items() if TRAINEE_MARK not in model_id}

    groups = _replicates(construction)
    replicates = _replicate_rows(groups, fig2 + tab1 + others)
    behind = _runs_behind(tables, models, evals, models_on_disk, sets_on_disk, points)
    used = _images_used(models, evals[evals["model_id"].isin(models["model_id"])])
    blocks = (_header_blocks(profile, profiles, tables["runs"], behind)
              + _data_blocks(Path(data_dir), tables["datasets"], used) + _claim_blocks(claims)
              + _deviation_blocks(flags, deviations, _shown_runs(tables["runs"], behind))
              + _figure2_blocks(fig2, unrecorded) + _table1_blocks(tab1)
              + _other_sets_blocks(others) + _replicates_blocks(replicates)
              + figure3 + _sample_blocks(grid, sample_notes)
              + _construction_blocks(construction, groups) + _curves_blocks(curves) + _evaluations_blocks(evals))

    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md", "summary": out_dir / "summary.json"}
    markdown, files = render_markdown(blocks)
    paths.update({Path(name).stem: out_dir / name for name in files})
    summary = _summary(profile, fig2, tab1, others, points, r, claims, construction, flags, deviations, replicates)
    writes = [(out_dir / name, data) for name, data in files.items()]
    writes += [(paths["html"], render_html(blocks).encode()), (paths["markdown"], markdown.encode()),
               (paths["summary"], (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())]
    for i, (path, data) in enumerate(writes):
        try:
            atomic_write_bytes(path, data)  # each file whole or not at all
        except ArtefactError as e:  # disk full, read-only folder: the files before it are this run's, the rest not
            mixed = f"; the report in {out_dir} now mixes this run's files with the last one's" if i else ""
            raise ArtefactError(f"report: {e}{mixed}; run `notbugs report` again once it can write there") from e
    return paths
