"""What every Nyx DAG shares besides its form: the task defaults and the start date.

A DAG that needs a different value overrides it explicitly in its own file,
`{**DEFAULT_ARGS, key: value}`, with a comment saying why; the integrity tests
(tests/dags/test_dag_integrity.py) list the overrides they allow.
"""

from __future__ import annotations

import datetime as dt

from .stage_group import release_run_leases

# owner: who answers for a failed task (the UI's Owner column; not Airflow's "airflow").
# retries / retry_delay / retry_exponential_backoff: a task failed by a flaky fetch, a lost worker
# or a busy GPU is retried twice, after 30 s and then 60 s. Tasks that must not retry say so
# themselves (the `check` task: retries=0, a refused value stays refused).
# on_failure_callback: a task that failed for good releases the stage leases its run holds, so the
# next run of that stage starts at once (stage_group.release_run_leases).
DEFAULT_ARGS: dict = {
    "owner": "nyx",
    "on_failure_callback": release_run_leases,
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3.3 (True would mean x1.0)
}

# Every Nyx DAG's start date; none catches up, so it only bounds backfills and the UI's calendar.
START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
