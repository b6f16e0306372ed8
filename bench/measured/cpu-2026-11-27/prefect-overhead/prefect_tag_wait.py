"""How long a Prefect task takes to start, tagged (`gpu`) or not, after a short and after a long task.
Each task runs `n` training steps of ResNet-9 (1/8 width, bf16) in the flow's thread. Needs a server:

    PREFECT_API_URL=http://127.0.0.1:4200/api PYTHONPATH=bench/measured/cpu-2026-11-27/prefect-overhead \
        .venv/bin/python bench/measured/cpu-2026-11-27/prefect-overhead/prefect_tag_wait.py tagged|plain
"""

import sys
import time

from prefect import flow, task
from prefect.cache_policies import NONE
from thread_microbench import steps_per_s

TAGS = ["gpu"] if sys.argv[1:] == ["tagged"] else []
marks = {}


@task(cache_policy=NONE, tags=TAGS)
def work(k: int, n: int) -> float:
    marks["in"] = time.perf_counter()
    rate = steps_per_s(n)
    marks["out"] = time.perf_counter()
    return rate


@flow
def tag_wait() -> None:
    for k, n in enumerate([10, 200, 10, 200, 10]):
        start = time.perf_counter()
        work(k, n)
        end = time.perf_counter()
        print(f"{'tagged' if TAGS else 'plain'} task {k} ({n} steps): entered after {marks['in'] - start:.3f} s, "
              f"returned {end - marks['out']:.3f} s after its work")


if __name__ == "__main__":
    tag_wait()
