"""The constructed training sets, one entry each: what builds a set, from which source model, and its name in
the report. Everything else (the CLI's choices, the pipeline's steps, the construction, the report's labels)
reads this table, so that a new set is one entry here plus its lines in params.yaml and dvc.yaml (README,
"Extending").

This file is not part of any set's code digest (construct.CONSTRUCT_CODE, steps.STEP_CODE): each set's recipe
and step hash hold its own entry instead (`construction`), so that adding or editing one entry rebuilds that
set alone, not the others' shards (hours each at `paper` scale).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KINDS = ("match", "pgd")  # representation matching (D_R, D_NR) | targeted l2 PGD, relabelled as the target
TARGETS = ("random", "next")  # a PGD set's target: uniform over the classes | (label + 1) mod classes


@dataclass(frozen=True)
class SetSpec:
    # KINDS; its parameters are the profile's construct.match / construct.pgd with the set's own overrides, the
    # profile's construct_on.<name> (config.construct_params)
    kind: str
    source: str  # the source model it is built from: "standard" | "robust" (config.SOURCE_MODELS)
    targets: str | None  # TARGETS for a PGD set; None for a matching set, which keeps each image's label
    # The random stream of its draws (start images, random targets): numpy's default_rng([seed, stream]).
    # Each set has its own, so that sets do not share draws; an existing set's must never change (its
    # images would).
    stream: int
    label: str  # its name in the report ("D_R"); not part of the recipe, so renaming it rebuilds nothing


# The paper's four sets (its Section 3), in its order
SETS: dict[str, SetSpec] = {
    "d_r": SetSpec(kind="match", source="robust", targets=None, stream=0, label="D_R"),
    "d_nr": SetSpec(kind="match", source="standard", targets=None, stream=1, label="D_NR"),
    "d_rand": SetSpec(kind="pgd", source="standard", targets="random", stream=2, label="D_rand"),
    "d_det": SetSpec(kind="pgd", source="standard", targets="next", stream=3, label="D_det"),
}


def set_spec(name: str) -> SetSpec:
    """The entry of constructed set `name`; an unknown name is an error that says where sets are defined."""
    if name not in SETS:
        raise ValueError(f"unknown constructed set {name!r}; accepted: {', '.join(SETS)} "
                         f"(defined in notbugs/sets.py: README, 'Extending')")
    return SETS[name]


def draws(s: SetSpec) -> bool:
    """Whether a set's images depend on its random stream: a matching set's start images and a PGD set's random
    targets are drawn; D_det's targets are fixed (label + 1) and its attack starts at the image. Two sets that
    differ in their stream alone are then replicates, the same recipe on other draws, or the same images."""
    return s.kind == "match" or s.targets == "random"


# A set's models after the first (the profile's `trainees`): folders models/<set>/trainee-<k>, model ids
# <the first's id>/trainee-<k>. Part of every such model's id and seed: never to change.
TRAINEE = "trainee-"


def trainee_path(first: str, k: int) -> str:
    """The folder name or model id of a set's trainee k > 1, under its first model's (`first`)."""
    return f"{first}/{TRAINEE}{k}"


def trainee_number(name: str) -> int | None:
    """k of a trainee's folder name, path or model id (`trainee_path`); None for any other name."""
    last = name.rsplit("/", 1)[-1]
    k = last.removeprefix(TRAINEE)
    return int(k) if last.startswith(TRAINEE) and k.isascii() and k.isdigit() else None


def first_of(name: str) -> str:
    """The first model's folder name or id for a trainee's (`trainee_path`); any other name as it is."""
    return name.rsplit("/", 1)[0] if trainee_number(name) is not None else name


def construction(name: str) -> dict:
    """What of set `name`'s entry decides its images (all but the label): part of its recipe and step hash."""
    fields = dataclasses.asdict(set_spec(name))
    del fields["label"]
    return fields
