"""Command line: one subcommand per pipeline stage, in pipeline order.

    notbugs fetch                     CIFAR-10 from the official archive or a mirror, verified
    notbugs source standard|robust    train the standard / l2-adversarial source model on D
    notbugs construct d_r|d_nr|d_rand|d_det
    notbugs train d_r|d_nr|d_rand|d_det
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
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from notbugs.config import DATASETS, PROFILES, ConfigError, load_params
from notbugs.deadline import EXIT_INTERRUPTED, EXIT_STOPPED, Deadline, Stopped, expired
from notbugs.models import arch_code
from notbugs.storage import ArtefactError, package_digest, read_json, sha256_bytes, write_json

STAGES = [
    ("fetch", "get CIFAR-10 (official archive or offline mirror), verify it, write the canonical arrays"),
    ("source", "train a source model on D: 'standard' (C) or 'robust' (l2 adversarial, C_R)"),
    ("construct", "build a constructed training set: d_r, d_nr (representation matching), d_rand, d_det (PGD)"),
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


# What each step of `notbugs all` reads, as dvc.yaml declares it for `dvc repro` (tests/test_cli.py
# checks that the two agree): the profile's parameters (dotted keys under the profile), the library files
# whose code it runs, and the steps whose outputs it reads. A step reruns when any of them changes, so
# editing one recipe reruns that recipe's steps and their dependents, not every step (which would score
# every model again), and updated science code (STEP_CODE; not stages.py, config.py or data.py's subset draw)
# reruns what it computes.
STEP_PARAMS = {
    "fetch": (),
    # {own}: the section only that source model reads, as dvc.yaml's foreach item names it
    "source": ("subset", "precision", "arch", "width", "train", "source_on.{item}", "{own}", "evaluate"),
    "construct": ("subset", "precision", "construct.seed", "construct.shard_size", "construct.batch_size",
                  "construct.{recipe}"),
    "train": ("subset", "precision", "arch", "width", "train_on.{item}", "train", "evaluate"),
    "transfer": ("subset", "precision", "transfer", "train", "source_on.standard", "train_on.d_det", "construct.pgd",
                 "evaluate"),
}


# A rerun step's checkpoints and shards made by other code are not reused (train.TRAIN_CODE,
# construct.CONSTRUCT_CODE: parts of these lists). Each step also runs the code of the architectures it builds
# (step_archs, models.arch_code), so that an edit to VGG-16 reruns the transfer step only.
STEP_CODE = {
    "fetch": ("data.py", "storage.py"),
    "source": ("subset.py", "train.py", "attacks.py", "augment.py", "evaluate.py"),
    "construct": ("subset.py", "construct.py", "attacks.py"),
    "train": ("subset.py", "train.py", "attacks.py", "augment.py", "evaluate.py"),
    "transfer": ("subset.py", "train.py", "attacks.py", "augment.py", "evaluate.py"),
}


def step_archs(params, step: str) -> tuple[str, ...]:
    """The architectures whose models `step` (e.g. "construct@d_r") trains or reads."""
    stage, p = step.partition("@")[0], params.profile
    if stage == "fetch":
        return ()
    if stage == "transfer":  # the profile's own: the standard source model, and train@d_det's model it reuses
        return tuple(dict.fromkeys((p.arch, *p.transfer.archs)))
    return (p.arch,)


def step_code(params, step: str) -> tuple[str, ...]:
    """The library files `step` runs: its stage's STEP_CODE and its architectures' code, each file once."""
    archs = [f for arch in step_archs(params, step) for f in arch_code(arch)]
    return tuple(dict.fromkeys((*STEP_CODE[step.partition("@")[0]], *archs)))


def code_digest(params, step: str) -> str:
    """SHA-256 (16 hex digits) of the library files `step` runs (`step_code`)."""
    return package_digest(*step_code(params, step))


def upstream_steps(step: str) -> tuple[str, ...]:
    """The steps whose outputs `step` reads (dvc.yaml's deps on data/ folders)."""
    from notbugs.stages import construct_source

    stage, _, item = step.partition("@")
    if stage == "source":
        return ("fetch",)
    if stage == "construct":
        return ("fetch", f"source@{construct_source(item)}")
    if stage == "train":
        return ("fetch", f"construct@{item}")
    if stage == "transfer":
        return ("fetch", "source@standard", "construct@d_det", "train@d_det")
    return ()


def step_params(step: str) -> tuple[str, ...]:
    """The dotted profile keys `step` (e.g. "construct@d_r") reads."""
    from notbugs.construct import MATCHING

    stage, _, item = step.partition("@")
    recipe = "match" if item in MATCHING else "pgd"
    own = "adversarial" if item == "robust" else f"source_on.{item}"  # the standard model never attacks
    return tuple(k.format(item=item, recipe=recipe, own=own) for k in STEP_PARAMS[stage])


def step_hash(params, step: str, arrays: str | None = None) -> str:
    """Hash of what `step` reads: its parameters, its code, and what comes to it from the steps before.
    For fetch, where the arrays go and how many per class (not the source, which is verified); for every
    other step, the fetched arrays themselves (`arrays`: `arrays_digest`), as `dvc repro` sees them, so
    that new fetch code that writes the same arrays reruns fetch alone, and the other upstream steps' hashes."""
    keys = step_params(step)  # none for fetch, where params.hash() would hash the whole profile
    body: dict = {"profile": params.profile.name, "params": params.hash(*keys) if keys else None,
                  "code": code_digest(params, step)}
    if step == "fetch":
        body["data"] = [params.data.train_per_class, params.data.test_per_class]
    else:
        body["arrays"] = arrays
        body["upstream"] = [step_hash(params, up, arrays) for up in upstream_steps(step) if up != "fetch"]
    return sha256_bytes(json.dumps(body, sort_keys=True).encode())[:16]


def arrays_digest(data_dir) -> str | None:
    """What the fetched CIFAR-10 arrays are: a digest of their SHA-256s (the fetch manifest's), or None
    where nothing readable is fetched (then no step after fetch counts as done)."""
    try:
        files = read_json(Path(data_dir) / "cifar10" / "manifest.json")["files"]
    except (OSError, ValueError, KeyError, TypeError, ArtefactError):
        return None
    return sha256_bytes(json.dumps(files, sort_keys=True).encode())[:16]


STEPS = ("fetch", "source@standard", "source@robust", *(f"construct@{n}" for n in DATASETS),
         *(f"train@{n}" for n in DATASETS), "transfer", "report")


def run_all(params, data_dir: str, device: str, skip: tuple[str, ...] = (), redo: bool = False,
            deadline: Deadline | None = None, run_step=None) -> None:
    """Every stage in one process (CUDA and the data are set up once), in pipeline order.

    Each finished step leaves a marker (data/work/done/<step>.json, with the hash of what it reads:
    `step_hash`), so a rerun, e.g. the next job on a cluster that caps job length, skips what is done
    and resumes the step that was cut (from its last checkpoint, shard or batch) without appending its
    rows twice; after a parameter changes, only the steps that read it, and their dependents, rerun. The
    steps after fetch read the arrays it wrote (by their SHA-256s), as under `dvc repro`: a fetch rerun
    that writes the same arrays reruns nothing else.
    Out of time (`deadline`), the step under way stops at its next safe point; no step starts after
    the time is up, once one has run. With the profile's `compile_ahead`, construction's compile runs
    in a second process while the source models train (`notbugs.warmup`).
    `run_step(step)`, where given, runs each step (a name of STEPS) instead of the stage function here:
    the Prefect flow `reproduce` runs them as its subflows, with the same skipping and warm-up.
    """
    from notbugs import stages as S
    from notbugs import warmup

    @functools.cache
    def split():  # the data, read once (after fetch, and only if a stage needs it) for every stage
        return S.load_split(params, data_dir)

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
    steps = [(step, step.partition("@")[0]) for step in STEPS if step != "fetch"]
    log = logging.getLogger("notbugs")
    done_dir = Path(data_dir) / "work" / "done"

    def to_do(step: str, h: str) -> bool:
        if redo or _marker(done_dir / f"{step}.json").get("params_hash") != h:
            return True
        log.info("%s: already done with these parameters (%s), skipping; --redo reruns it", step,
                 done_dir / f"{step}.json")
        return False

    def inputs_changed(step: str) -> bool:
        """Whether what `step` read from the steps before it (their models and sets, by content) differs from
        what it has now: put back by `dvc checkout`, or remade by a stage run on its own (a per-stage Prefect
        deployment, `notbugs source`), neither of which leaves a marker. Markers from before 2026-12-07 have
        no inputs: taken as they are."""
        before = _marker(done_dir / f"{step}.json").get("inputs")
        if before is None or before == inputs_digest(data_dir, step):
            return False
        log.info("%s: what it reads from the steps before it has changed since it ran; running it again", step)
        return True

    def output_missing(step: str) -> bool:
        """Whether the model or set a done step made is gone (deleted by hand, a folder lost): the marker alone
        would skip it, and the steps after it would then fail, or the report show nothing. A model or set
        remade since (its content differs) is not missing: the steps that read it rerun (`inputs_changed`)."""
        if step.partition("@")[0] not in ("source", "construct", "train") or output_digest(data_dir, step):
            return False
        log.info("%s: done before, but its output is missing or unreadable; running it again", step)
        return True

    def mark_done(step: str, h: str) -> None:
        write_json(done_dir / f"{step}.json", {"step": step, "profile": params.profile.name, "params_hash": h,
                                               "inputs": inputs_digest(data_dir, step)})

    # fetch first: the steps after it depend on the arrays it writes (their SHA-256s), not on its code
    ran = False
    if "fetch" not in skip:
        h = step_hash(params, "fetch")
        if to_do("fetch", h):
            run("fetch")
            ran = True
            mark_done("fetch", h)
    arrays = arrays_digest(data_dir)
    expected = {step: step_hash(params, step, arrays) for step, stage in steps
                if stage not in skip and step != "report"}
    todo = {step for step, h in expected.items() if to_do(step, h)}
    dev = S.pick_device(device)
    ahead = warmup.sets_to_warm(params, todo, dev)
    warming = None
    try:
        for step, stage in steps:
            if stage in skip:
                continue
            if step == "report":  # always rendered again: seconds, and it must show every row appended since
                run(step)
                continue
            if step not in todo and not output_missing(step) and not inputs_changed(step):
                continue
            if ran and expired(deadline):
                raise Stopped(f"{deadline.reason} before step {step}")
            if stage == "source" and ahead:  # started once, before the first source model to train
                warming, ahead = warmup.start(params, ahead, data_dir, dev), []
            if stage == "construct" and warming is not None and warming.returncode is None:  # not waited for yet
                warmup.finish(warming)
            run(step)
            ran = True
            mark_done(step, expected[step])
    finally:
        warmup.stop(warming)


def _marker(path: Path) -> dict:
    try:
        marker = read_json(path)
    except (OSError, ValueError, ArtefactError):  # missing or unreadable: not done
        return {}
    return marker if isinstance(marker, dict) else {}


def output_digest(data_dir, step: str) -> str | None:
    """What a finished step left for the steps after it, by content: a model's checkpoint hash (its meta.json),
    a set's shard hashes (its manifest); None where missing or unreadable. Not their run ids: a rerun that
    restores a finished checkpoint writes a new one."""
    from notbugs.stages import dataset_dir, model_dir

    stage, _, item = step.partition("@")
    try:
        if stage in ("source", "train"):
            folder = model_dir(data_dir, item)
            if not (folder / "model.pt").is_file():
                return None
            return str(read_json(folder / "meta.json")["checkpoint_sha256"])
        if stage == "construct":
            folder = dataset_dir(data_dir, item)
            shards = read_json(folder / "manifest.json")["shards"]
            if not all((folder / shard["file"]).is_file() for shard in shards):
                return None
            return sha256_bytes(json.dumps([shard["sha256"] for shard in shards]).encode())[:16]
    except (OSError, ValueError, KeyError, TypeError, ArtefactError):
        return None
    return None


def inputs_digest(data_dir, step: str) -> dict:
    """{upstream step: output_digest} of the steps whose models and sets `step` reads."""
    return {up: output_digest(data_dir, up) for up in upstream_steps(step) if up != "fetch"}


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
            run_all(params, args.data_dir, args.device, tuple(args.skip), args.redo, deadline)
            out = results.summary(S.results_root(args.data_dir))
            if "report" not in args.skip:  # where to look next
                out["report"] = str(Path(args.data_dir) / "report" / "report.html")
        elif args.stage == "clean":
            out = S.clean_checkpoints(args.data_dir, args.dry_run)
        else:
            out = results.summary(S.results_root(args.data_dir))
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
