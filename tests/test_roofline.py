"""bench/roofline.py: the operation counts it records, the bounds it derives, and that the rates
bench.py measured on GPUs stay below them (a rate above a bound would mean the model of the step
leaves out work)."""

import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, bench_script


@pytest.fixture
def rl(monkeypatch):
    return bench_script("roofline", monkeypatch)


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, device="meta", dtype=dtype)


def test_a_convolution_moves_its_input_weights_and_output(rl):
    x, w = meta(2, 3, 8, 8), meta(4, 3, 3, 3)
    with rl.OpRecorder() as rec:
        F.conv2d(x, w, padding=1)
    (op,) = rec.ops
    assert op.name == "convolution"
    assert op.flops == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)
    assert op.bytes == 2 * (2 * 3 * 64 + 4 * 27 + 2 * 4 * 64)  # bf16: input + weight + output


def test_views_move_nothing_and_an_inplace_op_reads_and_writes(rl):
    x = meta(4, 8)
    with rl.OpRecorder() as rec:
        x.view(8, 4).t()
        x.relu_()
    assert [op.name for op in rec.ops] == ["relu_"]
    assert rec.ops[0].bytes == 2 * 4 * 8 * 2 and rec.ops[0].flops == 0


def test_a_broadcast_operand_is_read_once(rl):
    x, bias = meta(16, 8), meta(8)
    with rl.OpRecorder() as rec:
        x + bias.expand(16, 8)
    assert rec.ops[-1].bytes == 2 * (16 * 8 + 8 + 16 * 8)


def test_a_concatenation_reads_every_tensor_of_its_list(rl):
    a, b = meta(2, 3, 4, 4), meta(2, 5, 4, 4)
    with rl.OpRecorder() as rec:
        torch.cat([a, b], dim=1)
    assert rec.ops[-1].name == "cat" and rec.ops[-1].bytes == 2 * 2 * (2 * 8 * 16)  # read a and b, write both


def test_input_gradient_only_costs_one_forward_and_reads_no_activation(rl):
    x = meta(2, 3, 8, 8).requires_grad_(True)
    w = meta(4, 3, 3, 3)  # frozen, as in an attack
    with rl.OpRecorder() as rec:
        y = F.conv2d(x, w, padding=1)
        torch.autograd.grad(y.float().sum(), x)
    fwd = next(op for op in rec.ops if op.name == "convolution")
    bwd = next(op for op in rec.ops if op.name == "convolution_backward")
    assert bwd.flops == fwd.flops
    assert bwd.bytes == 2 * (2 * 4 * 64 + 4 * 27 + 2 * 3 * 64)  # grad_out + weight -> grad_input


@pytest.mark.parametrize("arch", ["resnet9", "resnet50"])
def test_step_flops_agree_with_bench_hook_counter(rl, monkeypatch, arch):
    bench = bench_script("bench", monkeypatch)
    model = bench.make_model(arch, width=0.25)
    fwd = bench.forward_flops_per_image(model, torch.device("cpu"))  # hooks on Conv2d / Linear, one image
    rows = {s: rl.analyse(arch, 0.25, s, 4, ["h100-sxm"]) for s in rl.STAGES}
    # An attack step: forward and a backward to the image (one forward's FLOPs); bench credits 2.
    # Matching stops at the representation: no head (2 x 10 x repr_dim FLOPs) either way.
    head = 2 * 10 * model.repr_dim
    assert rows["match"]["gflop_per_image"] * 1e9 == pytest.approx(2 * fwd - 2 * head, rel=1e-9)
    assert rows["pgd"]["gflop_per_image"] * 1e9 == pytest.approx(2 * fwd, rel=1e-9)
    # Training: forward, input and weight gradients (3 forwards), less the stem's input gradient.
    assert 2.95 * fwd < rows["train"]["gflop_per_image"] * 1e9 < 3 * fwd


def test_bounds_are_ordered_and_below_the_peak(rl):
    for stage in rl.STAGES:
        small, large = (rl.analyse("resnet18", 0.5, stage, b, ["h100-sxm", "h200"]) for b in (8, 64))
        assert small["gflop_per_image"] == pytest.approx(large["gflop_per_image"])
        assert large["ideal_mb_per_image"] < large["eager_mb_per_image"]
        for card in ("h100-sxm", "h200"):
            eager, ideal = large["cards"][card]["eager"], large["cards"][card]["ideal"]
            assert 0 < eager["rate"] < ideal["rate"]
            assert 0 < eager["pct_peak"] < ideal["pct_peak"] <= 100
        # more bandwidth, same tensor cores: the H200's eager bound is higher
        assert large["cards"]["h200"]["eager"]["rate"] > large["cards"]["h100-sxm"]["eager"]["rate"]
        # weights and optimizer state are paid per step: a larger batch moves fewer bytes per image
        assert large["eager_mb_per_image"] < small["eager_mb_per_image"]


def test_measured_gpu_rates_stay_below_their_bounds(rl):
    files = sorted(str(p) for p in (ROOT / "bench" / "measured").glob("h*/bench_*.json"))
    measured = rl.measured_rates(files)
    assert len(measured) >= 8  # the H100 and H200 runs of 2026-11-26/27
    for m in measured:
        bounds = rl.analyse(m["arch"], m["width"], m["stage"], m["batch"], [m["card"]])["cards"][m["card"]]
        assert m["rate"] < bounds["ideal"]["rate"], m
        if not m["compiled"]:  # eager runs one kernel per operation: the eager bound holds
            assert m["rate"] < bounds["eager"]["rate"], m


def test_device_names_map_to_their_cards_and_unknown_ones_to_none(rl):
    """bench.py's peaks and roofline's bounds come from this one mapping; a card it does not know
    gets no bound rather than another card's."""
    names = {"NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA H200": "h200", "NVIDIA H100 PCIe": "h100-pcie",
             "NVIDIA H100 NVL": "h100-nvl", "NVIDIA GH200 480GB": "gh200", "NVIDIA A100-SXM4-80GB": "a100-80gb",
             "NVIDIA A100-SXM4-40GB": "a100-40gb", "NVIDIA L4": None, "Tesla V100-SXM2-16GB": None, "cpu": None}
    assert {name: rl.card_of(name) for name in names} == names
    assert {c for c in names.values() if c} <= set(rl.CARDS)
    measured = ROOT / "bench" / "measured"
    recorded = {json.loads(f.read_text())["device"] for f in measured.glob("h*/bench_*.json")}
    assert {rl.card_of(d) for d in recorded} == {"h100-sxm", "h200"}


def test_cli_projects_a_profile(rl, tmp_path):
    out = tmp_path / "roofline.json"
    res = rl.main(["--archs", "resnet9", "--width", "0.125", "--batch", "4", "--cards", "h100-sxm",
                   "--profile", "tiny", "--layers", "--stages", "match", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    proj = res["projection"]
    assert proj["profile"] == "tiny" and proj["arch"] == "resnet9"
    names = [r["what"] for r in proj["rows"]]
    assert {"construct d_r", "construct d_det", "train on d_rand", "source robust: training"} <= set(names)
    assert "figure 3: resnet18 on D_det" in names and "figure 3: resnet9 on D_det" not in names  # reused
    for key, figure3 in (("total_seconds", False), ("figure3_seconds", True)):
        total = proj[key]["h100-sxm"]
        rows = [r for r in proj["rows"] if r["figure3"] == figure3]
        assert math.isclose(total["eager"], sum(r["seconds"]["h100-sxm"]["eager"] for r in rows))
        assert 0 < total["ideal"] < total["eager"]


def test_measured_skips_files_that_are_not_bench_results(rl, tmp_path, capsys):
    other = tmp_path / "sweep.json"
    other.write_text(json.dumps([{"variant": {}, "clean": 0.5}]))
    bench = ROOT / "bench" / "measured" / "h100-2026-11-26" / "bench_resnet18.json"
    assert [m["arch"] for m in rl.measured_rates([str(other), str(bench)])] == ["resnet18"] * 3
    assert "sweep.json is not a bench.py result" in capsys.readouterr().out


def test_cli_refuses_an_unknown_card(rl):
    with pytest.raises(SystemExit):
        rl.main(["--cards", "tpu"])


def test_op_times_times_the_step_the_roofline_counts(monkeypatch, tmp_path):
    ot = bench_script("op_times", monkeypatch)
    rl = ot.roofline
    out = tmp_path / "op_times.json"
    res = ot.main(["--arch", "resnet9", "--width", "0.125", "--batch", "4", "--steps", "1", "--warmup", "0",
                   "--device", "cpu", "--threads", "1", "--card", "h100-sxm", "--stages", "match,train",
                   "--json", str(out)])
    assert json.loads(out.read_text())["stages"].keys() == {"match", "train"}
    for stage, r in res["stages"].items():
        assert r["step_s"] > 0 and r["ops_s"] > 0 and r["rate"] > 0
        assert math.isclose(r["ops_s"], sum(k["measured_s"] for k in r["kinds"].values()))
        # the same convolutions as the meta-device step roofline.py bounds, with the same bound each
        meta_kinds = {name: (count, ms) for name, count, ms, _ in rl.by_kind("resnet9", 0.125, stage, 4, "h100-sxm")}
        for kind in ("convolution", "convolution_backward"):
            count, ms = meta_kinds[kind]
            assert r["kinds"][kind]["calls"] == count, (stage, kind)
            assert r["kinds"][kind]["bound_s"] * 1e3 == pytest.approx(ms), (stage, kind)


@pytest.mark.slow  # 40-45 s of compiling on 2 cores, for a bench tool: with its sibling below, out of CI's 10 minutes
def test_the_compiled_bound_lies_between_eager_and_ideal(rl):
    # Inductor (compiled on this CPU) fuses BatchNorm and ReLU into fewer kernels than one per
    # operation, and cannot move less than the convolutions do.
    row = rl.analyse("resnet9", 0.125, "match", 16, ["h100-sxm"], inductor=True)
    assert row["ideal_mb_per_image"] < row["compiled_mb_per_image"] < row["eager_mb_per_image"]
    bounds = row["cards"]["h100-sxm"]
    assert bounds["eager"]["rate"] < bounds["compiled"]["rate"] < bounds["ideal"]["rate"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["match", "train"])
def test_inductor_counts_bytes_linear_in_the_batch(rl, stage):
    # compiled_bytes extrapolates from batches 4 and 8 to the batch asked for
    at = {b: rl.inductor_bytes("resnet9", 0.125, stage, b) * b for b in (4, 8, 12)}
    assert at[12] - at[8] == pytest.approx(at[8] - at[4], rel=1e-9)


def test_profile_without_pyyaml_is_a_usage_error(rl, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yaml", types.ModuleType("yaml"))  # as on a GPU machine without pyyaml
    with pytest.raises(SystemExit):
        rl.main(["--profile", "paper"])
    assert "needs pyyaml" in capsys.readouterr().err
