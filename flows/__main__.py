"""Entry point of the DVC stages: `python -m flows <stage> [item] [--profile P]`.

Runs the stage as a Prefect flow run. Where Prefect is not installed (e.g. a GPU machine with only
torch, numpy, pandas and pyarrow), it says so and runs the same stage through the plain library CLI.
"""

import argparse
import importlib.util
import json
import logging
import os
import sys

from notbugs.sets import SETS

FLOWS = {"fetch": None, "source": "kind", "construct": "name", "train": "name", "transfer": None,
         "report": None, "reevaluate": None, "reproduce": None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=list(FLOWS))
    parser.add_argument("item", nargs="?", help=f"source: standard|robust; construct/train: {'|'.join(SETS)}")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpu-tag", default=os.environ.get("NOTBUGS_GPU_TAG") or None,
                        help="tag the units that use the accelerator, for a Prefect tag concurrency limit "
                             "(default: $NOTBUGS_GPU_TAG, else none; a tagged unit may wait about 2 s to start)")
    args = parser.parse_args(argv)
    if FLOWS[args.stage] and not args.item:
        items = "standard|robust" if args.stage == "source" else "|".join(SETS)
        parser.error(f"{args.stage} needs an item ({items})")

    common = ["--params", args.params, "--data-dir", args.data_dir, "--device", args.device]
    common += ["--profile", args.profile] if args.profile else []
    if importlib.util.find_spec("prefect") is None:
        from notbugs.cli import main as cli_main

        stage = "all" if args.stage == "reproduce" else args.stage
        print(f"prefect is not installed: running `notbugs {stage}` without orchestration", file=sys.stderr)
        return cli_main([stage, *common, *([args.item] if args.item else [])])

    from notbugs.config import ConfigError, load_params
    from flows import pipeline as P

    try:
        load_params(args.params, args.profile)  # validate before Prefect starts anything
    except ConfigError as e:
        print(f"bad parameters: {e}", file=sys.stderr)
        return 2
    kw = {"params_path": args.params, "profile": args.profile, "data_dir": args.data_dir, "device": args.device}
    fn = {"fetch": P.fetch_flow, "source": P.source_flow, "construct": P.construct_flow, "train": P.train_flow,
          "transfer": P.transfer_flow, "report": P.report_flow, "reevaluate": P.reevaluate_flow,
          "reproduce": P.reproduce}[args.stage]
    if args.stage not in ("fetch", "report"):
        kw["gpu_tag"] = args.gpu_tag
    elif args.gpu_tag:
        print(f"--gpu-tag: {args.stage} runs no accelerator units; ignored", file=sys.stderr)
    try:
        out = fn(args.item, **kw) if FLOWS[args.stage] else fn(**kw)
    except Exception as e:
        logging.getLogger("notbugs").error("%s failed: %s", args.stage, e)
        print(f"python -m flows {args.stage}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
