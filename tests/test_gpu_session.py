"""bench/gpu_session.sh rehearsed on the CPU with the tiny profile (PROFILE=tiny), parts 3 and 4.

A GPU session is 15 minutes and rare: a part that breaks there (as part 4's D_NR-from-200-steps edit
did when the match line gained `use_best`) wastes it. Slow: about 4 minutes on 2 cores.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from notbugs import results
from tests.conftest import SHARED_MIRROR, copy_working_tree, make_mirror

pytestmark = pytest.mark.slow


def _part(work, part, limit):
    env = {**os.environ, "PROFILE": "tiny", "PYTHON": sys.executable, "OUT": str(work / f"out{part}")}  # $OUT: a call's
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "bench/gpu_session.sh", str(part), str(limit)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=limit + 120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"part {part} done in" in proc.stdout


def test_parts_3_and_4_run_on_a_cpu_with_the_tiny_profile(tmp_path):
    work = copy_working_tree(tmp_path / "repo")
    staged = work / ".gpu" / "cifar10"
    if SHARED_MIRROR.exists():  # the mirror's .tar.gz parts, staged as a session stages them: copies, checked
        proc = subprocess.run(["bash", "bench/gpu_session.sh", "stage"], cwd=work, capture_output=True, text=True,
                              env={**os.environ, "NOTBUGS_MIRROR": str(SHARED_MIRROR)}, timeout=120)
        assert proc.returncode == 0 and "gpu_session.sh 3 590" in proc.stdout, proc.stdout + proc.stderr
        assert not any(f.is_symlink() for f in staged.iterdir())  # a link would arrive on the device dangling
    else:  # synthetic parts, and the counts they hold
        make_mirror(staged, 30, 10, as_tar=True)
        doc = yaml.safe_load((work / "params.yaml").read_text())
        doc["data"].update(train_per_class=30, test_per_class=10)
        (work / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    _part(work, 3, 240)
    out = work / "out3"
    assert len(list(out.iterdir())) <= 8  # what a device call brings back at most
    assert "exit 0" in (out / "fast.log").read_text()
    assert (work / ".gpu" / "fast_done").exists()
    with tarfile.open(out / "results.tgz") as tar:
        assert any(n.startswith("results/runs") for n in tar.getnames())
    runs = results.load("runs", work / ".gpu" / "data" / "results")
    assert {f"construct@{n}" for n in ("d_r", "d_nr", "d_rand", "d_det")} <= set(runs["stage"])
    assert len(json.loads((out / "sweep_d_nr.json").read_text())["rows"]) == 2

    # part 4: the sweeps, the training benches, then D_NR from 200 matching steps with the pipeline's own stages
    _part(work, 4, 500)  # about 300 s on 2 idle cores
    out = work / "out4"
    with tarfile.open(out / "part4.tgz") as tar:  # one file for the part's JSON: a call brings back 8 at most
        names = tar.getnames()
    for name in ("sweep_robust_2step", "sweep_standard_lr", "bench_resnet18_b512_cudagraphs", "bench_resnet18_b512",
                 "sweep_standard_nets", "sweep_robust_resnet9"):
        assert f"./{name}.json" in names, name
    assert any(n.startswith("./d_nr_200_results/") for n in names)
    assert len(list(out.iterdir())) <= 8
    ours = yaml.safe_load((work / "params.yaml").read_text())
    theirs = yaml.safe_load((work / ".gpu" / "params200.yaml").read_text())
    assert theirs["profiles"]["tiny"]["construct_on"]["d_nr"] == {"steps": 200}  # D_NR's own, not D_R's
    theirs["profiles"]["tiny"]["construct_on"]["d_nr"] = ours["profiles"]["tiny"]["construct_on"]["d_nr"]
    assert theirs == ours  # only that one number differs
    built = results.load("datasets", work / ".gpu" / "data200" / "results")
    assert list(built["name"]) == ["d_nr"]
    assert json.loads(built["recipe"].iloc[0])["match"]["steps"] == 200
    trained = results.load("models", work / ".gpu" / "data200" / "results")
    assert "d_nr" in set(trained["train_set"])
    skipped = (out / "skipped.txt").read_text() if (out / "skipped.txt").exists() else ""
    assert "200 matching steps" not in skipped
