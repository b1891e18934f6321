"""nyx_experiments: a named grid of config-override variants over one base partition, each run end to
end recomputing only what it changes, then one comparison report.

Thin by rule: every task calls one function of `nyx_tasks.experiments`; the tasks are built in
`nyx_airflow/experiment.py`.
"""

from __future__ import annotations

from airflow.sdk import dag
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.experiment import (
    base_task,
    check_experiment,
    experiment_params,
    report_task,
    variant_task,
)

DOC = """
# nyx_experiments

Runs the pipeline once per **variant** of a named grid and compares them.

* **Grid** (form): dotted config keys, each with a list of values, e.g. `{"feedback.threshold": [0.0, 0.5]}`
  (several keys: their product), and/or **named variants** `{"strict": {"evaluate.protocol": "strict"}}`.
  Each variant is named after its values (`threshold=0.5`) and runs in the partition `<partition>--<variant>`.
* `check` validates every variant's whole config first and refuses a bad one in one line naming the variant and key.
* `base` runs, in the base partition, the stages no variant changes (a no-op when they are complete, e.g. after a
  `nyxqa_to_model` run of the same partition).
* `variant` (mapped, one task per variant) runs every stage in the variant's partition: a stage whose config and
  inputs equal the base's **adopts** the base's snapshot (its manifest lists the base's files; nothing is copied or
  recomputed), a changed stage and everything downstream of it computes in the variant's own folders. The base is
  never written by a variant; re-running a variant is a no-op.
* `report` writes `<root>/reports/experiments/<experiment>/report.md` (each variant's overrides, the stages it
  shared and computed, the evaluate results side by side with their intervals) with a plot per metric and
  `results.csv`; the explorer lists it under *Experiments*.
"""


@dag(
    dag_id="nyx_experiments",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    doc_md=DOC,
    tags=["nyx", "experiments"],
    params=experiment_params(),
    default_args=DEFAULT_ARGS,
)
def nyx_experiments():
    variants = check_experiment()
    records = variant_task.expand(spec=variants)
    base_task(variants) >> records
    report_task(records)


nyx_experiments()
