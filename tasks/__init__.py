"""Prefect tasks: thin wrappers over the units of `notbugs.stages` (one model, one shard, one evaluation).

Tasks that use the accelerator carry the tag `gpu`; `ensure_gpu_limit` creates a tag concurrency
limit of one task per GPU, so that at most one such task runs on each card at a time.
"""

from tasks.units import (
    GPU_TAG,
    build_shard,
    ensure_gpu_limit,
    evaluate_model,
    fetch_data,
    publish_table,
    render_report,
    train_model,
)

__all__ = ["GPU_TAG", "build_shard", "ensure_gpu_limit", "evaluate_model", "fetch_data", "publish_table",
           "render_report", "train_model"]
