"""The Prefect layer's unit runners: where a stage's units (trainings, shards) run, and their tags."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("prefect")
from flows.pipeline import submit_all, units  # noqa: E402
from notbugs.record import Busy  # noqa: E402
from notbugs.units import run_in_order  # noqa: E402


class RecordingTask:
    """Stands in for a Prefect task: records the thread each unit ran in, and how it was started."""

    def __init__(self):
        self.submitted = 0

    def __call__(self, k):
        return k, threading.current_thread().name

    def submit(self, k, wait_for=None):
        self.submitted += 1
        done = self(k)

        class Future:
            def result(self):
                return done
        return Future()


def test_on_one_device_the_units_run_in_order_in_the_calling_thread(monkeypatch):
    # A second thread doing torch work slows the CPU (see flows.pipeline.units); one device gains nothing.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    task, here = RecordingTask(), threading.current_thread().name
    for device in ("auto", "cpu"):
        assert units(device).map(task, [(0,), (1,), (2,)]) == [(0, here), (1, here), (2, here)]
    assert task.submitted == 0


def test_units_spread_over_several_gpus_go_to_the_task_runner(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spread = units("auto").map
    assert spread.func is submit_all and spread.keywords == {"lanes": 2}
    assert units("cuda:0").map is run_in_order  # one card named: one unit at a time on it
    task = RecordingTask()
    assert [k for k, _ in spread(task, [(0,), (1,), (2,)])] == [0, 1, 2]
    assert task.submitted == 3


LANES_FLOW = """
import json, threading, time
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner
from flows.pipeline import submit_all

lock, running, peak, order = threading.Lock(), {0: 0, 1: 0}, {0: 0, 1: 0}, []

@task(cache_policy=NONE)
def build(card, k, seconds):
    with lock:
        running[card] += 1
        peak[card] = max(peak[card], running[card])
    time.sleep(seconds)
    with lock:
        running[card] -= 1
        order.append(k)
    return k

@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def construct():
    # as stage_construct: call i on card i % 2
    return submit_all(build, [(k % 2, k, 1.0 if k == 0 else 0.05) for k in range(6)], lanes=2)

print(json.dumps({"results": construct(), "peak": peak, "order": order}))
"""


def run_script(script: str) -> str:
    """Run Python code in a fresh process from the repository root (a real Prefect flow there starts and stops
    its own temporary server, whose last log line would otherwise land on pytest's closed capture)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_EXTRA_LOGGERS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_never_two_units_on_one_card_at_once():
    """Two cards, a pool of two workers, and a slow first shard: the shard after card 1's quick one is card 0's,
    and must wait for card 0 instead of starting beside its slow shard in the freed worker."""
    import json

    out = json.loads(run_script(LANES_FLOW))
    assert out["results"] == list(range(6))
    assert out["peak"] == {"0": 1, "1": 1}
    order = out["order"]
    assert order.index(0) < order.index(2) < order.index(4)  # card 0's shards one after the other


def test_a_deployment_loading_the_flows_as_a_script_still_forwards_the_library_logs():
    """A worker loads `flows/pipeline.py` as a script, with Prefect already set up, so the `flows` package
    (which asks Prefect for the `notbugs` logger) never runs: the logger must still reach the UI at INFO."""
    script = ("import logging, sys, prefect\n"
              "from prefect.logging.handlers import APILogHandler\n"
              "from prefect.utilities.importtools import load_script_as_module\n"
              "load_script_as_module('flows/pipeline.py')\n"
              "log = logging.getLogger('notbugs')\n"
              "print('flows' in sys.modules, log.getEffectiveLevel(), "
              "sum(isinstance(h, APILogHandler) for h in log.handlers))\n")
    assert run_script(script).split() == ["False", "20", "1"]  # INFO, one API handler


def test_units_carry_no_tag_unless_a_gpu_tag_is_asked_for():
    # A tagged task waits for a server-side slot lease (about 2 s each); only a tag limit needs it.
    plain, tagged = units(), units(gpu_tag="gpu")
    for name in ("train", "evaluate", "build"):
        assert not getattr(plain, name).tags
        assert getattr(tagged, name).tags == {"gpu"}
        assert getattr(tagged, name).name == getattr(plain, name).name
    assert tagged.parallel


def test_serve_reads_the_gpu_tag_from_the_environment(monkeypatch):
    """`python -m flows.serve` takes $NOTBUGS_GPU_TAG as its default tag, as `python -m flows` does."""
    import flows.serve as serve
    runs = []
    monkeypatch.setattr(serve, "reevaluate_flow", lambda **kw: runs.append(kw))
    monkeypatch.setenv("NOTBUGS_GPU_TAG", "gpu")
    serve.main(["--once"])
    serve.main(["--once", "--gpu-tag", "other"])
    monkeypatch.delenv("NOTBUGS_GPU_TAG")
    serve.main(["--once"])
    assert [kw["gpu_tag"] for kw in runs] == ["gpu", "other", None]


def test_serve_does_not_take_over_the_work_pool_s_deployment(monkeypatch):
    """Serving under prefect.yaml's deployment name would take that deployment over (work pool, pull step and
    limit gone) and leave it paused when serving stops: its weekly runs would stay Late."""
    import yaml

    import flows.serve as serve

    served = []

    class Flow:
        name = "reevaluate"

        def serve(self, **kw):
            served.append(kw)

    monkeypatch.setattr(serve, "reevaluate_flow", Flow())
    serve.main([])
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    pool = [d["name"] for d in config["deployments"] if d["entrypoint"].endswith(":reevaluate_flow")]
    assert pool == ["reevaluate"] and served[0]["name"] not in pool and served[0]["limit"] == 1


def test_errors_that_would_repeat_are_not_retried():
    """A NaN loss or a corrupt set fails the same way on a retry, after reloading and retraining from the
    checkpoint; a transient error (a lost device, a flaky filesystem) gets its retries."""
    from prefect.states import Failed

    from notbugs.attacks import NonFiniteError
    from notbugs.data import DataError
    from notbugs.storage import ArtefactError
    from tasks import units as U

    from notbugs.data import DownloadError

    # a CUDA error that breaks the process's CUDA context fails again in the same process
    for repeats in (NonFiniteError("loss is nan"), ArtefactError("shard-00003.npz: checksum"), DataError("x"),
                    RuntimeError("CUDA error: an illegal memory access was encountered"),
                    RuntimeError("CUDA error: device-side assert triggered"), Busy("the step fetch is running")):
        assert not U.worth_retrying(None, None, Failed(data=repeats))
    # a dropped download is a DataError, but the next try may get through
    for transient in (OSError("stale file handle"), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                      DownloadError("cannot download CIFAR-10 (TimeoutError)")):
        assert U.worth_retrying(None, None, Failed(data=transient))
    for unit in (U.fetch_data, U.train_model, U.evaluate_model, U.build_shard, U.render_report):
        assert unit.retries == 2 and unit.retry_condition_fn is U.worth_retrying


def test_every_deployment_names_a_flow_and_only_its_parameters():
    """prefect.yaml is read only by `prefect deploy`: a wrong entrypoint or parameter would show first on a worker."""
    import inspect

    import yaml

    import flows.pipeline as P

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    names = set()
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        assert path == "flows/pipeline.py"
        signature = inspect.signature(getattr(P, name).fn)
        assert set(deployment["parameters"]) <= set(signature.parameters), deployment["name"]
        required = {k for k, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
        assert required <= set(deployment["parameters"]), deployment["name"]
        names.add(deployment["name"])
    assert names == {"reevaluate", "reproduce", "fetch", "source", "construct", "train", "transfer", "report"}
    # the UI shows a deployment's description where its `name` is typed in: it lists the sets of notbugs/sets.py
    from notbugs.sets import SETS

    for deployment in config["deployments"]:
        if deployment["name"] in ("construct", "train"):
            listed = deployment["description"].split("name ", 1)[1].split(" (", 1)[0]
            assert listed.split(" | ") == list(SETS), deployment["name"]


def test_the_train_artifact_lists_the_first_model_then_the_spread_over_the_trainees():
    from flows.pipeline import train_rows

    one = {"clean": 0.5, "pgd_l2_eps0.25": 0.2, "train_acc_final": 0.9}
    assert train_rows(one, "m") == [{"model": "m", "metric": k, "value": v} for k, v in one.items()]
    spread = {"n": 3, "clean": {"mean": 0.4, "sd": 0.1}, "pgd_l2_eps0.25": {"mean": 0.2, "sd": 0.05}}
    rows = train_rows({**one, "trainees": spread}, "m")
    assert rows[:3] == train_rows(one, "m")
    assert rows[3:] == [{"model": "all 3 trainees", "metric": "clean (mean)", "value": 0.4},
                        {"model": "all 3 trainees", "metric": "clean (sd)", "value": 0.1},
                        {"model": "all 3 trainees", "metric": "pgd_l2_eps0.25 (mean)", "value": 0.2},
                        {"model": "all 3 trainees", "metric": "pgd_l2_eps0.25 (sd)", "value": 0.05}]
