"""Command line: one subcommand per pipeline stage, in pipeline order.

    notbugs fetch                     CIFAR-10 from the official archive or a mirror, verified
    notbugs source standard|robust    train the standard / l2-adversarial source model on D
    notbugs construct SET             build a constructed set, one of notbugs/sets.py's (d_r, ...)
    notbugs train SET                 train the profile's architecture on it
    notbugs transfer                  Figure 3
    notbugs report                    HTML + Markdown report from the result tables
    notbugs reevaluate                re-score every trained model under the current suite
    notbugs all [--skip transfer]     every stage in order (what `dvc repro` runs), in one process
    notbugs results                   row counts of the result tables

Every subcommand takes --params, --profile, --data-dir and --device. Runs without Prefect or DVC.
The stages that train, build or score take --time-limit MINUTES; they, and SIGTERM, stop a job at
its next safe point with its progress saved, exit 75, and the same command run again continues.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import yaml

from notbugs import steps
from notbugs.config import DATASETS, PROFILES, ConfigError, load_params
from notbugs.deadline import EXIT_INTERRUPTED, EXIT_STOPPED, Deadline, Stopped, expired
from notbugs.sets import SETS

STAGES = [
    ("fetch", "get CIFAR-10 (official archive or offline mirror), verify it, write the canonical arrays"),
    ("source", "train a source model on D: 'standard' (C) or 'robust' (l2 adversarial, C_R)"),
    ("construct", "build a constructed training set: "
                  + ", ".join(f"{n} ({s.kind})" for n, s in SETS.items()) + " (notbugs/sets.py)"),
    ("train", "train the profile's architecture on a constructed set, test on the real test set"),
    ("transfer", "Figure 3: transfer success and D_det accuracy for each architecture"),
    ("report", "render the HTML and Markdown report from the result tables"),
    ("reevaluate", "re-score every trained model under the profile's reevaluate suite (appends rows)"),
    ("all", "run every stage above in pipeline order (fetch .. report)"),
    ("results", "print the row count of each result table"),
    ("clean", "delete the training checkpoints that runs of another recipe, data or code set aside "
              "(data/work/**/checkpoint-<signature>.pt)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notbugs", description="Reproduce 'Adversarial Examples Are Not Bugs, They Are Features' on CIFAR-10.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages in pipeline order:\n" + "\n".join(f"  {n:<11} {h}" for n, h in STAGES))
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True,
                                help="one of the stages below; `notbugs STAGE --help` for its options")
    for name, help_text in STAGES:
        p = sub.add_parser(name, description=help_text)
        p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.add_argument("--profile", choices=PROFILES, help="override the profile named in the parameter file")
        p.add_argument("--data-dir", default="data", help="where artefacts and result tables live (default: data)")
        p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
        if name == "source":
            p.add_argument("kind", choices=["standard", "robust"], help="which source model")
        if name in ("construct", "train"):
            p.add_argument("dataset", choices=DATASETS, help="which constructed set")
        if name == "report":
            p.add_argument("--out", default=None, help="output folder (default: <data-dir>/report)")
        if name in STOPPABLE:
            p.add_argument("--time-limit", type=_minutes, default=None, metavar="MINUTES",
                           help="stop at the first safe point after this many minutes (after a batch; leave a "
                                "margin of one model's evaluation), progress saved, exit 75: for clusters that "
                                "cap job length, run the same command again until it exits 0")
        if name == "clean":
            p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
        if name == "all":
            p.add_argument("--skip", action="append", default=[], choices=[s for s, _ in STAGES[:6]],
                           help="leave this stage out (repeatable), e.g. --skip transfer: Figure 2 and Table 1 only")
            p.add_argument("--redo", action="store_true",
                           help="rerun steps already done with these parameters (default: skip them)")
    return parser


STOPPABLE = ("source", "construct", "train", "transfer", "reevaluate", "all")


def _minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")  # refused below, with the message that says what is wanted
    if not minutes >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes >= 0")
    return minutes


def run_all(params, data_dir: str, device: str, skip: tuple[str, ...] = (), redo: bool = False,
            deadline: Deadline | None = None, run_step=None) -> None:
    """Every stage in one process (CUDA and the data are set up once), in pipeline order.

    Each finished step leaves a marker (data/work/done/<step>.json, with the hash of what it reads:
    `step_hash`; `notbugs.steps`), so a rerun, e.g. the next job on a cluster that caps job length, skips what is done
    and resumes the step that was cut (from its last checkpoint, shard or batch) without appending its
    rows twice; after a parameter changes, only the steps that read it, and their dependents, rerun. The
    steps after fetch read the arrays it wrote (by their SHA-256s), as under `dvc repro`: a fetch rerun
    that writes the same arrays reruns nothing else.
    Out of time (`deadline`), the step under way stops at its next safe point; no step starts after
    the time is up, once one has run. With the profile's `compile_ahead`, construction's compile runs
    in a second process while the source models train (`notbugs.warmup`).
    `run_step(step)`, where given, runs each step (a name of STEPS) instead of the stage function here:
    the Prefect flow `reproduce` runs them as its subflows, with the same skipping and warm-up. It must run
    them through the stage functions, whose `recorded_run` leaves each step's marker.
    """
    from notbugs import stages as S
    from notbugs import warmup
    from notbugs.record import exclusive
    from notbugs.units import load_split

    @functools.cache
    def split():  # the data, read once (after fetch, and only if a stage needs it) for every stage
        return load_split(params, data_dir)

    def run_here(step: str) -> None:
        stage, _, item = step.partition("@")
        if stage == "fetch":
            S.stage_fetch(params, data_dir, device)
        elif stage == "source":
            S.stage_source(params, item, data_dir, device, deadline=deadline, split=split())
        elif stage == "construct":
            S.stage_construct(params, item, data_dir, device, deadline=deadline, split=split())
        elif stage == "train":
            S.stage_train(params, item, data_dir, device, deadline=deadline, split=split())
        elif stage == "transfer":
            S.stage_transfer(params, data_dir, device, deadline=deadline, split=split())
        else:
            S.stage_report(params, data_dir, None, device)

    run = run_step or run_here
    order = [(step, step.partition("@")[0]) for step in steps.STEPS if step != "fetch"]
    log = logging.getLogger("notbugs")

    def to_do(step: str, h: str) -> bool:
        if redo or steps.read_marker(data_dir, step).get("params_hash") != h or output_changed(step):
            return True
        log.info("%s: already done with these parameters (%s), skipping; --redo (the flow's redo) reruns it", step,
                 steps.marker_path(data_dir, step))
        return False

    def inputs_changed(step: str) -> bool:
        """Whether what `step` read from the steps before it (their models and sets, by content) differs from
        what it has now: put back by `dvc checkout`, or remade by a stage run since. Markers from before
        2026-12-07 have no inputs: taken as they are."""
        before = steps.read_marker(data_dir, step).get("inputs")
        if before is None or before == steps.inputs_digest(data_dir, step):
            return False
        log.info("%s: what it reads from the steps before it has changed since it ran; running it again", step)
        return True

    def output_changed(step: str) -> bool:
        """Whether the arrays, models or set a done step made are not on disk as it left them: gone (deleted by
        hand, a folder lost), or made by another recipe and put back by `dvc checkout` or DVC's run cache without
        running the step (the marker alone would pass them off as this recipe's). The same recipe's weights from
        elsewhere (`dvc pull`) are kept; the steps that read them rerun (`inputs_changed`). Markers written before
        they recorded the output (2026-12-07) count only a missing one."""
        now = steps.output_recipe(data_dir, step)
        if now is not None and steps.read_marker(data_dir, step).get("output", now) == now:
            return False
        log.info("%s: done before, but its output is missing, unreadable or not the one it made; running it again",
                 step)
        return True

    # one at a time on a data folder: a second would run every step again beside the first, appending every row twice
    lock = Path(data_dir) / "work" / "all.lock"
    with exclusive(lock, "`notbugs all` (or the flow `reproduce`) on this data folder"):
        # fetch first: the steps after it depend on the arrays it writes (their SHA-256s), not on its code
        ran = False
        if "fetch" not in skip:
            h = steps.step_hash(params, "fetch")
            if to_do("fetch", h):
                run("fetch")  # its marker left by the stage (`record.recorded_run`), as every step's
                ran = True
        arrays = steps.arrays_digest(data_dir)
        expected = {step: steps.step_hash(params, step, arrays) for step, stage in order
                    if stage not in skip and step != "report"}
        todo = {step for step, h in expected.items() if to_do(step, h)}
        dev = S.pick_device(device)
        ahead = warmup.sets_to_warm(params, todo, dev)
        warming = None
        try:
            for step, stage in order:
                if stage in skip:
                    continue
                if step == "report":  # always rendered again: seconds, and it must show every row appended since
                    run(step)
                    continue
                if step not in todo and not inputs_changed(step):
                    continue
                if ran and expired(deadline):
                    raise Stopped(f"{deadline.reason} before step {step}")
                if stage == "source" and ahead:  # started once, before the first source model to train
                    warming, ahead = warmup.start(params, ahead, data_dir, dev), []
                if stage == "construct" and warming is not None and warming.returncode is None:  # not waited for yet
                    warmup.finish(warming)
                run(step)
                ran = True
        finally:
            warmup.stop(warming)


def checkout_digest(root: Path) -> str:
    """A digest of what dvc.yaml's stages read from the checkout: params.yaml, dvc.yaml and the library's code."""
    h = hashlib.sha256()
    for path in [root / "params.yaml", root / "dvc.yaml", *sorted((root / "notbugs").rglob("*.py"))]:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()


def dvc_hint(args, profile: str, digest_before: str | None) -> str | None:
    """What to run so that `dvc repro` takes up a finished `notbugs all` in a DVC checkout: DVC keeps its own
    record (dvc.lock), which `notbugs all` does not write (the library imports no DVC, and the GPU machine may
    not have it). Only where the run is the one dvc.yaml describes: from the checkout's root, its data folder,
    parameter file and profile, every stage; `digest_before`: `checkout_digest` when the run started."""
    here = Path.cwd().resolve()
    if not (here / "dvc.yaml").exists() or not (here / ".dvc").is_dir():
        return None
    if shutil.which("dvc") is None and not (Path(sys.executable).parent / "dvc").exists():  # a venv not activated
        return None
    data = (here / "data").resolve()
    # a data folder linked outside the checkout is DVC's to refuse ("outside of git repository"), not to record
    if args.skip or Path(args.data_dir).resolve() != data or not data.is_relative_to(here):
        return None
    if Path(args.params).resolve() != here / "params.yaml":
        return None
    try:
        named = yaml.safe_load((here / "params.yaml").read_text()).get("profile")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if named != profile:  # --profile or NOTBUGS_PROFILE: dvc.lock would record params.yaml's for another's outputs
        return None
    try:
        changed = digest_before != checkout_digest(here)
    except OSError:  # a file gone or unreadable since the run started (a `git checkout` under way)
        changed = True
    if changed:
        return ("notbugs all: params.yaml, dvc.yaml or the library's code changed while it ran, so `dvc commit` "
                "could record the new files beside outputs of the old: `dvc repro` runs the stages that changed "
                "again (each resuming what it finds done).")
    return ("notbugs all: dvc.lock has no record of this run, so `dvc repro` would run its stages again (each "
            "resuming what it finds done). To record it, run `dvc commit -f dvc.yaml` now, before editing code or "
            "params.yaml: DVC hashes what the stages read and wrote as they are at that moment.")


def _stop_on_sigterm(deadline: Deadline):
    """SIGTERM (from `timeout`, a scheduler) asks the job to stop at its next safe point; a second
    one ends it at once. Returns the handler that was there before."""
    def handler(signum, frame):
        if deadline.reason:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        deadline.stop("SIGTERM received")
        logging.getLogger("notbugs").warning("SIGTERM: stopping at the next safe point (send it again to end now)")
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may set handlers (main() called from a worker thread)
    return signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit = getattr(args, "time_limit", None)
    deadline = Deadline(None if limit is None else 60 * limit)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params, args.profile)
    except ConfigError as e:
        print(f"notbugs: bad parameters: {e}", file=sys.stderr)
        return 2
    from notbugs import results
    from notbugs import stages as S
    from notbugs.record import results_root

    chosen = "--profile" if args.profile else f"from {args.params}"  # NOTBUGS_PROFILE logs its own warning
    logging.getLogger("notbugs").info("profile %s (%s)", params.profile.name, chosen)
    earlier_handler = _stop_on_sigterm(deadline)
    try:
        if args.stage == "fetch":
            out = S.stage_fetch(params, args.data_dir, args.device)
            out = {"counts": out["counts"], "source": out["source"], "origin": out["origin"]}
        elif args.stage == "source":
            out = S.stage_source(params, args.kind, args.data_dir, args.device, deadline=deadline)
        elif args.stage == "construct":
            out = S.stage_construct(params, args.dataset, args.data_dir, args.device, deadline=deadline)
        elif args.stage == "train":
            out = S.stage_train(params, args.dataset, args.data_dir, args.device, deadline=deadline)
        elif args.stage == "transfer":
            out = S.stage_transfer(params, args.data_dir, args.device, deadline=deadline)
        elif args.stage == "report":
            out = S.stage_report(params, args.data_dir, args.out, args.device)
        elif args.stage == "reevaluate":
            out = S.stage_reevaluate(params, args.data_dir, args.device, deadline=deadline)
        elif args.stage == "all":
            try:
                before = checkout_digest(Path.cwd().resolve()) if Path("dvc.yaml").exists() else None
            except OSError:  # unreadable code or params: the run goes on, and its end advises no commit
                before = None
            run_all(params, args.data_dir, args.device, tuple(args.skip), args.redo, deadline)
            out = results.summary(results_root(args.data_dir))
            if "report" not in args.skip:  # where to look next
                out["report"] = str(Path(args.data_dir) / "report" / "report.html")
            hint = dvc_hint(args, params.profile.name, before)
            if hint:
                print(hint, file=sys.stderr)
        elif args.stage == "clean":
            out = S.clean_checkpoints(args.data_dir, args.dry_run)
        else:
            out = results.summary(results_root(args.data_dir))
    except Stopped as e:
        print(f"notbugs {args.stage}: stopped early: {e}. Progress is saved; run the same command again to "
              f"continue (exit {EXIT_STOPPED}).", file=sys.stderr)
        return EXIT_STOPPED
    except (ValueError, RuntimeError, FloatingPointError, OSError) as e:
        print(f"notbugs {args.stage}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what the last checkpoint, shard or row holds is kept, as for a kill
        print(f"notbugs {args.stage}: interrupted. Finished models, shards and rows, and the last training "
              f"checkpoint, are saved; run the same command again to continue (exit {EXIT_INTERRUPTED}).",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if earlier_handler is not None:
            signal.signal(signal.SIGTERM, earlier_handler)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
