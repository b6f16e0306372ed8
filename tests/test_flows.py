"""The Prefect layer's unit runner: where a stage's units (trainings, shards) run."""

import threading

import pytest
import torch

pytest.importorskip("prefect")
from flows.pipeline import submit_all  # noqa: E402


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
    # A second thread doing torch work slows the CPU (see submit_all); one device gains nothing from it.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    task = RecordingTask()
    here = threading.current_thread().name
    assert submit_all(task, [(0,), (1,), (2,)]) == [(0, here), (1, here), (2, here)]
    assert task.submitted == 0


def test_with_several_gpus_the_units_go_to_the_task_runner(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    task = RecordingTask()
    assert [k for k, _ in submit_all(task, [(0,), (1,), (2,)])] == [0, 1, 2]
    assert task.submitted == 3


def test_units_carry_no_tag_unless_a_gpu_tag_is_asked_for():
    # A tagged task waits for a server-side slot lease (about 2 s each); only a tag limit needs it.
    from flows.pipeline import units

    plain, tagged = units(), units("gpu")
    for name in ("train", "evaluate", "build"):
        assert not getattr(plain, name).tags
        assert getattr(tagged, name).tags == {"gpu"}
        assert getattr(tagged, name).name == getattr(plain, name).name
    assert tagged.map is submit_all and tagged.parallel
