"""The steps of the pipeline and what each reads (parameters, code, the steps before it), and the marker a
finished step leaves (data/work/done/<step>.json), by which `notbugs all` and the Prefect flow `reproduce`
skip what is done. Every run of a step leaves its marker (`record.recorded_run`), however it was run (`notbugs
all`, `notbugs <stage>`, a Prefect deployment, `dvc repro`), so `notbugs all` after `dvc repro` skips the
steps DVC ran. The report (rendered every time) and `reevaluate` (no step of the pipeline) leave none."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from notbugs.config import DATASETS, construct_changes
from notbugs.models import arch_code
from notbugs.sets import construction, set_spec
from notbugs.storage import ArtefactError, package_digest, read_json, sha256_bytes, write_json

# What each step of `notbugs all` reads, as dvc.yaml declares it for `dvc repro` (tests/test_cli.py
# checks that the two agree): the profile's parameters (dotted keys under the profile), the library files
# whose code it runs, and the steps whose outputs it reads. A step reruns when any of them changes, so
# editing one recipe reruns that recipe's steps and their dependents, not every step (which would score
# every model again), and updated science code (STEP_CODE; not the plumbing, stages.py, record.py, units.py,
# nor config.py or data.py's subset draw) reruns what it computes.
STEP_PARAMS = {
    "fetch": (),
    # {own}: the section only that source model reads, as dvc.yaml's foreach item names it
    "source": ("subset", "precision", "arch", "width", "train", "source_on.{item}", "{own}", "evaluate"),
    "construct": ("subset", "precision", "construct.seed", "construct.shard_size", "construct.batch_size",
                  "construct.{recipe}", "construct_on.{item}"),
    "train": ("subset", "precision", "arch", "width", "train_on.{item}", "train", "evaluate", "trainees"),
    "transfer": ("subset", "precision", "transfer", "train", "source_on.standard", "train_on.d_det", "construct.pgd",
                 "construct_on.d_det", "evaluate"),
}
# A set's construction overrides are hashed as what they change (config.construct_changes), and only where they
# change something: a set with none hashes as before construct_on existed, so that upgrading leaves every finished
# step done, and restating a value of its kind's section reruns nothing.
PER_SET = "construct_on."


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
# The table of constructed sets is in no step's code: a construct step hashes its set's own entry instead
# (step_hash, sets.construction), so that adding or editing one set reruns that set's steps alone. dvc.yaml
# cannot hash one entry of a file: it lists the table as a dep of every construct stage (STEP_TABLES), so that
# `dvc repro` reruns them all when it changes; each rerun finds its shards done by recipe hash (which holds the
# entry, not the file) and keeps them.
STEP_TABLES = {"construct": ("sets.py",)}


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
    stage, _, item = step.partition("@")
    if stage == "source":
        return ("fetch",)
    if stage == "construct":
        return ("fetch", f"source@{set_spec(item).source}")
    if stage == "train":
        return ("fetch", f"construct@{item}")
    if stage == "transfer":
        return ("fetch", "source@standard", "construct@d_det", "train@d_det")
    return ()


def step_params(step: str) -> tuple[str, ...]:
    """The dotted profile keys `step` (e.g. "construct@d_r") reads."""
    stage, _, item = step.partition("@")
    recipe = set_spec(item).kind if stage == "construct" else None  # construct.match | construct.pgd
    own = "adversarial" if item == "robust" else f"source_on.{item}"  # the standard model never attacks
    return tuple(k.format(item=item, recipe=recipe, own=own) for k in STEP_PARAMS[stage])


def step_hash(params, step: str, arrays: str | None = None) -> str:
    """Hash of what `step` reads: its parameters, its code, and what comes to it from the steps before.
    For fetch, how many images per class (not the source, which is verified, nor the folder, which holds the
    markers); for every other step, the fetched arrays themselves (`arrays`: `arrays_digest`), as `dvc repro`
    sees them, so that new fetch code that writes the same arrays reruns fetch alone, and the other upstream
    steps' hashes."""
    keys = step_params(step)  # none for fetch, where params.hash() would hash the whole profile
    plain = tuple(k for k in keys if not k.startswith(PER_SET))
    body: dict = {"profile": params.profile.name, "params": params.hash(*plain) if keys else None,
                  "code": code_digest(params, step)}
    changes = {k: construct_changes(params.profile, k[len(PER_SET):]) for k in keys if k.startswith(PER_SET)}
    changes = {k: v for k, v in changes.items() if v}  # an empty entry is left out of the hash
    if changes:
        body["construct_on"] = changes
    stage, _, item = step.partition("@")
    if stage == "construct":  # its own entry of sets.py, not the file: a new set leaves this hash alone
        body["set"] = construction(item)
    if step == "fetch":
        body["data"] = [params.data.train_per_class, params.data.test_per_class]
    else:
        body["arrays"] = arrays
        # the steps before it as one trainee each: the steps after a train step read its first model only
        # (transfer, train@d_det's), which more trainees leave as it is. With 1, as every profile has, the hash is
        # as it always was
        one = dataclasses.replace(params, raw={**params.raw, "trainees": 1})
        body["upstream"] = [step_hash(one, up, arrays) for up in upstream_steps(step) if up != "fetch"]
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


def output_digest(data_dir, step: str) -> str | None:
    """What a finished step left for the steps after it, by content: fetch's arrays (`arrays_digest`), a model's
    checkpoint hash (its meta.json), a set's shard hashes (its manifest); None where missing or unreadable. Not
    their run ids: a rerun that restores a finished checkpoint writes a new one."""
    from notbugs.record import dataset_dir, model_dir

    stage, _, item = step.partition("@")
    try:
        if stage == "fetch":  # the arrays, where every file the manifest lists is there
            files = read_json(Path(data_dir) / "cifar10" / "manifest.json")["files"]
            return arrays_digest(data_dir) if all((Path(data_dir) / "cifar10" / f).is_file() for f in files) else None
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


def output_recipe(data_dir, step: str) -> str | None:
    """What made the output a finished step left, as its files say (a digest): the arrays (fetch); a model's id
    and recipe (its meta.json); a set's recipe hash (its manifest: parameters, code and source model); Figure 3's
    models' ids and recipes (transfer). None where the output, or a file of it, is missing or unreadable. The
    same recipe's weights trained elsewhere (another GPU's, brought by `dvc pull`) are the same output here,
    where `output_digest` tells them apart for the steps that read them."""
    from notbugs.record import dataset_dir, model_dir, trainee_dirs

    stage, _, item = step.partition("@")
    if stage == "fetch":  # the arrays are both what was made and how
        return output_digest(data_dir, step)
    if stage in ("source", "train", "construct") and output_digest(data_dir, step) is None:
        return None
    try:
        if stage == "source":
            metas = [read_json(model_dir(data_dir, item) / "meta.json")]
        elif stage == "train":  # the set's first model, then its other trainees (the profile's `trainees`)
            folders = [model_dir(data_dir, item), *trainee_dirs(data_dir, item)]
            if not all((f / "model.pt").is_file() for f in folders):
                return None
            metas = [read_json(f / "meta.json") for f in folders]
        elif stage == "construct":
            return str(read_json(dataset_dir(data_dir, item) / "manifest.json")["recipe_hash"])
        elif stage == "transfer":
            folders = sorted(f.parent for f in (Path(data_dir) / "models" / "transfer").rglob("meta.json"))
            if not folders or not all((f / "model.pt").is_file() for f in folders):
                return None
            metas = [read_json(f / "meta.json") for f in folders]
        else:
            return None
        made = [[m["model_id"], m["recipe"]] for m in metas]
        return sha256_bytes(json.dumps(made, sort_keys=True).encode())[:16]
    except (OSError, ValueError, KeyError, TypeError, ArtefactError):
        return None


def inputs_digest(data_dir, step: str) -> dict:
    """{upstream step: output_digest} of the steps whose models and sets `step` reads."""
    return {up: output_digest(data_dir, up) for up in upstream_steps(step) if up != "fetch"}


def marker_path(data_dir, step: str) -> Path:
    return Path(data_dir) / "work" / "done" / f"{step}.json"


def read_marker(data_dir, step: str) -> dict:
    """The marker `step` left when it last finished; {} where none, or unreadable (then: not done)."""
    try:
        marker = read_json(marker_path(data_dir, step))
    except (OSError, ValueError, ArtefactError):
        return {}
    return marker if isinstance(marker, dict) else {}


def mark_done(params, data_dir, step: str, h: str) -> None:
    """Record that `step` finished: the hash of what it read (`step_hash`, taken when it started), what it read
    from the steps before it (by content) and what made its output (`output_recipe`), so that a model or set of
    another recipe, put back by `dvc checkout` without running its step, is noticed."""
    write_json(marker_path(data_dir, step), {"step": step, "profile": params.profile.name, "params_hash": h,
                                             "inputs": inputs_digest(data_dir, step),
                                             "output": output_recipe(data_dir, step)})


def current_hash(params, data_dir, step: str) -> str:
    """`step_hash` against the arrays fetched now (for a step run on its own; `notbugs all` computes it once)."""
    return step_hash(params, step) if step == "fetch" else step_hash(params, step, arrays_digest(data_dir))
