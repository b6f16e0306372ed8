"""Prefect 3 flows: one per DVC stage, plus `reproduce` (the whole DAG) and `reevaluate` (scheduled).

Without PREFECT_API_URL, Prefect runs against its local API with SQLite (the embedded default);
`prefect server start` shows the same runs in the UI.
"""

import os

# The library logs through the standard `notbugs` logger; ship those lines to the Prefect UI too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "notbugs")
# The temporary local server's telemetry heartbeat writes to its SQLite database while a flow does: in a review's
# runs (2026-12-07) 2 of 6 printed a "database is locked" traceback (the run completed), 0 of 2 with it off.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import logging  # noqa: E402

# The library logs at INFO what happens in the paper's terms; without a level it would inherit WARNING.
logging.getLogger("notbugs").setLevel(logging.INFO)
