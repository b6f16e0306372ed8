"""`dvc repro` of the tiny profile, each stage a Prefect flow run, on a copy of the repository.

Uses the real CIFAR-10 mirror in ../shared when it is there, else generated data. A Prefect server
is started for the test on localhost (a temporary PREFECT_HOME), as scripts/pipeline.sh does.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from notbugs import results
from notbugs.config import DATASETS
from notbugs.sets import SETS
from tests.conftest import ROOT, SHARED_MIRROR, copy_working_tree, make_mirror

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _run(cmd, cwd, env, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_server):
    """A git copy of the working tree with profile tiny, after one full `dvc repro`."""
    work = copy_working_tree(tmp_path_factory.mktemp("repo") / "notbugs")
    doc = yaml.safe_load((work / "params.yaml").read_text())
    doc["profile"] = "tiny"
    if SHARED_MIRROR.exists():
        doc["data"]["mirror"] = str(SHARED_MIRROR)
    else:  # generated images, as many as tiny's subsets need (fetch verifies the counts per class it is told)
        doc["data"].update(mirror=str(make_mirror(work.parent / "mirror", 50, 10)), train_per_class=50,
                           test_per_class=10)
    (work / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # the user's NOTBUGS_* settings are already gone from os.environ (conftest.pytest_configure)
    env = {**os.environ, **prefect_server, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work)}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(git + ["init", "-q"], work, env)
    _run(git + ["add", "-A"], work, env)
    _run(git + ["commit", "-qm", "copy"], work, env)
    t0 = time.perf_counter()
    out = _run([str(BIN / "dvc"), "repro"], work, env)
    print(f"dvc repro (tiny) took {time.perf_counter() - t0:.0f} s")
    return {"path": work, "env": env, "log": out}


def _tiny(repo) -> dict:
    return yaml.safe_load((repo["path"] / "params.yaml").read_text())["profiles"]["tiny"]


def _tiny_models(repo) -> int:
    """The models tiny trains: two sources, one per constructed set, then for Figure 3 each transfer architecture
    on D and on D_det, but the profile's own architecture at its own width on D_det (train@d_det's, reused)."""
    t = _tiny(repo)
    reused = t["arch"] in t["transfer"]["archs"] and t["transfer"]["width"] == t["width"]
    return 2 + len(DATASETS) + 2 * len(t["transfer"]["archs"]) - reused


def test_repro_fills_the_result_tables(repo):
    root = repo["path"] / "data" / "results"
    counts = results.summary(root)
    runs = results.load("runs", root)
    assert (runs["status"] == "ok").all()
    stages = set(runs["stage"])
    assert {"fetch", "source@standard", "source@robust", "transfer", "report"} <= stages
    assert {f"construct@{n}" for n in DATASETS} <= stages
    assert {f"train@{n}" for n in DATASETS} <= stages
    assert len(runs) == 1 + 2 + 2 * len(DATASETS) + 2  # fetch, sources, construct and train each set, transfer, report
    n_models = _tiny_models(repo)
    assert counts["models"] == n_models and counts["datasets"] == 1 + len(DATASETS)
    assert counts["transfer"] == len(_tiny(repo)["transfer"]["archs"])
    ev = results.load("evaluations", root)
    assert len(ev) == n_models * 2 and set(ev["attack"]) == {"none", "pgd_l2"}
    assert (ev["profile"] == "tiny").all() and (ev["n"] == 100).all()
    assert counts["epochs"] == n_models * 2
    assert (repo["path"] / "data" / "report" / "report.html").exists()
    assert (repo["path"] / "dvc.lock").exists()


def test_repro_again_does_nothing(repo):
    out = _run([str(BIN / "dvc"), "status"], repo["path"], repo["env"])
    assert "up to date" in out


def test_readme_snippet_reads_the_models_and_sets(repo):
    """The README's "in your own code" example, run as written in the repository the pipeline filled."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The models and sets in your own code", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    checks = ("\nassert logits.shape == (8, 10) and meta['model_id'] == 'tiny/adversarial-d-resnet9'"
              "\nassert d_r['images'].shape == (300, 3, 32, 32) and str(d_r['images'].dtype) == 'float16'"
              "\nassert len(d_r['labels']) == 300 and cifar.train_images.shape[1:] == (32, 32, 3)"
              "\nassert model.features(torch.rand(2, 3, 32, 32)).shape[0] == 2\nprint('ok')")
    out = _run([sys.executable, "-c", snippet + checks], repo["path"], repo["env"])
    assert out.strip().endswith("ok")


def test_metrics_and_plots_show(repo):
    out = _run([str(BIN / "dvc"), "metrics", "show"], repo["path"], repo["env"])
    assert "source_robust.json" in out and "pgd_l2_eps0.25" in out
    _run([str(BIN / "dvc"), "plots", "show", "--out", str(repo["path"] / "plots-html")], repo["path"], repo["env"])
    assert (repo["path"] / "plots-html" / "index.html").exists()


def _stale_stages(out: str) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return {line.rstrip(":") for line in out.splitlines() if line and not line.startswith(("\t", " "))}


def _status_after(repo, edit) -> tuple[set[str], str]:
    """`dvc status` with params.yaml edited by `edit(doc)`; the file is restored afterwards."""
    params = repo["path"] / "params.yaml"
    original = params.read_text()
    doc = yaml.safe_load(original)
    edit(doc)
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        out = _run([str(BIN / "dvc"), "status"], repo["path"], repo["env"])
    finally:
        params.write_text(original)
    return _stale_stages(out), out


def test_changing_one_parameter_invalidates_only_its_dependents(repo):
    changed, _ = _status_after(repo, lambda doc: doc["profiles"]["tiny"]["construct"]["pgd"].update(steps=6))
    pgd = {n for n, s in SETS.items() if s.kind == "pgd"}
    assert {*(f"construct@{n}" for n in pgd), "transfer"} <= changed
    assert not changed & {"fetch", "source@standard", "source@robust",
                          *(f"{stage}@{n}" for stage in ("construct", "train") for n in set(SETS) - pgd)}
    # a parameter of another profile changes nothing; one of `paper` only the report's list of deviations
    _, out = _status_after(repo, lambda doc: doc["profiles"]["fast"]["train"].update(epochs=151))
    assert "up to date" in out, out
    changed, out = _status_after(repo, lambda doc: doc["profiles"]["paper"]["train"].update(epochs=151))
    assert changed == {"report"}, out


def test_flow_runs_are_visible_in_prefect(repo, prefect_server):
    code = ("import asyncio\nfrom prefect.client.orchestration import get_client\n"
            "async def main():\n  async with get_client() as c:\n    runs = await c.read_flow_runs()\n"
            "    print(sorted({r.name for r in runs}))\nasyncio.run(main())\n")
    out = _run([sys.executable, "-c", code], repo["path"], repo["env"])
    for name in ("source-standard", "construct-d_r", "train-d_det"):
        assert name in out


def test_reevaluate_once_appends_rows(repo):
    root = repo["path"] / "data" / "results"
    before = len(results.load("evaluations", root))
    _run([sys.executable, "-m", "flows.serve", "--once"], repo["path"], repo["env"])
    ev = results.load("evaluations", root)
    # tiny's reevaluate suite: clean + PGD at each of its eps, for each model
    eps = _tiny(repo)["reevaluate"]["eps"]
    assert len(ev) == before + _tiny_models(repo) * (1 + len(eps))
    assert set(ev["eps"]) == {0.0, *eps}
    out = _run([str(BIN / "dvc"), "status"], repo["path"], repo["env"])  # the report shows the new rows once rerun
    assert _stale_stages(out) == {"report"}


def test_dvc_commit_records_a_notbugs_all_run(repo):
    """`notbugs all` leaves dvc.lock as it was: it says how to record its run, and once recorded, dvc.lock holds
    the new recipe and `dvc repro` finds every stage up to date. Before the `reproduce` test, which reruns every
    step outside DVC; it leaves params.yaml with another PGD step count, which the tests after it run on."""
    root = repo["path"] / "data" / "results"
    before = results.load("runs", root)
    params = repo["path"] / "params.yaml"
    doc = yaml.safe_load(params.read_text())
    doc["profiles"]["tiny"]["construct"]["pgd"]["steps"] += 1
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run([str(BIN / "notbugs"), "all"], cwd=repo["path"], env=repo["env"], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-6000:]
    assert "`dvc commit -f dvc.yaml`" in out.stderr
    runs = results.load("runs", root)
    ran = set(runs[~runs["run_id"].isin(before["run_id"])]["stage"])
    pgd = {n for n, s in SETS.items() if s.kind == "pgd"}
    assert ran == {*(f"{stage}@{n}" for stage in ("construct", "train") for n in pgd), "transfer", "report"}
    # what DVC would run again is exactly what notbugs all ran
    assert _stale_stages(_run([str(BIN / "dvc"), "status"], repo["path"], repo["env"])) == ran
    _run([str(BIN / "dvc"), "commit", "-f", "dvc.yaml"], repo["path"], repo["env"])
    assert "up to date" in _run([str(BIN / "dvc"), "status"], repo["path"], repo["env"])
    lock = yaml.safe_load((repo["path"] / "dvc.lock").read_text())["stages"]
    for n in pgd:
        recorded = lock[f"construct@{n}"]["params"]["params.yaml"]["profiles.tiny.construct.pgd"]
        assert recorded["steps"] == doc["profiles"]["tiny"]["construct"]["pgd"]["steps"]
    log = _run([str(BIN / "dvc"), "repro"], repo["path"], repo["env"])
    assert "Running stage" not in log, log


def test_reproduce_flow_runs_the_whole_dag_from_prefect(repo):
    """The `reproduce` flow (for users who drive everything from the UI): every stage as a subflow.
    After the dvc repro above, whose stage runs left their markers, it only renders the report again;
    without the markers it resumes everything (final checkpoints, finished shards) and re-scores."""
    root = repo["path"] / "data" / "results"
    before = results.load("runs", root)
    _run([sys.executable, "-m", "flows", "reproduce"], repo["path"], repo["env"])
    runs = results.load("runs", root)
    assert list(runs[~runs["run_id"].isin(before["run_id"])]["stage"]) == ["report"]
    shutil.rmtree(repo["path"] / "data" / "work" / "done")
    before = runs
    _run([sys.executable, "-m", "flows", "reproduce"], repo["path"], repo["env"])
    runs = results.load("runs", root)
    new = runs[~runs["run_id"].isin(before["run_id"])]
    assert len(new) == 5 + 2 * len(SETS) and (new["status"] == "ok").all()  # a construct and a train step per set
    # as `notbugs all`, it leaves a marker per finished step: run again, it only renders the report again
    _run([sys.executable, "-m", "flows", "reproduce"], repo["path"], repo["env"])
    again = results.load("runs", root)
    again = again[~again["run_id"].isin(runs["run_id"])]
    assert list(again["stage"]) == ["report"]
