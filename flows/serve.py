"""Serve the scheduled `reevaluate` deployment: re-score every trained model on a cron schedule.

    python -m flows.serve                       # weekly (Monday 03:00), until stopped
    python -m flows.serve --cron "0 3 * * *"    # daily
    python -m flows.serve --once                # run it once now, no schedule

Serving needs a Prefect API that outlives the process: start one with `prefect server start`
(localhost only by default) and set PREFECT_API_URL, or use your Prefect Cloud workspace.
"""

import argparse
import os

from flows.pipeline import reevaluate_flow

DEFAULT_CRON = "0 3 * * 1"  # weekly, Monday 03:00
SERVED_NAME = "reevaluate-serve"  # the deployment `reevaluate/reevaluate-serve`; prefect.yaml's is `reevaluate`


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: '{DEFAULT_CRON}', weekly)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--gpu-tag", default=os.environ.get("NOTBUGS_GPU_TAG") or None,
                        help="tag the units that use the accelerator, for a Prefect tag concurrency limit "
                             "(default: $NOTBUGS_GPU_TAG, else none, as for `python -m flows`)")
    parser.add_argument("--once", action="store_true", help="run the re-evaluation once now and exit")
    args = parser.parse_args(argv)
    kw = {"params_path": args.params, "profile": args.profile, "data_dir": args.data_dir, "gpu_tag": args.gpu_tag}
    if args.once:
        reevaluate_flow(**kw)
        return
    # limit=1: a run started from the UI during the scheduled one waits for it (the library refuses a second
    # pass on one data folder, which would fail it instead). Its own name: serving under prefect.yaml's
    # "reevaluate" would take that deployment over (its work pool, pull step and limit gone) and leave it
    # paused when serving stops, so its weekly runs would stay Late with no word.
    reevaluate_flow.serve(name=SERVED_NAME, cron=args.cron, parameters=kw, limit=1,
                          description="re-score every trained model under the current evaluation suite")


if __name__ == "__main__":
    main()
