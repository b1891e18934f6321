"""`nyx_executor.WarmLocalExecutor`: Airflow's LocalExecutor, with warm task processes.

The LocalExecutor forks its workers from the scheduler, and each worker forks a
process per task. This executor imports, before its workers are forked, what the
stages' task processes import (`nyx_tasks.warm`: torch, transformers, the model
families, the stage modules), so a model-bearing task starts with them loaded
instead of spending ~5 s importing them (measured with
benchmarks/airflow_overhead.py; README, Benchmarks). Everything else is the
LocalExecutor's.

Select it with `AIRFLOW__CORE__EXECUTOR=nyx_executor.WarmLocalExecutor` (the
plugins folder is on `sys.path` in every Airflow process); `scripts/airflow_env.sh`
does. The Celery deployment (docker-compose.yaml) is not affected.
"""

from __future__ import annotations

import logging
import multiprocessing

from airflow.executors.local_executor import LocalExecutor

from nyx_tasks.warm import MODULES, preload

log = logging.getLogger(__name__)


class WarmLocalExecutor(LocalExecutor):
    """LocalExecutor whose forked workers (and so every task process) inherit the heavy imports."""

    def start(self) -> None:
        if multiprocessing.get_start_method() == "fork":

            # and what the first task of each worker would otherwise import (supervisor, task runner)
            preload(MODULES + ("airflow.sdk.execution_time.supervisor", "airflow.sdk.execution_time.task_runner"),
                    log=log)
        else:  # spawned workers start from nothing: importing here would only cost the scheduler
            log.info("workers are spawned (start method %r): nothing preloaded", multiprocessing.get_start_method())
        super().start()
