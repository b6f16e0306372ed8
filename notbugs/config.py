"""Typed loading of params.yaml: one frozen dataclass per recipe section, unknown keys refused.

Validation happens here, before any work starts, so that a typo or a negative eps fails in a second
instead of after an hour of training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from notbugs.sets import KINDS, SETS, TARGETS, SetSpec, draws, set_spec

DATASETS = tuple(SETS)  # the constructed training sets' names (notbugs/sets.py), in the paper's order
SOURCE_MODELS = ("standard", "robust")  # the two source models trained on D
PROFILES = ("tiny", "cpu", "fast", "paper")
SOURCES = ("auto", "official", "mirror")
ADVERSARIAL_METHODS = ("pgd", "free")  # how adversarial training attacks its batches (AdversarialConfig.method)
DECAY = ("weights", "all")  # the parameters weight decay applies to (TrainConfig.decay)

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    source: str  # auto (the mirror where its folder exists, else official) | official | mirror
    mirror: str
    train_per_class: int
    test_per_class: int


@dataclass(frozen=True)
class SubsetConfig:
    train: int  # images used from the training set, class-balanced; 0 = all
    test: int
    seed: int


@dataclass(frozen=True)
class AugmentConfig:
    crop_pad: int  # random crop 32 after zero padding by this many pixels; 0 = off
    flip: bool
    jitter: float  # colour jitter strength (brightness, contrast, saturation), 0 = off
    rotate: float  # max rotation in degrees, 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float  # initial lr (step schedule) or peak lr (onecycle / linear)
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str  # step | onecycle | linear
    milestones: tuple[int, ...]  # epochs at which the step schedule multiplies lr by gamma
    gamma: float
    warmup: float  # fraction of all steps spent warming up (onecycle)
    label_smoothing: float
    augment: AugmentConfig
    # torch (PyTorch's defaults, the reference's) | he (notbugs.models.he_init); params.yaml must name it,
    # the default is for recipes built in code
    init: str = "torch"
    # which parameters weight decay applies to: weights (convolution and linear weights; not BatchNorm's
    # scales and shifts nor biases) | all (the reference's SGD over model.parameters()); params.yaml must name it
    decay: str = "weights"
    # decay of an exponential moving average of the weights (parameters and BatchNorm statistics), taken after
    # every SGD step; the trained model is the average. 0: the last weights, the paper's. params.yaml must name it
    ema: float = 0.0


@dataclass(frozen=True)
class AdversarialConfig:
    eps: float
    steps: int  # pgd: attack steps per batch; free: replays of each batch (one ascent and one SGD step each)
    step_size: float
    random_start: bool
    # pgd (the paper's: a fresh attack per batch, then one SGD step) | free (Shafahi et al. 2019, "Adversarial
    # training for free!"); params.yaml must name it, the default is for attacks built in code
    method: str = "pgd"
    # train on each image's highest-loss iterate, not the last (the reference's `use_best`; pgd only)
    use_best: bool = False


@dataclass(frozen=True)
class MatchConfig:
    steps: int
    step_size: float
    final_step_size: float  # step size decays linearly from step_size to this; equal = constant (paper)
    use_best: bool = False  # keep each image's nearest iterate, not the last (the reference's `use_best`)
    # differentiate through the reference's fake ReLU on the representation (models.FakeReLU)
    fake_relu: bool = False


@dataclass(frozen=True)
class PGDConfig:
    eps: float
    steps: int
    step_size: float
    use_best: bool = False  # keep each image's lowest target-loss iterate, not the last (the reference's `use_best`)


@dataclass(frozen=True)
class ConstructConfig:
    seed: int
    shard_size: int
    batch_size: int
    match: MatchConfig
    pgd: PGDConfig


@dataclass(frozen=True)
class EvalConfig:
    eps: tuple[float, ...]  # robust accuracy at each of these l2 radii
    steps: int
    step_factor: float  # step size = step_factor * eps / steps
    restarts: int
    batch_size: int
    use_best: bool = False  # attack with each image's highest-loss iterate, not the last (the reference's `use_best`)


@dataclass(frozen=True)
class TransferConfig:
    archs: tuple[str, ...]
    width: float
    n: int  # test images attacked on the source model


@dataclass(frozen=True)
class Profile:
    subset: SubsetConfig
    arch: str
    width: float
    train: TrainConfig
    adversarial: AdversarialConfig
    source_on: dict  # standard | robust -> TrainConfig (the base recipe with that source model's overrides)
    train_on: dict  # dataset name -> TrainConfig (the base recipe with that set's overrides)
    construct: ConstructConfig
    # dataset name -> the overrides of its kind's construction parameters (construct.match | construct.pgd), e.g.
    # {"eps": 1.0}; read through construct_params, which applies them to the section as it is (not a copy)
    construct_on: dict
    evaluate: EvalConfig
    reevaluate: EvalConfig
    transfer: TransferConfig
    # models trained on each constructed set, each from its own seed: 1 is the paper's; n > 1 gives the report a
    # mean and spread over n (the first is the one every table shows)
    trainees: int
    compile: bool  # torch.compile the model for construction (D_R, D_NR, D_rand, D_det): speed only
    compile_train: str  # eager | default | reduce-overhead (CUDA graphs): torch.compile for training; speed only
    # `notbugs all`: compile construction's graphs in a second process while the source models train; speed only
    compile_ahead: bool
    checkpoint_minutes: float  # a training checkpoint at the first epoch end this long after the last (0: every epoch)
    precision: str  # auto (bf16 where the device has it natively, else fp32) | bf16 | fp32
    name: str = ""


@dataclass(frozen=True)
class Params:
    profile: Profile
    data: DataConfig
    raw: dict = field(repr=False, compare=False)  # the resolved profile as plain data, for hashing
    paper: Profile | None = field(default=None, repr=False, compare=False)  # the exact protocol, for comparison

    def deviations(self) -> list[str]:
        """Every setting of this profile that differs from the `paper` profile (subset 0 = all images)."""
        if self.paper is None:
            return []
        ours, theirs = dataclasses.asdict(self.profile), dataclasses.asdict(self.paper)
        for tree, prof in ((ours, self.profile), (theirs, self.paper)):  # each set as it is built, overrides applied
            tree["construct_on"] = {n: dataclasses.asdict(construct_params(prof, n)) for n in prof.construct_on}
        speed_only = ("compile", "compile_train", "compile_ahead", "checkpoint_minutes")
        # a label, switches of speed only, and more models of the same recipe (the first is the paper's one)
        for key in ("name", "trainees", *speed_only):
            ours.pop(key), theirs.pop(key)
        out = []
        for key, a, b in _diff(ours, theirs):
            parts = key.split(".")
            if parts[0] == "construct" and parts[1] in KINDS and not _inherited(self.profile, parts[1], parts[2]):
                continue  # every set of the kind overrides it: the section's value builds nothing
            # per-model recipes and per-set construction: only where they differ beyond the base they override
            if parts[0] in ("train_on", "source_on", "construct_on"):
                base = ".".join(["train", *parts[2:]] if parts[0] != "construct_on"
                                else ["construct", set_spec(parts[1]).kind, *parts[2:]])
                if (a, b) == (_get(ours, base), _get(theirs, base)):
                    continue
            out.append(f"{key}: {a!r} (paper: {b!r})")
        return out

    def hash(self, *sections: str) -> str:
        """Short hash of the named profile sections (all when none), each a key or a dotted path such
        as "construct.pgd" (None where the profile lacks it): provenance of a stage's recipe."""
        body = self.raw if not sections else {s: _get(self.raw, s) for s in sections}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def construct_params(p: Profile, name: str) -> MatchConfig | PGDConfig:
    """The parameters that build set `name`: its kind's section of the profile (construct.match | construct.pgd)
    with the set's own overrides (construct_on.<name>; none for a set added to notbugs/sets.py in a test only)."""
    return dataclasses.replace(_kind_section(p, name), **p.construct_on.get(name, {}))


def _kind_section(p: Profile, name: str) -> MatchConfig | PGDConfig:
    """The profile's construction parameters of set `name`'s kind, before its own overrides."""
    return p.construct.match if set_spec(name).kind == "match" else p.construct.pgd


def _inherited(p: Profile, kind: str, key: str) -> bool:
    """Whether some set of `kind` is built with its kind's section's `key`, not an override of its own."""
    return any(set_spec(name).kind == kind and key not in override for name, override in p.construct_on.items())


def construct_changes(p: Profile, name: str) -> dict:
    """What set `name`'s overrides change: those of its construct_on keys whose value differs from its kind's
    section (restating a value changes nothing), with their values."""
    base = _kind_section(p, name)
    return {key: value for key, value in p.construct_on.get(name, {}).items() if value != getattr(base, key)}


def recipe_for(params: Params, name: str, override: dict | None = None) -> TrainConfig:
    """The training recipe of constructed set `name` (or of source model `standard` / `robust`), with
    `override` (keys as under `train_on` / `source_on`) merged over it and validated: for experiments
    on a recipe without editing params.yaml."""
    section = "source_on" if name in SOURCE_MODELS else "train_on"
    raw = params.raw
    where = f"profiles.{params.profile.name}.{section}.{name}(+override)"
    merged = _merge(_merge(raw["train"], raw[section].get(name) or {}, where), override or {}, where)
    cfg = _build(TrainConfig, merged, where)
    validate(dataclasses.replace(params.profile, **{section: {**getattr(params.profile, section), name: cfg}}))
    return cfg


def adversarial_for(params: Params, override: dict | None = None) -> AdversarialConfig:
    """The profile's adversarial-training attack with `override` merged over it and validated."""
    where = f"profiles.{params.profile.name}.adversarial(+override)"
    cfg = _build(AdversarialConfig, _merge(params.raw["adversarial"], override or {}, where), where)
    validate(dataclasses.replace(params.profile, adversarial=cfg))
    return cfg


def _get(tree: dict, dotted: str):
    """The value at a dotted path such as "construct.pgd"; None for a path the tree lacks."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _diff(ours, theirs, prefix: str = ""):
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in ours:
            yield from _diff(ours[key], theirs.get(key), f"{prefix}{key}.")
    elif ours != theirs:
        yield prefix.rstrip("."), ours, theirs


def _build(cls, data, where: str):
    """Make dataclass `cls` from a dict, refusing unknown or missing keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "raw")]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; accepted: {names}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return cls(**{n: _convert(hints[n], data[n], f"{where}.{n}") for n in names})


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is dict or origin is dict:
        return value
    if isinstance(hint, types.UnionType):
        raise ConfigError(f"{where}: unsupported type {hint}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads 5e-4 (no dot) as a string
            hint_text = f"; write it as {float(value)!r} (YAML reads {value} as text)" if _numeric(value) else ""
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint_text}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def _numeric(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _merge(base: dict, override: dict, where: str) -> dict:
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: expected a mapping of overrides (e.g. {{epochs: 24}}), got {override!r}")
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; accepted: {sorted(base)}")
        both_mappings = isinstance(value, dict) and isinstance(base[key], dict)
        out[key] = _merge(base[key], value, f"{where}.{key}") if both_mappings else value
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_sets(sets: dict[str, SetSpec]) -> None:
    """The table of constructed sets (notbugs/sets.py) is one the pipeline can build: known kinds, sources and
    targets, and a random stream of its own for each set. That no two sets are built alike depends on the
    profile's parameters as well: `validate` checks it."""
    where = "notbugs/sets.py"
    streams: dict[int, str] = {}
    labels: dict[str, str] = {}
    for name, s in sets.items():
        _check(s.label not in labels, f"{where}: sets {labels.get(s.label)!r} and {name!r} are both labelled "
                                      f"{s.label!r}: the report could not tell them apart")
        labels[s.label] = name
        _check(s.kind in KINDS, f"{where}: set {name!r} has kind {s.kind!r}; accepted: {'|'.join(KINDS)}")
        _check(s.source in SOURCE_MODELS,
               f"{where}: set {name!r} has source {s.source!r}; accepted: {'|'.join(SOURCE_MODELS)}")
        _check(s.targets is None if s.kind == "match" else s.targets in TARGETS,
               f"{where}: set {name!r} of kind {s.kind!r} has targets {s.targets!r}; a matching set takes None, a "
               f"PGD set {'|'.join(TARGETS)}")
        _check(isinstance(s.stream, int) and s.stream >= 0 and s.stream not in streams,
               f"{where}: set {name!r} has random stream {s.stream!r}, "
               + (f"the stream of {streams[s.stream]!r}" if s.stream in streams else "not an integer >= 0")
               + f"; give it one no other set has (taken: {sorted(streams)})")
        streams[s.stream] = name


def validate(p: Profile) -> None:
    """Range checks that types alone cannot express."""
    from notbugs.attacks import PRECISIONS  # late imports: config loading must stay cheap
    from notbugs.compiling import TRAIN_COMPILE
    from notbugs.models import ARCHS, FAKE_RELU_ARCHS, INITS

    where = f"profiles.{p.name}"
    for key, archs in (("arch", (p.arch,)), ("transfer.archs", p.transfer.archs)):
        for arch in archs:
            _check(arch in ARCHS, f"{where}.{key}: unknown architecture {arch!r}; accepted: {sorted(ARCHS)} "
                                  f"(notbugs.archs.ARCHS: README, 'Extending')")
    _check(p.width > 0 and p.transfer.width > 0, f"{where}: width must be > 0")
    _check(p.subset.train >= 0 and p.subset.test >= 0, f"{where}.subset: sizes must be >= 0 (0 = all)")
    _check(p.subset.train % 10 == 0 and p.subset.test % 10 == 0,
           f"{where}.subset: sizes must be multiples of the 10 classes (class-balanced), got train "
           f"{p.subset.train}, test {p.subset.test}")
    _check(set(p.train_on) == set(DATASETS), f"{where}.train_on: needs exactly {list(DATASETS)}")
    _check(set(p.source_on) == set(SOURCE_MODELS), f"{where}.source_on: needs exactly {list(SOURCE_MODELS)}")
    per_model = [(f"{section}.{k}", v) for section in ("source_on", "train_on") for k, v in getattr(p, section).items()]
    for name, t in [("train", p.train)] + per_model:
        w = f"{where}.{name}"
        _check(t.epochs > 0, f"{w}.epochs must be > 0, got {t.epochs}")
        _check(t.batch_size > 0, f"{w}.batch_size must be > 0")
        _check(t.lr > 0, f"{w}.lr must be > 0, got {t.lr}")
        _check(0 <= t.momentum < 1, f"{w}.momentum must be in [0, 1), got {t.momentum}")
        _check(not t.nesterov or t.momentum > 0, f"{w}: nesterov needs a momentum > 0, got {t.momentum}")
        # torch checks its optimizer's default, not the per-group value train() gives it: a negative one would run
        _check(t.weight_decay >= 0, f"{w}.weight_decay must be >= 0, got {t.weight_decay}")
        _check(t.gamma > 0, f"{w}.gamma (the step schedule's lr factor) must be > 0, got {t.gamma}")
        _check(t.schedule in ("step", "onecycle", "linear"), f"{w}.schedule must be step|onecycle|linear")
        _check(0 <= t.warmup < 1, f"{w}.warmup must be in [0, 1)")
        _check(0 <= t.label_smoothing < 1, f"{w}.label_smoothing must be in [0, 1)")
        _check(t.augment.crop_pad >= 0 and t.augment.jitter >= 0 and t.augment.rotate >= 0,
               f"{w}.augment: values must be >= 0")
        _check(t.init in INITS, f"{w}.init must be one of {'|'.join(INITS)}, got {t.init!r}")
        _check(t.decay in DECAY, f"{w}.decay must be one of {'|'.join(DECAY)}, got {t.decay!r}")
        _check(0 <= t.ema < 1, f"{w}.ema must be in [0, 1) (0: no average), got {t.ema}")
    a = p.adversarial
    _check(a.eps > 0 and a.steps > 0 and a.step_size > 0, f"{where}.adversarial: eps, steps, step_size must be > 0")
    _check(a.method in ADVERSARIAL_METHODS,
           f"{where}.adversarial.method must be one of {'|'.join(ADVERSARIAL_METHODS)}, got {a.method!r}")
    _check(not (a.use_best and a.method == "free"),
           f"{where}.adversarial.use_best needs method pgd: free training keeps no attack iterates to choose from")
    c = p.construct
    _check(c.shard_size > 0 and c.batch_size > 0, f"{where}.construct: shard_size and batch_size must be > 0")
    _check(set(p.construct_on) == set(DATASETS), f"{where}.construct_on: needs exactly {list(DATASETS)}")
    params_of = {name: construct_params(p, name) for name in SETS}  # each set's, its overrides applied
    per_set = [(f"construct_on.{name}", m) for name, m in params_of.items() if name in p.construct_on]
    for name, m in [("construct.match", c.match), ("construct.pgd", c.pgd)] + per_set:
        w = f"{where}.{name}"
        if isinstance(m, MatchConfig):
            _check(m.steps > 0 and m.step_size > 0 and m.final_step_size > 0, f"{w}: steps and step sizes must be > 0")
            _check(not m.fake_relu or p.arch in FAKE_RELU_ARCHS,
                   f"{w}.fake_relu: not implemented for {p.arch}; it is for {', '.join(FAKE_RELU_ARCHS)}")
        else:
            _check(m.eps > 0 and m.steps > 0 and m.step_size > 0, f"{w}: eps, steps, step_size must be > 0")
            # each step moves an image by step_size (l2), and nothing starts it elsewhere: an eps beyond their sum
            # is never reached, so the set would be built as at that sum, whatever its eps says
            _check(m.steps * m.step_size >= m.eps * (1 - 1e-9),
                   f"{w}: {m.steps} steps of {m.step_size:g} move an image at most {m.steps * m.step_size:g}, short "
                   f"of eps {m.eps:g}, so eps would change nothing; give it a larger step_size or more steps")
    built: dict[tuple, str] = {}
    for name, s in SETS.items():
        # same kind, source, targets and parameters, and a set with nothing to draw: the same images. A set that
        # draws (start images, random targets) is built from its own stream, so two such are replicates: the
        # same recipe on other draws, for the spread over construction draws
        how = (s.kind, s.source, s.targets, params_of[name], s.stream if draws(s) else None)
        _check(how not in built,
               f"{where}: sets {built.get(how)!r} and {name!r} (notbugs/sets.py) are both kind {s.kind!r} from the "
               f"{s.source} model with targets {s.targets!r}, built with the same parameters, and draw nothing "
               f"(the targets are fixed and the attack starts at the image): they would be the same images. A "
               f"variant of a set differs in its construction parameters: give it its own in "
               f"construct_on.{name} (README, 'Extending')")
        built[how] = name
    for name, e in (("evaluate", p.evaluate), ("reevaluate", p.reevaluate)):
        _check(all(x > 0 for x in e.eps), f"{where}.{name}.eps: every eps must be > 0, got {list(e.eps)}")
        _check(e.steps > 0 and e.restarts > 0 and e.batch_size > 0 and e.step_factor > 0,
               f"{where}.{name}: steps, restarts, batch_size, step_factor must be > 0")
    _check(p.transfer.n > 0 and p.transfer.n % 10 == 0,
           f"{where}.transfer.n must be > 0 and a multiple of the 10 classes (n / 10 test images of each), "
           f"got {p.transfer.n}")
    _check(p.trainees >= 1, f"{where}.trainees (models trained on each constructed set) must be >= 1, got "
                            f"{p.trainees}")
    _check(p.checkpoint_minutes >= 0, f"{where}.checkpoint_minutes must be >= 0, got {p.checkpoint_minutes}")
    _check(p.compile_train in TRAIN_COMPILE,
           f"{where}.compile_train must be one of {'|'.join(TRAIN_COMPILE)}, got {p.compile_train!r}")
    _check(p.precision in PRECISIONS, f"{where}.precision must be one of {'|'.join(PRECISIONS)}, got {p.precision!r}")


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read params.yaml, pick the profile (argument > NOTBUGS_PROFILE > `profile:` key), validate it.

    The data source and mirror can be overridden from the environment (NOTBUGS_DATA_SOURCE,
    NOTBUGS_MIRROR) so that an offline machine points at its mirror without editing params.
    """
    check_sets(SETS)
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        doc = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        message = " ".join(str(e).replace('"<unicode string>"', str(path)).split())
        raise ConfigError(f"{path}: not valid YAML ({message})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(doc) - {"profile", "data", "profiles"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; accepted: data, profile, profiles")
    env = os.environ.get("NOTBUGS_PROFILE")
    name, chosen_by = ((profile, "the profile argument") if profile else (env, "NOTBUGS_PROFILE") if env
                       else (doc.get("profile"), f"{path}'s `profile:`"))
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: `profiles` must be a mapping of profile names to profiles")
    if name not in profiles:
        raise ConfigError(f"{path}: unknown profile {name!r} (chosen by {chosen_by}); defined: {sorted(profiles)}")
    if not profile and env and env != doc.get("profile"):
        # dvc.lock records params.yaml's profile: a stage run under another one records the wrong inputs
        if os.environ.get("DVC_STAGE"):  # set by DVC for its stages' commands: there it would mislead `dvc status`
            raise ConfigError(f"NOTBUGS_PROFILE={env} under `dvc repro` (stage {os.environ['DVC_STAGE']}), while "
                              f"{path} says profile {doc.get('profile')!r}: dvc.lock would record "
                              f"{doc.get('profile')!r}'s parameters for {env!r}'s results. Choose the profile in "
                              f"{path} (`profile: {env}`, or `dvc exp run -S profile={env}`), or unset "
                              f"NOTBUGS_PROFILE")
        log.warning("profile %r from NOTBUGS_PROFILE, not %r from %s: `dvc repro` would record the wrong profile "
                    "(scripts/pipeline.sh writes the choice into params.yaml instead)", env, doc.get("profile"), path)

    data = doc.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"data: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    for key, var in (("source", "NOTBUGS_DATA_SOURCE"), ("mirror", "NOTBUGS_MIRROR")):
        if var in os.environ:
            data[key] = os.environ[var]
    data_cfg = _build(DataConfig, data, "data")
    from_env = " (from NOTBUGS_DATA_SOURCE)" if "NOTBUGS_DATA_SOURCE" in os.environ else ""
    _check(data_cfg.source in SOURCES,
           f"data.source must be one of {list(SOURCES)}, got {data_cfg.source!r}{from_env}")
    _check(data_cfg.train_per_class > 0 and data_cfg.test_per_class > 0,
           f"data.train_per_class and data.test_per_class (the images per class fetch verifies) must be > 0, got "
           f"{data_cfg.train_per_class} and {data_cfg.test_per_class}")

    prof = _profile(name, profiles[name])
    paper = _profile("paper", profiles["paper"]) if "paper" in profiles else None
    return Params(profile=prof, data=data_cfg, raw=dict(profiles[name]), paper=paper)


def _profile(name: str, raw: dict) -> Profile:
    where = f"profiles.{name}"
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("train", "source_on", "train_on")):
        raise ConfigError(f"{where}: needs mappings 'train', 'source_on' and 'train_on'")
    # The shared recipe first, so that its errors name `train`, not the first per-model copy of it.
    _build(TrainConfig, raw["train"], f"{where}.train")
    # an empty entry is {} or nothing (YAML's null); 0, false, "" or [] are refused by _merge, not taken as empty
    per_model = {section: {k: _build(TrainConfig, _merge(raw["train"], {} if v is None else v,
                                                         f"{where}.{section}.{k}"), f"{where}.{section}.{k}")
                           for k, v in raw[section].items()}
                 for section in ("source_on", "train_on")}
    fields = {k: ({} if k in (*per_model, "construct_on") else v) for k, v in raw.items()}
    prof = dataclasses.replace(_build(Profile, fields, where), name=name, **per_model)
    prof = dataclasses.replace(prof, construct_on=_construct_on(raw, where))
    validate(prof)
    return prof


def _construct_on(raw: dict, where: str) -> dict:
    """Each set's overrides of its kind's section of `construct`, checked against it and typed as its fields."""
    sets = raw.get("construct_on")
    if not isinstance(sets, dict):
        raise ConfigError(f"{where}.construct_on: expected a mapping of constructed sets to overrides of their "
                          f"kind's construction parameters (e.g. {{d_det: {{eps: 1.0}}}}), got {sets!r}")
    out = {}
    for name, override in sets.items():
        w = f"{where}.construct_on.{name}"
        try:
            kind = set_spec(name).kind
        except ValueError as e:
            raise ConfigError(f"{w}: {e}") from None
        cls = MatchConfig if kind == "match" else PGDConfig
        override = {} if override is None else override  # null as {}; 0, false, "" or [] refused by _merge
        built = _build(cls, _merge(raw["construct"][kind], override, f"{w} (over construct.{kind})"), w)
        out[name] = {key: getattr(built, key) for key in override}
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: by default the
    last one silently wins, so an override added without removing the old line would be half-applied."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found the key {key!r} twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)
