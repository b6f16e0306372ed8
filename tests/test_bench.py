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
