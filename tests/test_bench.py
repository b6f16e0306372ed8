"""Smoke test of bench/bench.py: the tiny CPU preset runs every stage for both implementations.

No timing assertions: the numbers of a tiny run on a shared CPU are noise. One CPU thread, so a
busy machine does not slow it down by oversubscription.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("match", "pgd", "train", "adv_train", "eval")


def test_bench_tiny_runs_every_stage(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--tiny", "--device", "cpu",
                           "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert set(res["stages"]) == set(STAGES)
    for name, r in res["stages"].items():
        assert r["ours"] > 0 and r["reference"] > 0, name
        assert math.isclose(r["ratio"], r["ours"] / r["reference"]), name
        assert r["ours_tflops"] > 0 and r["ours_pct_peak"] is None, name  # no peak on a CPU
        assert name in proc.stdout
    m = res["match_check"]
    for key in ("start_distance", "ours_final_distance", "reference_final_distance"):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    # Same objective, same batch, fp32 on the CPU: both matchings move the same way and land together.
    assert m["ours_final_distance"] < m["start_distance"]
    assert m["reference_final_distance"] < m["start_distance"]
    assert abs(m["ours_final_distance"] - m["reference_final_distance"]) < 0.01 * m["start_distance"]
    assert "representation matching, " in proc.stdout
    assert "--tiny" in res["command"]


def test_bench_profile_runs_each_stage_as_the_profile_does(tmp_path):
    """--profile: each stage at its profile's batch and precision, the profile's attacks on both sides."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--profile", "tiny", "--tiny",
                           "--device", "cpu", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    # tiny: construction batch 100, training 64, evaluation 100, nothing compiled, fp32
    assert {k: r["batch"] for k, r in res["stages"].items()} == {"match": 100, "pgd": 100, "train": 64,
                                                                   "adv_train": 64, "eval": 100}
    assert not any(r["compiled"] for r in res["stages"].values())
    assert res["profile"] == "tiny" and res["arch"] == "resnet9" and res["ours_precision"] == "fp32"
    assert "profile tiny (batch per stage)" in proc.stdout
    # the same forward-pass count per image on both sides, so the same FLOPs per unit (A = 2 steps, no use_best
    # for ours: 2A + 3; the reference's use_best adds 1)
    adv = res["stages"]["adv_train"]
    fwd = res["forward_gflops_per_image"] * 1e9
    assert math.isclose(adv["ours_tflops"] * 1e12 / adv["ours"], 7 * fwd, rel_tol=1e-6)
    assert math.isclose(adv["reference_tflops"] * 1e12 / adv["reference"], 8 * fwd, rel_tol=1e-6)


def test_bench_profile_plans_the_pipeline_s_compile_settings():
    """The paper profile compiles construction (torch's default mode), trains with CUDA graphs and
    evaluates eager, as units.py does; --batch and --eager override every stage."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    plans = bench.stage_plans(bench.parse_args(["--profile", "paper", "--device", "cpu"]))
    assert {k: (p.batch, p.compile_mode) for k, p in plans.items()} == {
        "match": (500, "default"), "pgd": (500, "default"), "train": (128, "reduce-overhead"),
        "adv_train": (128, "reduce-overhead"), "eval": (500, None)}
    args = bench.parse_args(["--profile", "fast", "--device", "cpu", "--eager", "--batch", "16"])
    assert {(p.batch, p.compile_mode) for p in bench.stage_plans(args).values()} == {(16, None)}
    assert (args.arch, args.width) == ("resnet18", 1.0)


@pytest.mark.parametrize("name", ["d_r", "d_rand"])  # a matching set and a PGD one: each has its own rules
def test_first_shard_bench_builds_its_shards(tmp_path, name):
    """bench/first_shard.py, eager at tiny sizes: every shard timed, a JSON with its figures."""
    out = tmp_path / "first.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "first_shard.py"), "--no-compile", "--set", name,
                           "--arch", "resnet9", "--width", "0.0625", "--steps", "2", "--batch", "8", "--shards", "3",
                           "--device", "cpu", "--precision", "fp32", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert len(res["shard_s"]) == 3 and all(s > 0 for s in res["shard_s"])
    assert res["compile_reason"].startswith("not asked") and "first shard:" in proc.stdout


def test_augment_cost_times_the_papers_augmentation_and_a_step():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "augment_cost.py"), "--profile", "paper",
                           "--width", "0.0625", "--batch", "8", "--steps", "1", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resnet50 width 0.0625, batch 8" in proc.stdout and "augmentation" in proc.stdout


def test_a_bench_cut_short_keeps_the_stages_it_finished(tmp_path, monkeypatch):
    """A device call's limit or `timeout` can end a run mid-way: each finished stage is already in the JSON
    (marked incomplete) and in the log, not only at the end."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    def killed(*args):
        raise KeyboardInterrupt("the run's limit")

    monkeypatch.setitem(bench.STAGE_FUNCS, "pgd", killed)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--tiny", "--device", "cpu", "--threads", "1", "--stages", "match,pgd", "--json", str(out)])
    res = json.loads(out.read_text())
    assert list(res["stages"]) == ["match"] and res["complete"] is False
    assert res["stages"]["match"]["ours"] > 0 and res["match_check"]["steps"] > 0


def test_bench_runs_without_pyyaml(tmp_path):
    """bench.py without --profile needs no PyYAML (notbugs.config imports it at module level)."""
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'yaml' or name.startswith('yaml.'):\n"
             "            raise ModuleNotFoundError(name)\n"
             "sys.meta_path.insert(0, Block())\n"
             "import runpy; sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", block, str(ROOT / "bench" / "bench.py"), "--tiny", "--device",
                           "cpu", "--threads", "1", "--stages", "pgd", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["complete"] is True
