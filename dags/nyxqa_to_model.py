"""nyxqa_to_model: OBELICS -> NyxQA -> Nyx, one partition per run.

Thin by rule: every task calls one function of `nyx_tasks`; what runs where is
decided here. Stages come from the registry, in order.
"""

from __future__ import annotations

from airflow.sdk import dag
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.params import trigger_params
from nyx_airflow.stage_group import check_task, stage_group

from nyx_tasks.stages import STAGE_NAMES, get_stage

DOC = """
# nyxqa_to_model

Builds the NyxQA dataset from OBELICS web documents and trains the Nyx mixed-modal retriever — *Towards Mixed-Modal Retrieval for
Universal RAG* (arXiv 2510.17354).

{stages}

A first `check` task refuses bad trigger values (unknown keys, ranges, names) in
one line. Each stage is a task group `plan -> shard (mapped, one per input shard) -> commit`.
A stage that is complete with the same config and inputs is a no-op (its log says
so, and it emits no asset event); `redo` recomputes the stages it names
(`mine+`: mine and every later stage), `force` every stage. Outputs: `<root>/partitions/<partition>/<stage>/`, with a
`_MANIFEST.json` (rows, drop reasons, hashes, timings) written last.
"""
STAGES = "\n".join(["| stage | what it does |", "|---|---|",
                     *(f"| {name} | {get_stage(name).doc} |" for name in STAGE_NAMES)])


@dag(
    dag_id="nyxqa_to_model",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    is_paused_upon_creation=True,  # Airflow's default too; the UI's trigger form offers "Unpause on trigger"
    max_active_runs=1,
    doc_md=DOC.format(stages=STAGES),
    tags=["nyx", "nyxqa", "pipeline"],
    params=trigger_params(),
    default_args=DEFAULT_ARGS,
)
def nyxqa_to_model():
    previous = check_task()  # refuses bad trigger values before any stage runs
    for name in STAGE_NAMES:
        group = stage_group(name, get_stage(name).doc)
        previous >> group
        previous = group


nyxqa_to_model()
