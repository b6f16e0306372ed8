"""The Prefect layer's unit runners: where a stage's units (trainings, shards) run, and their tags."""

import threading

import pytest
import torch

pytest.importorskip("prefect")
from flows.pipeline import submit_all, units  # noqa: E402
from notbugs import stages as S  # noqa: E402


class RecordingTask:
    """Stands in for a Prefect task: records the thread each unit ran in, and how it was started."""

    def __init__(self):
        self.submitted = 0

    def __call__(self, k):
        return k, threading.current_thread().name

    def submit(self, k):
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
    assert units("auto").map is submit_all
    assert units("cuda:0").map is S.run_in_order  # one card named: one unit at a time on it
    task = RecordingTask()
    assert [k for k, _ in submit_all(task, [(0,), (1,), (2,)])] == [0, 1, 2]
    assert task.submitted == 3


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


def test_errors_that_would_repeat_are_not_retried():
    """A NaN loss or a corrupt set fails the same way on a retry, after reloading and retraining from the
    checkpoint; a transient error (a lost device, a flaky filesystem) gets its retries."""
    from prefect.states import Failed

    from notbugs.attacks import NonFiniteError
    from notbugs.data import DataError
    from notbugs.storage import ArtefactError
    from tasks import units as U

    for repeats in (NonFiniteError("loss is nan"), ArtefactError("shard-00003.npz: checksum"), DataError("x")):
        assert not U.worth_retrying(None, None, Failed(data=repeats))
    for transient in (OSError("stale file handle"), RuntimeError("CUDA error: an illegal memory access")):
        assert U.worth_retrying(None, None, Failed(data=transient))
    for unit in (U.fetch_data, U.train_model, U.evaluate_model, U.build_shard, U.render_report):
        assert unit.retries == 2 and unit.retry_condition_fn is U.worth_retrying
