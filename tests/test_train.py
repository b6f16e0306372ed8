"""Training: a resumed run equals an uninterrupted one; bad numbers and bad files stop it clearly."""

import dataclasses
import os
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from notbugs.attacks import NonFiniteError
from notbugs.compiling import uncompiled
from notbugs.config import AdversarialConfig
from notbugs.deadline import Deadline, Stopped
from notbugs.models import make_model
from notbugs.storage import ArtefactError, load_tensors, save_tensors
import notbugs.train
from notbugs.train import ema_decay, load_model, lr_at, param_groups, save_model, train
from tests.conftest import CompiledStandIn
from tests.test_attacks import RECIPE, synthetic_batch

CPU = torch.device("cpu")
SHORT = dataclasses.replace(RECIPE, epochs=3, augment=dataclasses.replace(RECIPE.augment, crop_pad=4, flip=True))
AVERAGED = dataclasses.replace(SHORT, ema=0.5)  # decays by 0.5 from the second step on, past the plain mean


PGD = AdversarialConfig(eps=0.5, steps=2, step_size=0.25, random_start=True)
FREE = AdversarialConfig(eps=0.5, steps=3, step_size=0.25, random_start=True, method="free")


def _fresh(seed=0):
    torch.manual_seed(seed)
    return make_model("resnet9", width=0.125)


@pytest.mark.parametrize("adversarial,recipe", [(None, SHORT), (PGD, SHORT), (FREE, SHORT), (None, AVERAGED)],
                         ids=["standard", "pgd", "free", "standard-ema"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, adversarial, recipe):
    x, y = synthetic_batch(8)
    full = _fresh()
    h_full = train(full, x, y, recipe, seed=3, device=CPU, adversarial=adversarial, workdir=tmp_path / "a")

    first = _fresh()
    train(first, x, y, recipe, seed=3, device=CPU, adversarial=adversarial, workdir=tmp_path / "b", stop_after_epoch=1)
    resumed = _fresh(seed=99)  # a restarted process starts from other random weights
    h_res = train(resumed, x, y, recipe, seed=3, device=CPU, adversarial=adversarial, workdir=tmp_path / "b")

    assert [h["train_loss"] for h in h_res] == [h["train_loss"] for h in h_full]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def ticks():
    """A clock that advances one second each time it is read: a deadline of k s expires at the k-th check."""
    t = iter(range(10**6))
    return lambda: float(next(t))


@pytest.mark.parametrize("adversarial,bf16,recipe", [(None, False, SHORT), (PGD, False, SHORT), (PGD, True, SHORT),
                                                     (FREE, False, SHORT), (FREE, True, SHORT), (PGD, True, AVERAGED)],
                         ids=["standard", "pgd", "pgd-bf16", "free", "free-bf16", "pgd-bf16-ema"])
def test_run_stopped_mid_epoch_by_its_deadline_resumes_to_the_same_model(tmp_path, adversarial, bf16, recipe):
    """Jobs cut every few batches (mid-epoch included) chain up to exactly the uninterrupted run,
    in fp32 and in bf16 autocast, with a weight average too."""
    x, y = synthetic_batch(8)  # 80 images, batch 32: 2 batches per epoch, 6 in all
    full = _fresh()
    h_full = train(full, x, y, recipe, seed=3, device=CPU, adversarial=adversarial, workdir=tmp_path / "a", bf16=bf16)

    jobs, stops = 0, []
    while True:
        jobs += 1
        model = _fresh(seed=0 if jobs == 1 else jobs)  # a resumed job starts from other random weights
        try:
            h_res = train(model, x, y, recipe, seed=3, device=CPU, adversarial=adversarial, workdir=tmp_path / "b",
                          deadline=Deadline(3, clock=ticks()), bf16=bf16)  # expires at each job's third batch
            break
        except Stopped as e:
            stops.append(str(e))
        assert jobs < 10
    assert jobs == 2 and "after batch 1/2 of epoch 2/3" in stops[0] and "time limit" in stops[0]
    assert [h["train_loss"] for h in h_res] == [h["train_loss"] for h in h_full]
    assert [h["train_acc"] for h in h_res] == [h["train_acc"] for h in h_full]
    for (k, a), b in zip(full.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_free_adversarial_training_replays_each_batch_inside_the_ball_and_raises_its_loss():
    """method free: `steps` SGD steps per batch, each on the batch plus a perturbation that stays in the
    l2 ball and in [0, 1], starts at zero each epoch (no random start), carries over from batch to batch,
    and, with the weights all but fixed (a tiny lr), raises the batch's loss from replay to replay."""
    x, y = synthetic_batch(8)  # 80 images, batch 32: 2 batches per epoch
    recipe = dataclasses.replace(RECIPE, epochs=2, lr=1e-6)  # no augmentation: inputs are x[i] + perturbation
    attack = dataclasses.replace(FREE, random_start=False)
    model = _fresh()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), out.detach().float()))
                                if m.training else None)
    history = train(model, x, y, recipe, seed=3, device=CPU, adversarial=attack, bf16=False)

    assert len(seen) == 2 * 2 * attack.steps  # epochs x batches x replays
    losses = []
    for k, (inputs, logits) in enumerate(seen):
        dist = (inputs.flatten(1)[:, None, :] - x.flatten(1)[None]).norm(dim=2)  # to every clean image
        nearest = dist.min(dim=1)
        assert inputs.min() >= 0 and inputs.max() <= 1
        assert (nearest.values <= attack.eps + 1e-4).all()
        assert (nearest.values == 0).all() == (k % (2 * attack.steps) == 0)  # clean only at an epoch's start
        losses.append(torch.nn.functional.cross_entropy(logits, y[nearest.indices]).item())
    for batch in range(4):
        replays = losses[batch * attack.steps:(batch + 1) * attack.steps]
        assert replays == sorted(replays) and replays[0] < replays[-1], (batch, replays)
    # the learning rate follows every SGD step: the onecycle schedule ends at its last of 12, not of 4
    assert history[-1]["lr"] == lr_at(11, 12, 6, recipe)


def test_compiled_and_eager_jobs_resume_each_other(tmp_path):
    """compile_train is speed only: jobs with a compiled backbone (a stand-in with torch.compile's
    `_orig_mod.*` naming) and eager jobs, alternating, stopped mid-epoch and at an epoch's end,
    chain up to exactly the uninterrupted eager run."""
    x, y = synthetic_batch(8)  # 2 batches an epoch, 5 epochs: each job stops at its third batch
    recipe = dataclasses.replace(SHORT, epochs=5)
    full = _fresh()
    h_full = train(full, x, y, recipe, seed=3, device=CPU, workdir=tmp_path / "a")

    stops = []
    for jobs in range(1, 10):
        model = _fresh(seed=0 if jobs == 1 else jobs)  # a resumed job starts from other random weights
        if jobs % 2:
            model.backbone = CompiledStandIn(model.backbone)
        try:
            h_res = train(model, x, y, recipe, seed=3, device=CPU, workdir=tmp_path / "b",
                          deadline=Deadline(3, clock=ticks()))
            break
        except Stopped as e:
            stops.append(str(e))
            saved = load_tensors(tmp_path / "b" / "checkpoint.pt")["model"]
            assert set(saved) == set(full.state_dict())  # eager names, whoever wrote it
    assert jobs == 4 and "batch 1/2 of epoch 2/5" in stops[0] and "batch 2/2 of epoch 3/5" in stops[1]
    assert [h["train_loss"] for h in h_res] == [h["train_loss"] for h in h_full]
    resumed = uncompiled(model).state_dict()
    for k, a in full.state_dict().items():
        assert torch.equal(a, resumed[k]), k


def test_stop_at_an_epoch_end_and_a_finished_run_never_stops(tmp_path):
    x, y = synthetic_batch(8)
    with pytest.raises(Stopped, match="after batch 2/2 of epoch 1/3"):
        train(_fresh(), x, y, SHORT, seed=3, device=CPU, workdir=tmp_path, deadline=Deadline(2, clock=ticks()))
    assert load_tensors(tmp_path / "checkpoint.pt")["epoch"] == 1
    stopped_now = Deadline()
    stopped_now.stop("SIGTERM received")
    with pytest.raises(Stopped, match="SIGTERM received after batch 1/2 of epoch 2/3"):
        train(_fresh(), x, y, SHORT, seed=3, device=CPU, workdir=tmp_path, deadline=stopped_now)
    # the last batch of the run is followed by no stop: the run is done
    one_batch = dataclasses.replace(SHORT, epochs=1, batch_size=len(y))
    h = train(_fresh(), x, y, one_batch, seed=3, device=CPU, deadline=stopped_now)
    assert len(h) == 1


def test_checkpoints_follow_their_interval_and_a_run_killed_between_them_ends_the_same(tmp_path, monkeypatch):
    """checkpoint_seconds 0: a checkpoint at every epoch end; a long interval: after the last epoch
    only. A run that ends between checkpoints (here after epoch 2, none due yet) restarts from the
    start and still ends at the uninterrupted model: the cadence costs lost work, never results."""
    from notbugs import train as T

    written = []
    monkeypatch.setattr(T, "save_tensors", lambda path, t: (written.append(t["epoch"]), save_tensors(path, t))[1])
    x, y = synthetic_batch(8)
    every = _fresh()
    train(every, x, y, SHORT, seed=3, device=CPU, workdir=tmp_path / "a")
    assert written == [1, 2, 3]
    written.clear()
    train(_fresh(), x, y, SHORT, seed=3, device=CPU, workdir=tmp_path / "b", checkpoint_seconds=3600,
          stop_after_epoch=2)
    assert written == [] and not (tmp_path / "b" / "checkpoint.pt").exists()
    rare = _fresh()  # from the start: the pipeline seeds a model's initial weights (train_unit)
    h = train(rare, x, y, SHORT, seed=3, device=CPU, workdir=tmp_path / "b", checkpoint_seconds=3600)
    assert written == [3] and [r["epoch"] for r in h] == [1, 2, 3]
    for (k, a), b in zip(every.state_dict().items(), rare.state_dict().values()):
        assert torch.equal(a, b), k


def test_adversarial_training_attacks_with_the_configured_iterate_rule(monkeypatch):
    """`adversarial.use_best` reaches every attack of the training loop, and the model trains on what
    that attack returns: with a step as large as the ball the iterates jump about, so training on
    the worst-case iterate gives another model than training on the last."""
    from notbugs import train as train_module

    seen, real = [], train_module.pgd_l2

    def recording(*args, **kwargs):
        seen.append(kwargs["use_best"])
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "pgd_l2", recording)
    x, y = synthetic_batch(8)
    jumpy = AdversarialConfig(eps=2.0, steps=3, step_size=2.0, random_start=False)
    last, best = _fresh(), _fresh()
    train(last, x, y, SHORT, seed=3, device=CPU, adversarial=jumpy)
    assert seen and not any(seen)
    seen.clear()
    train(best, x, y, SHORT, seed=3, device=CPU, adversarial=dataclasses.replace(jumpy, use_best=True))
    assert seen and all(seen)
    assert any(not torch.equal(a, b) for a, b in zip(last.state_dict().values(), best.state_dict().values()))


def test_adversarial_training_attacks_the_model_in_eval_mode_with_frozen_parameters(monkeypatch):
    """PGD inside adversarial training attacks the model as it stands: in eval mode (BatchNorm normalises with its
    running statistics, and the attack's forwards do not update them) and with no parameter gradients; the
    SGD step that follows trains in train mode again."""
    from notbugs import train as train_module

    real, seen = train_module.pgd_l2, []

    def recording(model, *args, **kwargs):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        stats = [t.clone() for m in norms for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
        seen.append({"training": [m.training for m in model.modules()],
                     "requires_grad": [p.requires_grad for p in model.parameters()]})
        out = real(model, *args, **kwargs)
        after = [t for m in norms for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
        seen[-1]["stats_kept"] = bool(norms) and all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))
        return out

    monkeypatch.setattr(train_module, "pgd_l2", recording)
    x, y = synthetic_batch(4)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, x, y, dataclasses.replace(SHORT, epochs=1), seed=3, device=CPU, adversarial=PGD)
    assert len(seen) == 1  # 40 images, batches of 32: one batch
    assert not any(seen[0]["training"]) and not any(seen[0]["requires_grad"]) and seen[0]["stats_kept"]
    # and training itself ran in train mode, with gradients: the weights and the BN statistics moved
    assert all(p.requires_grad for p in model.parameters())
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


def test_checkpoint_of_another_recipe_is_not_resumed(tmp_path):
    """A checkpoint of another recipe (learning rate) or precision is set aside, not resumed: the run
    equals one from scratch, weights and losses (a resumed run would carry the old epoch-1 history too)."""
    x, y = synthetic_batch(4)
    for name, first, then in (("lr", {}, {"cfg": dataclasses.replace(SHORT, lr=0.05)}),
                              ("precision", {}, {"bf16": True})):
        work = tmp_path / name
        train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=work, stop_after_epoch=1, **first)
        old_signature = load_tensors(work / "checkpoint.pt")["signature"]
        cfg = then.get("cfg", SHORT)
        rerun, scratch = _fresh(), _fresh()
        h = train(rerun, x, y, cfg, seed=1, device=CPU, workdir=work, bf16=then.get("bf16"))
        h_scratch = train(scratch, x, y, cfg, seed=1, device=CPU, bf16=then.get("bf16"))
        assert [r["train_loss"] for r in h] == [r["train_loss"] for r in h_scratch], name
        for a, b in zip(rerun.state_dict().values(), scratch.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert (work / f"checkpoint-{old_signature}.pt").exists(), name  # kept aside, not overwritten


def test_a_recipe_changed_and_changed_back_resumes_its_own_checkpoint(tmp_path):
    """Recipe A, then B in the same folder (A's checkpoint set aside), then A again: A resumes its own finished
    checkpoint (no epoch trained again, the same weights), and B's is set aside in its turn."""
    x, y = synthetic_batch(4)
    other = dataclasses.replace(SHORT, lr=0.05)
    first = _fresh()
    train(first, x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    train(_fresh(), x, y, other, seed=1, device=CPU, workdir=tmp_path)
    b_signature = load_tensors(tmp_path / "checkpoint.pt")["signature"]
    again = _fresh()
    h = train(again, x, y, SHORT, seed=1, device=CPU, workdir=tmp_path, stop_after_epoch=0)
    assert [r["epoch"] for r in h] == [1, 2, 3]  # the history of the finished run: nothing trained now
    for (k, a), b in zip(again.state_dict().items(), first.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert (tmp_path / f"checkpoint-{b_signature}.pt").exists()
    assert sorted(f.name for f in tmp_path.glob("checkpoint*.pt")) == ["checkpoint-" + b_signature + ".pt",
                                                                      "checkpoint.pt"]


@pytest.mark.parametrize("set_aside_at, current_at", [(2, 1), (1, 2)])
def test_of_two_checkpoints_of_one_recipe_the_one_further_along_is_resumed(tmp_path, monkeypatch, set_aside_at,
                                                                            current_at):
    """A folder from before 2026-12-07 can hold this recipe's checkpoint set aside and a newer start of the same
    recipe as checkpoint.pt: the run resumes the one further along, whichever it is, and drops the other."""
    x, y = synthetic_batch(4)
    made = {}
    for epochs in (1, 2):
        train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path / f"e{epochs}", stop_after_epoch=epochs)
        made[epochs] = tmp_path / f"e{epochs}" / "checkpoint.pt"
    signature = load_tensors(made[1])["signature"]
    work = tmp_path / "work"
    work.mkdir()
    made[set_aside_at].replace(work / f"checkpoint-{signature}.pt")
    made[current_at].replace(work / "checkpoint.pt")
    real_step, steps = torch.optim.SGD.step, []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **kw: steps.append(1) or real_step(self, *a, **kw))
    h = train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=work)
    assert [r["epoch"] for r in h] == [1, 2, 3] and len(steps) == 1  # epoch 3 only: resumed at epoch 2
    assert [f.name for f in work.glob("checkpoint*.pt")] == ["checkpoint.pt"]


def test_checkpoint_of_an_architecture_whose_code_changed_is_not_resumed(tmp_path):
    """Same architecture name and width, other tensors (as Inception-v3's became the reference's): the
    checkpoint is ignored and training starts over, where loading it would fail on its shapes."""
    x, y = synthetic_batch(4)
    train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path, stop_after_epoch=1)
    changed = _fresh()
    changed.head = torch.nn.Linear(changed.repr_dim, 10, bias=False)
    h = train(changed, x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    assert [r["epoch"] for r in h] == [1, 2, 3]


def test_checkpoint_of_other_code_is_not_resumed_and_is_kept_aside(tmp_path, monkeypatch):
    """A finished checkpoint does not stand in for the retraining that new training code asks for (as when
    DVC reruns a stage because augment.py changed): the run trains from the start, as with no checkpoint,
    and the old checkpoint is kept under its signature rather than overwritten."""
    x, y = synthetic_batch(4)
    train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    old = (tmp_path / "checkpoint.pt").read_bytes()
    old_signature = load_tensors(tmp_path / "checkpoint.pt")["signature"]
    monkeypatch.setattr(notbugs.train, "package_digest", lambda *names: "0123456789abcdef")  # the code changed
    rerun, scratch = _fresh(), _fresh()
    h = train(rerun, x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    train(scratch, x, y, SHORT, seed=1, device=CPU)
    assert [r["epoch"] for r in h] == [1, 2, 3]
    for (k, a), b in zip(rerun.state_dict().items(), scratch.state_dict().values()):
        assert torch.equal(a, b), k
    assert (tmp_path / f"checkpoint-{old_signature}.pt").read_bytes() == old
    assert load_tensors(tmp_path / "checkpoint.pt")["signature"] != old_signature


def test_resumed_run_with_dropout_equals_uninterrupted_run(tmp_path):
    """Inception-v3's dropout draws from torch's global generator, not the run's seeded one: the checkpoint
    carries that generator's state, so a resumed run draws the masks the uninterrupted run drew."""
    x, y = synthetic_batch(4)
    recipe = dataclasses.replace(SHORT, batch_size=20)

    def inception():
        torch.manual_seed(0)
        return make_model("inception_v3", width=0.0625)

    full = inception()
    train(full, x, y, recipe, seed=3, device=CPU, workdir=tmp_path / "a")
    train(inception(), x, y, recipe, seed=3, device=CPU, workdir=tmp_path / "b", stop_after_epoch=1)
    resumed = inception()  # a new process: the global generator restarts from the model's seed
    train(resumed, x, y, recipe, seed=3, device=CPU, workdir=tmp_path / "b")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_bf16_training_learns_and_differs_from_fp32():
    x, y = synthetic_batch(8)
    fp32, bf16 = _fresh(), _fresh()
    h32 = train(fp32, x, y, SHORT, seed=3, device=CPU, bf16=False)
    h16 = train(bf16, x, y, SHORT, seed=3, device=CPU, bf16=True)
    assert h16[-1]["train_loss"] < h16[0]["train_loss"]
    assert [h["train_loss"] for h in h16] != [h["train_loss"] for h in h32]  # it did run in bf16


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = synthetic_batch(4)
    model = _fresh()
    train(model, x, y, SHORT, seed=1, device=CPU, workdir=tmp_path, stop_after_epoch=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    bad = x.clone()
    bad[:, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="loss is nan.*checkpoint.pt, another recipe's, left as it was"):
        train(_fresh(), bad, y, dataclasses.replace(SHORT, lr=0.1), seed=2, device=CPU, workdir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_a_run_of_another_recipe_that_diverges_before_saving_moves_nothing(tmp_path, monkeypatch):
    """Its first save would set the checkpoint there aside; with inf weights it saves nothing, so the checkpoint
    stays where the recipe that made it resumes it (not under a name only `notbugs clean` looks at)."""
    x, y = synthetic_batch(4)
    train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path, stop_after_epoch=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    real_step = torch.optim.SGD.step

    def blow_up(self, *a, **kw):
        out = real_step(self, *a, **kw)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", blow_up)
    with pytest.raises(NonFiniteError, match="weights are not finite after 1 epoch.*another recipe's, left as it was"):
        train(_fresh(), x, y, dataclasses.replace(SHORT, lr=0.05), seed=1, device=CPU, workdir=tmp_path)
    assert [f.name for f in tmp_path.glob("checkpoint*.pt")] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    steps = []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **kw: steps.append(1) or real_step(self, *a, **kw))
    h = train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    assert [r["epoch"] for r in h] == [1, 2, 3] and len(steps) == 2  # epoch 1 from the checkpoint: resumed


def test_inf_weights_from_the_last_step_are_never_saved(tmp_path, monkeypatch):
    """The loss is checked before each step; a last step of an epoch that leaves inf weights must not
    be saved as the checkpoint a later NaN message calls good, nor returned as a trained model."""
    x, y = synthetic_batch(4)
    train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path, stop_after_epoch=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    real_step, calls = torch.optim.SGD.step, []

    def step_then_blow_up(self, *a, **kw):
        out = real_step(self, *a, **kw)
        calls.append(1)
        if len(calls) == 1:  # the resumed run's last (and only) step of epoch 2: 40 images, batches of 32
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_blow_up)
    with pytest.raises(NonFiniteError, match="weights are not finite after 2 epoch.*the last good checkpoint kept at"):
        train(_fresh(), x, y, SHORT, seed=1, device=CPU, workdir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    calls.clear()
    with pytest.raises(NonFiniteError, match="weights are not finite at the end of training"):
        train(_fresh(), x, y, dataclasses.replace(SHORT, epochs=1), seed=1, device=CPU)  # no checkpoint kept


def test_schedules():
    cfg = dataclasses.replace(SHORT, schedule="step", milestones=(50, 100), lr=0.1, gamma=0.1)
    assert lr_at(0, 1500, 10, cfg) == 0.1
    assert lr_at(500, 1500, 10, cfg) == pytest.approx(0.01)
    assert lr_at(1499, 1500, 10, cfg) == pytest.approx(0.001)
    one = dataclasses.replace(SHORT, schedule="onecycle", lr=0.2, warmup=0.2)
    peak = lr_at(199, 1000, 10, one)
    assert peak == pytest.approx(0.2) and lr_at(0, 1000, 10, one) < 0.01 and lr_at(999, 1000, 10, one) < 1e-5


def test_saved_model_round_trips(tmp_path):
    model = _fresh().eval()
    save_model(model, tmp_path / "m", {"model_id": "x"})
    loaded, meta = load_model(tmp_path / "m")
    x, _ = synthetic_batch(1)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["arch"] == "resnet9"


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_model(_fresh(), tmp_path / "m", {})
    meta = (tmp_path / "m" / "meta.json").read_text().replace('"resnet9"', '"resnet18"')
    (tmp_path / "m" / "meta.json").write_text(meta)
    with pytest.raises(ArtefactError, match="does not fit architecture resnet18"):
        load_model(tmp_path / "m")


def test_truncated_checkpoint_is_refused(tmp_path):
    save_model(_fresh(), tmp_path / "m", {})
    path = tmp_path / "m" / "model.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtefactError, match="corrupt"):
        load_model(tmp_path / "m")
    with pytest.raises(ArtefactError, match="cannot be loaded as a tensors-only checkpoint"):
        load_tensors(path)  # no checksum to compare: the loader itself refuses it


class Planted:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Planted()))
    with pytest.raises(ArtefactError, match="tensors-only"):
        load_tensors(path)
    assert not (tmp_path / "PWNED").exists()


def test_tensor_checkpoint_round_trip(tmp_path):
    sha = save_tensors(tmp_path / "c.pt", {"w": torch.ones(3), "epoch": 4, "history": [{"a": 1.0}]})
    out = load_tensors(tmp_path / "c.pt", sha)
    assert out["epoch"] == 4 and torch.equal(out["w"], torch.ones(3))


def test_weight_decay_applies_to_the_parameters_the_recipe_names():
    """`decay: all` (the reference's SGD) decays every parameter; `weights` leaves BatchNorm's scales and
    shifts and the biases (the 1-d tensors) undecayed."""
    model = make_model("resnet9", width=0.125)
    everything = {id(p) for p in model.parameters()}
    (group,) = param_groups(model, dataclasses.replace(RECIPE, decay="all"))
    assert {id(p) for p in group["params"]} == everything and group["weight_decay"] == RECIPE.weight_decay
    decayed, spared = param_groups(model, dataclasses.replace(RECIPE, decay="weights"))
    assert {id(p) for p in decayed["params"]} | {id(p) for p in spared["params"]} == everything
    assert decayed["weight_decay"] == RECIPE.weight_decay and spared["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p is model.head.weight for p in decayed["params"])
    assert {id(p) for p in spared["params"]} == {id(p) for p in model.parameters() if p.ndim == 1}


def test_a_trained_model_with_ema_is_the_average_of_the_weights_after_every_step():
    """`ema`: the model returned is the exponential average (decay as `ema_decay` says) of the parameters and
    BatchNorm statistics after each SGD step, computed here by hand from the weights each step left."""
    x, y = synthetic_batch(8)  # 2 SGD steps an epoch, 6 in all
    model = _fresh()
    floats = [k for k, t in model.state_dict().items() if t.is_floating_point()]
    after_step = []

    def snapshot(*_):
        after_step.append({k: model.state_dict()[k].clone() for k in floats})

    handle = register_optimizer_step_post_hook(snapshot)
    try:
        train(model, x, y, AVERAGED, seed=3, device=CPU)
    finally:
        handle.remove()
    assert len(after_step) == 6
    expected = {k: torch.zeros_like(t) for k, t in model.state_dict().items() if k in floats}  # step 0 replaces it
    for step, weights in enumerate(after_step):
        d = ema_decay(step, AVERAGED.ema)
        for k in floats:
            expected[k] = d * expected[k] + (1 - d) * weights[k]
    assert ema_decay(0, 0.9) == 0.0 and ema_decay(3, 0.9) == 0.75 and ema_decay(1000, 0.9) == 0.9
    state = model.state_dict()
    for k in floats:
        torch.testing.assert_close(state[k], expected[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state["head.weight"], after_step[-1]["head.weight"])  # not the last weights


def test_a_classifier_of_one_s_own_backbone_trains_and_resumes(tmp_path):
    """The library trains a model whose architecture is in no table (its code is not in the package): the
    checkpoint's signature then holds the shared model code, and a second run resumes the finished one."""
    from tests.conftest import small_model

    x, y = synthetic_batch(8)
    first = train(small_model(), x, y, SHORT, seed=3, device=CPU, workdir=tmp_path)
    again = small_model()
    second = train(again, x, y, SHORT, seed=3, device=CPU, workdir=tmp_path)
    assert second == first  # the finished checkpoint resumed: the same history, nothing trained again
    assert not list(tmp_path.glob("checkpoint-*.pt"))
