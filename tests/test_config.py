import pytest
import yaml

from notbugs.config import DATASETS, SOURCE_MODELS, ConfigError, adversarial_for, load_params, recipe_for
from tests.conftest import ROOT, write_params


def test_every_profile_of_the_project_loads():
    for name in ("tiny", "cpu", "fast", "paper"):
        p = load_params(ROOT / "params.yaml", name)
        assert p.profile.name == name
        assert set(p.profile.train_on) == set(DATASETS)


def test_paper_profile_is_the_protocol():
    """Every number of ../shared/docs/protocol.md that `paper` carries, for every model it trains: a
    change to any of them would make `paper` something else."""
    p = load_params(ROOT / "params.yaml", "paper").profile
    assert (p.subset.train, p.subset.test, p.arch, p.width) == (0, 0, "resnet50", 1.0)  # all of CIFAR-10
    # the paper's four sets (notbugs/sets.py may hold more of your own)
    recipes = {"train": p.train, **p.source_on, **{name: p.train_on[name] for name in DATASETS[:4]}}
    assert set(recipes) == {"train", *SOURCE_MODELS, "d_r", "d_nr", "d_rand", "d_det"}
    for name, t in recipes.items():
        assert (t.epochs, t.batch_size, t.momentum, t.nesterov, t.weight_decay) == (150, 128, 0.9, False, 5e-4), name
        assert (t.schedule, t.milestones, t.gamma, t.label_smoothing) == ("step", (50, 100), 0.1, 0.0), name
        assert (t.init, t.decay, t.ema) == ("torch", "all", 0.0), name  # the reference's init, SGD, last weights
        # the paper's per-set table, one reading (protocol.md): D_rand lr 0.01, D_det without augmentation
        assert t.lr == (0.01 if name == "d_rand" else 0.1), name
        augment = (0, False, 0.0, 0.0) if name == "d_det" else (4, True, 0.25, 2.0)
        assert (t.augment.crop_pad, t.augment.flip, t.augment.jitter, t.augment.rotate) == augment, name
    a = p.adversarial
    assert (a.method, a.eps, a.steps, a.step_size, a.random_start, a.use_best) == ("pgd", 0.5, 7, 0.1, False, True)
    m = p.construct.match  # constant steps of 0.1: a decaying rule would be a deviation
    assert (m.steps, m.step_size, m.final_step_size, m.use_best) == (1000, 0.1, 0.1, True)
    assert m.fake_relu is True  # the reference's inversion loss (layers.FakeReLU)
    assert (p.construct.pgd.eps, p.construct.pgd.steps, p.construct.pgd.step_size) == (0.5, 100, 0.1)
    e = p.evaluate
    assert (e.eps, e.steps, e.step_factor, e.restarts, e.use_best) == ((0.25,), 20, 2.5, 1, True)
    assert (p.reevaluate.steps, p.reevaluate.step_factor) == (100, 2.5)  # the released checkpoints' 100-step score
    assert sorted(p.transfer.archs) == sorted(["vgg16", "inception_v3", "densenet121", "resnet18", "resnet50"])
    assert p.transfer.width == 1.0


def test_speed_switches_are_not_deviations_from_the_paper():
    """compile, compile_train and the checkpoint cadence change speed, not results: never listed as
    a deviation."""
    for name in ("tiny", "fast"):
        params = load_params(ROOT / "params.yaml", name)
        assert params.profile.compile_train != params.paper.compile_train
        assert not any(d.startswith(("compile", "checkpoint")) for d in params.deviations())
    tiny = load_params(ROOT / "params.yaml", "tiny")
    assert tiny.profile.checkpoint_minutes != tiny.paper.checkpoint_minutes


def test_more_trainees_are_not_a_deviation_from_the_paper(tmp_path, mirror):
    """Models beyond the first on each set add a spread; the first is trained as before, so nothing deviates."""
    path = write_params(tmp_path / "p.yaml", mirror, edit=lambda d: d["profiles"]["tiny"].update(trainees=3))
    params = load_params(path)
    assert params.profile.trainees == 3 and params.paper.trainees == 1
    assert not any(d.startswith("trainees") for d in params.deviations())
    assert params.deviations() == load_params(write_params(tmp_path / "q.yaml", mirror)).deviations()


def _edited(tmp_path, mirror, edit):
    return write_params(tmp_path / "p.yaml", mirror, edit=edit)


def _fake_relu_on_vgg16(doc):
    doc["profiles"]["tiny"]["construct"]["match"]["fake_relu"] = True
    doc["profiles"]["tiny"]["arch"] = "vgg16"


def _fake_relu_on_vgg16_for_d_r(doc):
    doc["profiles"]["tiny"]["construct"]["match"]["fake_relu"] = False
    doc["profiles"]["tiny"]["construct_on"]["d_r"] = {"fake_relu": True}
    doc["profiles"]["tiny"]["arch"] = "vgg16"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["profiles"]["tiny"].update(arch="resnet1000"), "tiny.arch: unknown architecture 'resnet1000'"),
    (lambda d: d["profiles"]["tiny"]["transfer"].update(archs=["resnet9", "lenet"]),
     "tiny.transfer.archs: unknown architecture 'lenet'"),
    (lambda d: d["profiles"]["tiny"]["adversarial"].update(eps=-0.5), "adversarial"),
    # each would have failed in torch's optimizer only when its step ran, or (weight decay) not at all
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_det={"momentum": 0.0}),
     "profiles.tiny.train_on.d_det: nesterov needs a momentum > 0, got 0.0"),
    (lambda d: d["profiles"]["tiny"]["train"].update(momentum=-0.5), "profiles.tiny.train.momentum must be in"),
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_r={"weight_decay": -1.0}),
     "profiles.tiny.train_on.d_r.weight_decay must be >= 0, got -1.0"),
    (lambda d: d["profiles"]["tiny"]["train"].update(gamma=-1.0), "profiles.tiny.train.gamma"),
    (lambda d: d["data"].update(train_per_class=0), "data.train_per_class and data.test_per_class"),
    (lambda d: d["profiles"]["tiny"]["adversarial"].update(method="fgsm"),
     "adversarial.method must be one of pgd|free, got 'fgsm'"),
    (lambda d: d["profiles"]["tiny"]["adversarial"].pop("method"), "missing key(s) ['method']"),
    (lambda d: d["profiles"]["tiny"]["adversarial"].update(method="free", use_best=True),
     "adversarial.use_best needs method pgd"),
    (lambda d: d["profiles"]["tiny"]["evaluate"].update(use_best="yes"), "evaluate.use_best: expected true/false"),
    (lambda d: d["profiles"]["tiny"]["construct"]["match"].pop("use_best"), "missing key(s) ['use_best']"),
    (_fake_relu_on_vgg16, "match.fake_relu: not implemented for vgg16; it is for resnet18, resnet50, resnet9"),
    (lambda d: d["profiles"]["tiny"]["evaluate"].update(eps=[-0.25]), "every eps must be > 0"),
    (lambda d: d["profiles"]["tiny"]["construct"]["pgd"].update(steps=0), "construct.pgd"),
    (lambda d: d["profiles"]["tiny"]["train"].update(epocs=3), "unknown key(s) ['epocs']"),
    (lambda d: d["profiles"]["tiny"]["train"].pop("lr"), "missing key(s) ['lr']"),
    # the shared recipe's errors name `train`, not the first per-model copy of it
    (lambda d: d["profiles"]["tiny"]["train"].update(epochs="ten"), "profiles.tiny.train.epochs: expected an integer"),
    (lambda d: d["profiles"]["tiny"]["train"].update(lr=None), "profiles.tiny.train.lr: expected a number, got None"),
    (lambda d: d["profiles"]["tiny"]["train"].update(weight_decay="5e-4"),  # how YAML reads 5e-4
     "profiles.tiny.train.weight_decay: expected a number, got '5e-4'; write it as 0.0005"),
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_nr=24),
     "profiles.tiny.train_on.d_nr: expected a mapping of overrides (e.g. {epochs: 24}), got 24"),
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_rand={"lr": {"x": 1}}),
     "profiles.tiny.train_on.d_rand.lr: expected a number"),
    (lambda d: d.update(data=["x"]), "data: expected a mapping, got list"),
    (lambda d: d.update(profiles=["tiny"]), "`profiles` must be a mapping"),
    (lambda d: d["profiles"]["tiny"]["train_on"]["d_rand"].update(lrr=0.1), "unknown key 'lrr'"),
    (lambda d: d["profiles"]["tiny"]["transfer"].update(archs=["vgg16", "alexnet"]), "alexnet"),
    (lambda d: d["profiles"]["tiny"]["transfer"].update(n=55), "transfer.n must be > 0 and a multiple of the 10"),
    (lambda d: d["profiles"]["tiny"]["subset"].update(train=5005),
     "profiles.tiny.subset: sizes must be multiples of the 10 classes (class-balanced), got train 5005"),
    (lambda d: d["profiles"]["tiny"].update(precision="fp16"), "precision must be one of auto|bf16|fp32"),
    (lambda d: d["profiles"]["tiny"].update(checkpoint_minutes=-1), "checkpoint_minutes must be >= 0, got -1"),
    (lambda d: d["profiles"]["tiny"].update(trainees=0), "profiles.tiny.trainees (models trained on each constructed "
                                                         "set) must be >= 1, got 0"),
    (lambda d: d["profiles"]["tiny"].update(trainees=2.0), "profiles.tiny.trainees: expected an integer"),
    (lambda d: d["profiles"]["tiny"]["train"].update(checkpoint_every=4), "unknown key(s) ['checkpoint_every']"),
    # per-set construction: overrides of the set's kind's section, range-checked as it is
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_det={"eps": -1.0}),
     "profiles.tiny.construct_on.d_det: eps, steps, step_size must be > 0"),
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_det={"final_step_size": 0.1}),  # a matching key
     "profiles.tiny.construct_on.d_det (over construct.pgd): unknown key 'final_step_size'; accepted: ['eps', "),
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_nr={"steps": 0}),
     "profiles.tiny.construct_on.d_nr: steps and step sizes must be > 0"),
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_r={"steps": 2.5}),
     "profiles.tiny.construct_on.d_r.steps: expected an integer"),
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_x={}), "construct_on.d_x: unknown constructed set 'd_x'"),
    (lambda d: d["profiles"]["tiny"]["construct_on"].pop("d_rand"), "profiles.tiny.construct_on: needs exactly"),
    (lambda d: d["profiles"]["tiny"].pop("construct_on"), "profiles.tiny: missing key(s) ['construct_on']"),
    (lambda d: d["profiles"]["tiny"].update(construct_on=[]), "profiles.tiny.construct_on: expected a mapping"),
    (_fake_relu_on_vgg16_for_d_r, "construct_on.d_r.fake_relu: not implemented for vgg16"),
    # tiny's 5 PGD steps of 0.1 never leave the 0.5 ball: "D_det at eps 1.0" would be D_det
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_det={"eps": 1.0}),
     "profiles.tiny.construct_on.d_det: 5 steps of 0.1 move an image at most 0.5, short of eps 1, so eps would "
     "change nothing"),
    (lambda d: d["profiles"]["tiny"]["construct"]["pgd"].update(steps=4), "profiles.tiny.construct.pgd: 4 steps of"),
    (lambda d: d["profiles"]["tiny"]["construct_on"].update(d_rand=0),
     "profiles.tiny.construct_on.d_rand (over construct.pgd): expected a mapping of overrides"),
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_rand=[]),
     "profiles.tiny.train_on.d_rand: expected a mapping of overrides"),
    (lambda d: d["profiles"]["tiny"].update(compile_train="max"),
     "compile_train must be one of eager|default|reduce-overhead, got 'max'"),
    (lambda d: d["profiles"]["tiny"].update(compile_train=False), "compile_train"),  # YAML reads `off` as false
    (lambda d: d["profiles"]["tiny"]["source_on"].update(standard={"init": "xavier"}),
     "source_on.standard.init must be one of torch|he, got 'xavier'"),
    (lambda d: d["profiles"]["tiny"]["train"].update(decay="bn"), "train.decay must be one of weights|all, got 'bn'"),
    (lambda d: d["profiles"]["tiny"]["train_on"].update(d_r={"ema": 1.0}),
     "train_on.d_r.ema must be in [0, 1) (0: no average), got 1.0"),
    (lambda d: d.update(profile="huge"), "unknown profile 'huge'"),
    (lambda d: d["data"].update(source="ftp"), "data.source"),
    (lambda d: d.update(extra=1), "unknown top-level key"),
])
def test_bad_parameters_are_refused_with_a_clear_message(tmp_path, mirror, edit, message):
    path = _edited(tmp_path, mirror, edit)
    with pytest.raises(ConfigError, match=None) as err:
        load_params(path)
    assert message in str(err.value)


def test_environment_overrides_source_and_mirror(tmp_path, mirror, monkeypatch):
    path = _edited(tmp_path, mirror, None)
    monkeypatch.setenv("NOTBUGS_MIRROR", "/somewhere/else")
    monkeypatch.setenv("NOTBUGS_PROFILE", "cpu")
    p = load_params(path)
    assert p.data.mirror == "/somewhere/else" and p.profile.name == "cpu"
    for source in ("auto", "official", "mirror"):
        monkeypatch.setenv("NOTBUGS_DATA_SOURCE", source)
        assert load_params(path).data.source == source


def test_hash_changes_with_the_recipe(tmp_path, mirror):
    a = load_params(_edited(tmp_path, mirror, None))
    b = load_params(_edited(tmp_path, mirror, lambda d: d["profiles"]["tiny"]["train"].update(lr=0.07)))
    assert a.hash("construct") == b.hash("construct") and a.hash("train") != b.hash("train")
    assert a.hash("train.momentum") == b.hash("train.momentum") and a.hash("train.lr") != b.hash("train.lr")
    assert a.hash("train_on.d_x") == b.hash("train_on.d_x")  # a path the profile lacks hashes as None


def test_a_key_given_twice_is_refused(tmp_path, mirror):
    """PyYAML keeps the last of two equal keys: an override added without deleting the old line
    would be half-applied, silently."""
    path = _edited(tmp_path, mirror, None)
    text = path.read_text()
    assert "  train_on:\n" in text
    path.write_text(text.replace("  train_on:\n", "  train_on:\n      d_det:\n        epochs: 5\n", 1))
    with pytest.raises(ConfigError, match=r"found the key 'd_det' twice in .*p\.yaml, line \d+"):
        load_params(path)


def test_a_profile_from_the_environment_says_so(tmp_path, mirror, monkeypatch, caplog):
    path = _edited(tmp_path, mirror, None)
    monkeypatch.setenv("NOTBUGS_PROFILE", "gpu")
    with pytest.raises(ConfigError, match=r"unknown profile 'gpu' \(chosen by NOTBUGS_PROFILE\)"):
        load_params(path)
    monkeypatch.setenv("NOTBUGS_PROFILE", "cpu")  # params.yaml says tiny: dvc.lock would record tiny
    with caplog.at_level("WARNING", logger="notbugs.config"):
        assert load_params(path).profile.name == "cpu"
    assert "profile 'cpu' from NOTBUGS_PROFILE, not 'tiny'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="notbugs.config"):
        assert load_params(path, "fast").profile.name == "fast"  # an explicit argument is no surprise
    assert caplog.text == ""
    # under `dvc repro` (DVC sets DVC_STAGE for a stage's command) it is refused: dvc.lock would record tiny
    monkeypatch.setenv("DVC_STAGE", "train@d_r")
    with pytest.raises(ConfigError, match=r"NOTBUGS_PROFILE=cpu under `dvc repro` \(stage train@d_r\), while "
                                          r".*p\.yaml says profile 'tiny'.*`profile: cpu`"):
        load_params(path)
    monkeypatch.setenv("NOTBUGS_PROFILE", "tiny")  # the same as params.yaml's: nothing to refuse
    assert load_params(path).profile.name == "tiny"
    monkeypatch.delenv("DVC_STAGE")
    monkeypatch.setenv("NOTBUGS_DATA_SOURCE", "ftp")
    with pytest.raises(ConfigError, match=r"got 'ftp' \(from NOTBUGS_DATA_SOURCE\)"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_yaml_is_plain_yaml():
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["profile"] in ("tiny", "cpu", "fast", "paper")


def test_recipe_overrides_for_experiments():
    """recipe_for / adversarial_for merge an override over the profile's recipe (a constructed set's or
    a source model's) and validate it, without touching the loaded profile."""
    params = load_params(ROOT / "params.yaml", "fast")
    p = params.profile
    assert recipe_for(params, "robust") == p.source_on["robust"]
    assert recipe_for(params, "d_rand") == p.train_on["d_rand"]
    robust = recipe_for(params, "robust", {"epochs": 31, "augment": {"crop_pad": 2}})
    assert (robust.epochs, robust.augment.crop_pad, robust.lr) == (31, 2, p.source_on["robust"].lr)
    assert recipe_for(params, "standard", {"lr": 0.4}).lr == 0.4 and p.source_on["standard"].lr == p.train.lr
    assert adversarial_for(params) == p.adversarial
    attack = adversarial_for(params, {"steps": 2, "step_size": 0.3})
    assert (attack.eps, attack.steps, attack.step_size) == (p.adversarial.eps, 2, 0.3)
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        recipe_for(params, "robust", {"epochs": 0})
    with pytest.raises(ConfigError, match="adversarial: eps, steps, step_size must be > 0"):
        adversarial_for(params, {"eps": -0.5})
    with pytest.raises(ConfigError, match="unknown key 'stpes'"):
        adversarial_for(params, {"stpes": 2})
