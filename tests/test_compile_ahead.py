"""Compiling construction ahead (notbugs.warmup): what it compiles, when `notbugs all` starts it, and
that the construct stage then finds every graph it needs in the cache instead of compiling it."""

import dataclasses
import os
import shutil
import sys

import pytest
import torch

from notbugs import record as R
from notbugs import stages as S
from notbugs import units as U
from notbugs import warmup
from notbugs.cli import main
from notbugs.compiling import CACHE_ENV
from notbugs.config import DATASETS, load_params
from notbugs.storage import read_json
from tests.conftest import write_params


def _with(params, **profile_changes):
    return dataclasses.replace(params, profile=dataclasses.replace(params.profile, **profile_changes))


def _with_match(params, **match_changes):
    c = params.profile.construct
    return _with(params, construct=dataclasses.replace(c, match=dataclasses.replace(c.match, **match_changes)))


def test_one_graph_per_fake_relu_flag_the_sets_use(params_file):
    params = load_params(params_file)  # tiny: matching through the fake ReLU
    assert warmup.graphs(params, DATASETS) == [True, False]
    assert warmup.graphs(params, ["d_rand", "d_det"]) == [False]
    assert warmup.graphs(params, ["d_nr"]) == [True]
    assert warmup.graphs(_with_match(params, fake_relu=False), DATASETS) == [False]
    # a set's own flag (construct_on) decides its graph
    own = _with(params, construct_on={**params.profile.construct_on, "d_r": {"fake_relu": False}})
    assert warmup.graphs(own, ["d_r"]) == [False] and warmup.graphs(own, ["d_r", "d_nr"]) == [True, False]


@pytest.mark.parametrize("subset", [0, 100, 1000])
def test_training_images_is_what_load_split_reads(tmp_path, mirror, subset):
    path = write_params(tmp_path / "p.yaml", mirror,
                        edit=lambda d: d["profiles"]["tiny"]["subset"].update(train=subset))
    params = load_params(path)
    S.stage_fetch(params, tmp_path / "data", "cpu")
    assert U.training_images(params) == len(U.load_split(params, tmp_path / "data").train_y)


def test_the_command_compiles_the_construction_batch(params_file):
    params = load_params(params_file)  # 200 training images in the test mirror, batches of 100
    def options(cmd):  # --name value pairs after `python -m notbugs.warmup`
        return dict(zip(cmd[3::2], cmd[4::2]))

    cmd = warmup.command(_with(params, compile=True), ["d_r", "d_det"], torch.device("cpu"))
    assert cmd[:3] == [sys.executable, "-m", "notbugs.warmup"]
    assert options(cmd) == {"--arch": "resnet9", "--width": "0.125", "--batch": "100", "--precision": "fp32",
                            "--fake-relu": "1,0", "--device": "cpu"}
    small = _with(params, construct=dataclasses.replace(params.profile.construct, batch_size=500))
    assert options(warmup.command(small, ["d_r"], torch.device("cpu")))["--batch"] == "200"


def test_all_compiles_ahead_only_beside_source_models_still_to_train_on_a_gpu(params_file):
    params = load_params(params_file)
    on, gpu = _with(params, compile=True, compile_ahead=True), torch.device("cuda")
    everything = {"fetch", "source@standard", "source@robust", *(f"construct@{n}" for n in DATASETS)}
    assert warmup.sets_to_warm(on, everything, gpu) == list(DATASETS)
    assert warmup.sets_to_warm(on, {"source@robust", "construct@d_r", "train@d_r"}, gpu) == ["d_r"]
    assert warmup.sets_to_warm(on, everything - {"source@standard", "source@robust"}, gpu) == []  # no overlap
    assert warmup.sets_to_warm(on, {"source@standard", "train@d_r"}, gpu) == []  # nothing to build
    assert warmup.sets_to_warm(_with(on, compile_ahead=False), everything, gpu) == []
    assert warmup.sets_to_warm(_with(on, compile=False), everything, gpu) == []  # construction runs eager
    assert warmup.sets_to_warm(on, everything, torch.device("cpu")) == []  # the training uses every core


def test_the_construct_stage_finds_what_the_warm_up_compiled(tmp_path, mirror, monkeypatch):
    """`notbugs all` with compile_ahead: the warm-up runs beside the source models, and then every
    construct stage loads its compiled graphs (fake ReLU or not) from the cache: no miss. (On the CPU
    as if it ran beside training on a GPU: the same processes and cache, with the CPU as the device.)
    The warm-up has a /tmp of its own, as a capped job on another node would: the kernels reach the
    stage through the data folder (`keep_compiled_kernels`), so a later job finds them the same way.
    And `compile: true` changes speed, not the sets: the recipe hash and, up to rounding, the
    matching and the PGD success of an eager build from the same source models."""
    from torch._dynamo.utils import counters  # not public API; the cache's own hit and miss counts

    monkeypatch.setattr(warmup, "beside_training", lambda device: True)
    other_node = tmp_path / "other-node-tmp"  # torch's default cache would be here: not used
    other_node.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_node))  # the child's; this process's tempfile folder is set already
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)

    def compile_ahead(doc):  # a ResNet-18: its representation ends in a ReLU, so the fake one is another graph
        doc["profiles"]["tiny"].update(compile=True, compile_ahead=True, arch="resnet18", width=0.0625)

    path = write_params(tmp_path / "p.yaml", mirror, edit=compile_ahead)
    data = tmp_path / "data"
    counters.clear()
    assert main(["all", "--params", str(path), "--data-dir", str(data), "--device", "cpu",
                 "--skip", "train", "--skip", "transfer", "--skip", "report"]) == 0
    log = (data / "work" / "compile-ahead.log").read_text()
    if ": eager (" in log:  # as the tests that compile for real: a machine without a working compiler
        pytest.skip(f"torch.compile does not work on this machine: {log.strip().splitlines()[-1]}")
    assert log.count(": compiled in ") == 2, log  # with the fake ReLU (D_R, D_NR) and without (D_rand, D_det)
    # Each graph's forward and backward kernels come from the cache. (The fake ReLU's graph, with its
    # autograd.Function, bypasses the cache of whole traced graphs, so it is traced again but not compiled.)
    assert counters["inductor"]["fxgraph_cache_hit"] == 2 * 2, dict(counters["inductor"])
    assert counters["inductor"]["fxgraph_cache_miss"] == 0, dict(counters["inductor"])
    assert counters["aot_autograd"]["autograd_cache_miss"] == 0, dict(counters["aot_autograd"])
    cache = (data / "work" / "compile-cache").resolve()
    assert os.environ[CACHE_ENV] == str(cache) and any((cache / "fxgraph").iterdir())
    assert not any(other_node.rglob("fxgraph"))  # (torch keeps its precompiled C++ headers there regardless)

    eager, eager_data = _with(load_params(path), compile=False), tmp_path / "eager"
    for folder in ("cifar10", "models"):
        shutil.copytree(data / folder, eager_data / folder)
    for name, stat, tolerance in (("d_r", "final_distance", 1e-3), ("d_rand", "success_rate", 0.02)):
        compiled = read_json(R.dataset_dir(data, name) / "manifest.json")
        S.stage_construct(eager, name, eager_data, "cpu")
        built = read_json(R.dataset_dir(eager_data, name) / "manifest.json")
        assert compiled["recipe_hash"] == built["recipe_hash"]
        assert abs(compiled["stats"][stat] - built["stats"][stat]) <= tolerance * max(1.0, built["stats"][stat])


def test_a_failing_warm_up_costs_nothing_but_its_time(tmp_path, params_file):
    """A warm-up that cannot compile (here: an architecture it does not know) exits non-zero; the
    stage is told and goes on. One still running when the job ends is stopped. One that cannot start
    is not started."""
    params = load_params(params_file)
    broken = _with(params, arch="no-such-net")
    proc = warmup.start(broken, ["d_r"], tmp_path / "data", torch.device("cpu"))
    assert warmup.finish(proc) not in (0, None)
    assert "no-such-net" in (tmp_path / "data" / "work" / "compile-ahead.log").read_text()
    slow = warmup.start(params, ["d_r"], tmp_path / "data", torch.device("cpu"))
    warmup.stop(slow)
    assert slow.poll() is not None
    assert warmup.finish(None) is None
    (tmp_path / "file").write_text("not a folder")  # nowhere to write its log: not started, no error
    assert warmup.start(params, ["d_r"], tmp_path / "file", torch.device("cpu")) is None
