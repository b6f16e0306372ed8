"""Prefect 3 flows: one per DVC stage, plus `reproduce` (the whole DAG) and `reevaluate` (scheduled).

Without PREFECT_API_URL, Prefect runs against its local API with SQLite (the embedded default);
`prefect server start` shows the same runs in the UI.
"""

import os

# The library logs through the standard `notbugs` logger; ship those lines to the Prefect UI too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "notbugs")
# The temporary local server's telemetry heartbeat wrote to its SQLite database while a flow did, and in 2 of 6
# runs printed a "database is locked" traceback (the run completed). Nothing is sent anywhere without it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import logging  # noqa: E402

# The library logs at INFO what happens in the paper's terms; without a level it would inherit WARNING.
logging.getLogger("notbugs").setLevel(logging.INFO)
