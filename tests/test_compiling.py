"""torch.compile of the backbone: same outputs, and a failing compiler only costs speed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from notbugs import compiling
from torch._dynamo.utils import counters

from notbugs.attacks import as_in_the_steps, frozen, match_representation, pgd_l2
from notbugs.models import make_model
from tests.conftest import ROOT, CompiledStandIn, bench_script, require_compiled, small_model


def _model():
    torch.manual_seed(0)
    return make_model("resnet9", width=0.0625, init="he").eval()  # untrained: see notbugs.models


def _recording_compiler(calls):
    """A stand-in for torch.compile that records its keyword arguments and compiles nothing (fast)."""
    def compile_(fn, **kwargs):
        calls.append(kwargs)
        return fn
    return compile_


class Broken(torch.nn.Module):  # what a compiled module does when the toolchain is missing
    def forward(self, *args):
        raise RuntimeError("no C++ compiler found")


def test_a_failing_compiler_leaves_the_eager_model(monkeypatch):
    model = _model()
    eager = model.backbone
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: Broken())
    reason = compiling.try_compile(model, x)
    assert reason is not None and "no C++ compiler" in reason
    assert model.backbone is eager
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_train_probe_keeps_batchnorm_statistics(monkeypatch):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    assert compiling.try_compile(model, torch.rand(4, 3, 32, 32), train=True) is None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_probe_of_a_compiled_wrapper_restores_the_statistics(monkeypatch):
    """torch.compile returns a wrapper that shares the module's tensors under `_orig_mod.*` names;
    restoring the BatchNorm statistics by the model's own names then failed after every successful
    compile with train=True (what bench.py --compile does)."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: CompiledStandIn(fn))
    assert compiling.try_compile(model, torch.rand(4, 3, 32, 32), train=True) is None
    assert isinstance(model.backbone, CompiledStandIn) and not model.training
    after = model.backbone._orig_mod.state_dict()
    assert all(torch.equal(before[f"backbone.{k}"], v) for k, v in after.items())


def test_really_compiled_train_probe_keeps_the_model():
    """A real compile with the train-mode probe (what bench.py --compile does): it works or says why,
    and the model comes back with its weights, BatchNorm statistics and eval mode (a one-block
    network: the bookkeeping is the same for any, the compile much shorter)."""
    model = small_model()
    x = torch.rand(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    reason = compiling.try_compile(model, x, train=True)
    require_compiled(reason)
    eager = model.backbone._orig_mod
    assert all(torch.equal(before[f"backbone.{k}"], v) for k, v in eager.state_dict().items())
    assert not model.training
    with torch.no_grad():
        assert torch.allclose(model(x), out, atol=1e-4)


def test_really_compiled_matching_equals_eager():
    """A real compile (inductor on the CPU): the same matching result up to rounding, or, where
    this machine cannot compile, a stated reason and the eager model."""
    model = _model()
    x, start = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with frozen(model):
        z_eager, st_eager = match_representation(model, start, x, 3, 0.1)
    reason = compiling.try_compile(model, start)
    require_compiled(reason)
    graphs = counters["stats"]["unique_graphs"]
    with frozen(model):
        z, st = match_representation(model, start, x, 3, 0.1)
        adv = pgd_l2(model, x, torch.arange(4), 0.5, 2, 0.1, targeted=True)
        as_in_the_steps(model, adv)  # what construction measures the attack's success with
    assert torch.allclose(z, z_eager, atol=1e-4)
    assert abs(st["final_distance"] - st_eager["final_distance"]) < 1e-3
    assert counters["stats"]["unique_graphs"] == graphs  # the steps, target, distances and success: the probe's graph


def test_really_compiled_matching_through_the_fake_relu_equals_eager():
    """A ResNet-18 (the `fast` source) compiled for matching through the reference's fake ReLU: the
    same result as eager, and the probe compiled the graph the steps run (none compiled after it)."""
    torch.manual_seed(0)
    model = make_model("resnet18", width=0.0625).eval()  # PyTorch's init: its last ReLU has negative inputs
    x, start = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with frozen(model):
        z_eager, _ = match_representation(model, start, x, 3, 0.1, fake_relu=True)
        z_true, _ = match_representation(model, start, x, 3, 0.1)
    assert not torch.allclose(z_eager, z_true, atol=1e-4)  # the fake ReLU does change the steps here
    reason = compiling.try_compile(model, start, fake_relu=True)
    require_compiled(reason)
    graphs = counters["stats"]["unique_graphs"]
    with frozen(model):
        z, _ = match_representation(model, start, x, 3, 0.1, fake_relu=True)
    assert torch.allclose(z, z_eager, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_model_with_wrong_gradients_is_not_used(monkeypatch):
    """A compiler that runs but computes garbage (NaN, or a wrong gradient) costs the speed-up,
    never the result: the eager backbone stays."""
    x = torch.rand(4, 3, 32, 32)

    class Scaled(torch.nn.Module):  # a "compiled" backbone whose outputs, and gradients, are off
        def __init__(self, inner, factor):
            super().__init__()
            self.inner, self.factor = inner, factor

        def forward(self, x):
            return self.inner(x) * self.factor

    for factor, message in ((float("nan"), "NaN or inf"), (2.0, "away from eager")):
        model = _model()
        eager = model.backbone
        monkeypatch.setattr(torch, "compile", lambda fn, f=factor, **kw: Scaled(fn, f))
        reason = compiling.try_compile(model, x)
        assert reason is not None and message in reason, reason
        assert model.backbone is eager


def test_in_bf16_a_compiled_model_is_judged_against_the_exact_gradient(monkeypatch):
    """In bf16 the eager input gradient is itself some way from the fp32 one (about 21% for this
    untrained net). A compiled model that is nearer the fp32 gradient is kept, although it is more than
    the tolerance away from eager bf16's; one whose gradient is 50% off is still refused."""
    x = torch.rand(4, 3, 32, 32)

    class Exact(torch.nn.Module):  # a "compiled" backbone that computes in fp32 under bf16 autocast
        def __init__(self, inner, factor):
            super().__init__()
            self.inner, self.factor = inner, factor

        def forward(self, x):
            with torch.autocast("cpu", enabled=False):
                return self.inner(x.float()) * self.factor

    model = _model()
    exact, rounded = compiling._input_gradient(model, x, False), compiling._input_gradient(model, x, True)
    assert compiling._gap(rounded, exact) > compiling.GRADIENT_TOLERANCE  # else this test shows nothing
    for factor, kept in ((1.0, True), (1.5, False)):
        model = _model()
        eager = model.backbone
        monkeypatch.setattr(torch, "compile", lambda fn, f=factor, **kw: Exact(fn, f))
        reason = compiling.try_compile(model, x, bf16=True)
        assert (reason is None) == kept, reason
        assert (model.backbone is eager) != kept
        if not kept:
            assert "away from eager fp32's" in reason


def test_the_exact_gradient_in_chunks_equals_the_whole_batch():
    model, x = _model(), torch.rand(10, 3, 32, 32)
    whole = compiling._input_gradient(model, x, False)
    assert torch.allclose(compiling._input_gradient(model, x, False, chunk=3), whole, atol=1e-6)


def test_really_compiled_bf16_matching_is_finite():
    """bf16 on the CPU: torch 2.14.1's inductor gave NaN input gradients for this network. Either the
    compiled model is right, or the probe catches it and the eager model stays; matching is finite."""
    model = _model().to(memory_format=torch.channels_last)
    x, start = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    compiling.try_compile(model, start, bf16=True)
    with frozen(model):
        z, st = match_representation(model, start, x, 3, 0.1, bf16=True)
    assert torch.isfinite(z).all() and st["final_distance"] < st["start_distance"]


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_the_mode_reaches_torch_compile(monkeypatch, mode):
    """reduce-overhead (CUDA graphs) is what a launch-bound GPU step needs; None keeps torch's default."""
    calls = []
    monkeypatch.setattr(torch, "compile", _recording_compiler(calls))
    kwargs = {} if mode is None else {"mode": mode}
    assert compiling.try_compile(_model(), torch.rand(4, 3, 32, 32), train=True, **kwargs) is None
    assert calls == [{"dynamic": False, "mode": mode}]


@pytest.mark.parametrize("options, recorded, passed", [
    (["--compile"], "default", None),
    (["--compile", "--compile-mode", "reduce-overhead"], "reduce-overhead", "reduce-overhead"),
])
def test_bench_compile_mode_is_passed_and_recorded(monkeypatch, tmp_path, capsys, options, recorded, passed):
    """bench.py --compile-mode reaches torch.compile and the JSON and header say which mode was measured.
    In process with the stand-in compiler and one tiny stage: no real compile, so it stays quick."""
    bench = bench_script("bench", monkeypatch)
    calls = []
    monkeypatch.setattr(torch, "compile", _recording_compiler(calls))
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--stages", "pgd", "--json", str(out), *options])
    res = json.loads(out.read_text())
    assert calls == [{"dynamic": False, "mode": passed}]
    assert res["compiled"] is True and res["compile_mode"] == recorded
    assert f"compiled True (mode {recorded})" in capsys.readouterr().out


def test_bench_compile_mode_needs_compile(monkeypatch, capsys):
    """Without --compile a run meant to measure CUDA graphs would silently measure eager."""
    bench = bench_script("bench", monkeypatch)
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--device", "cpu", "--compile-mode", "reduce-overhead"])
    assert "--compile-mode needs --compile" in capsys.readouterr().err


def test_bench_records_no_mode_when_the_compile_fell_back(monkeypatch, tmp_path, capsys):
    """A compile that failed measured eager: the JSON and the header must not name a compile mode."""
    bench = bench_script("bench", monkeypatch)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: Broken())
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--stages", "pgd", "--json", str(out),
                "--compile", "--compile-mode", "reduce-overhead"])
    res = json.loads(out.read_text())
    assert res["compiled"] is False and res["compile_mode"] is None
    assert any("--compile failed" in n for n in res["notes"])
    assert "compiled False |" in capsys.readouterr().out


def test_compile_cache_lives_with_the_data_unless_the_user_chose_one(monkeypatch, tmp_path):
    folder = str(tmp_path.resolve() / "work" / "compile-cache")
    assert compiling.keep_compiled_kernels(tmp_path) == folder == os.environ[compiling.CACHE_ENV]
    assert compiling.keep_compiled_kernels(tmp_path / "another") == folder  # the first data folder wins
    # torch writes its default folder into the variable on first use (creating an optimizer does): no choice
    monkeypatch.setenv(compiling.CACHE_ENV, compiling._torch_default_cache())
    assert compiling.keep_compiled_kernels(tmp_path) == folder
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    assert compiling.keep_compiled_kernels(tmp_path) == str(tmp_path / "mine")


_JOB = """
import sys, torch
from notbugs.compiling import keep_compiled_kernels

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # as a job's earlier training does
print(keep_compiled_kernels(sys.argv[1]))
"""


def test_a_job_that_trained_first_still_keeps_its_kernels_with_the_data(tmp_path):
    """Capped jobs: in a fresh process (a fresh /tmp, as on another node) that has created an optimizer,
    which makes torch write its default folder into the variable, the kernels still go to the data
    folder. (That a later process then compiles nothing the earlier one compiled there, inductor's
    counters say in tests/test_compile_ahead.py.)"""
    env = {k: v for k, v in os.environ.items() if k not in (compiling.CACHE_ENV, "TRITON_CACHE_DIR")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-c", _JOB, str(tmp_path / "data")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str((tmp_path / "data" / "work" / "compile-cache").resolve())
