"""Training steps of ResNet-9 (1/8 width, bf16 autocast, channels_last, batch 128) per second, run in
the main thread and then in a worker thread of the same process, as Prefect's ThreadPoolTaskRunner
runs a submitted task. Run it three ways: as is; OMP_WAIT_POLICY=PASSIVE; OMP_NUM_THREADS=1.

    .venv/bin/python bench/measured/cpu-2026-11-27/threads/thread_microbench.py
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from notbugs.attacks import autocast
from notbugs.models import make_model


def steps_per_s(n: int = 60) -> float:
    """Training steps per second over `n` steps after 10 warm-up steps."""
    torch.manual_seed(0)
    model = make_model("resnet9", width=0.125).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    cpu = torch.device("cpu")
    for i in range(n + 10):  # 10 warm-up steps
        if i == 10:
            start = time.perf_counter()
        with autocast(cpu, True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    env = {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, env {env}")
    for rep in range(2):
        main = steps_per_s()
        with ThreadPoolExecutor(1) as pool:
            worker = pool.submit(steps_per_s).result()
        print(f"rep {rep}: main thread {main:.1f} steps/s, worker thread {worker:.1f} steps/s, "
              f"worker/main {worker / main:.2f}")
