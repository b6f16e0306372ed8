"""Prefect tasks: thin wrappers over the units of `notbugs.units` (one model, one shard, one evaluation).

The tasks carry no tag. A flow asked for a GPU tag (`flows.pipeline.units`) gives it to the units that
use the accelerator, so that a server-side tag concurrency limit can bound them across flows. One task
per GPU is enforced inside each flow by its task runner (as many worker threads as GPUs, each unit
pinned to one card). We deliberately do not create a server-side tag concurrency limit: a task killed
with SIGKILL never releases its slot there, and every later tagged task would then wait forever (seen
with Prefect 3.9 and a local server).
"""

from tasks.units import (
    build_shard,
    evaluate_model,
    fetch_data,
    publish_table,
    render_report,
    train_model,
)

__all__ = ["build_shard", "evaluate_model", "fetch_data", "publish_table",
           "render_report", "train_model"]
