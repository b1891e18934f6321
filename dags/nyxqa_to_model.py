"""nyxqa_to_model: OBELICS -> NyxQA -> Nyx, one partition per run.

Thin by rule: every task calls one function of `nyx_tasks`; what runs where is
decided here. Stages come from the registry, in order.
"""

from __future__ import annotations

from airflow.sdk import dag
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.params import trigger_params
from nyx_airflow.stage_group import check_task, stage_group

from nyx_tasks.stages import STAGE_NAMES

DOC = """
# nyxqa_to_model

Builds the NyxQA dataset from OBELICS web documents and trains the Nyx mixed-modal retriever — *Towards Mixed-Modal Retrieval for
Universal RAG* (arXiv 2510.17354).

| stage | what it does |
|---|---|
| ingest | read OBELICS rows, keep every Nth, fetch + verify + store images, drop documents whose image fails |
| chunk | 200-token chunks, images as one placeholder token each, drop chunks with more than 5 images |
| sample | fixed-size subset: 63.29% text-only, 29.85% single-image, rest multi-image |
| synthesize | a VLM writes QA pairs (text, image, multi-image prompts), shortens answers, writes 3 distractors; `route` sends shards to the `gpu` queue with the in-process `vllm` backend |
| filter | the paper's rule filters (named drops), 4 shuffled options + correct index, train/dev/test split |
| mine | embed queries and chunks with the miner (mmE5), exact search, skip 10 ranks, drop the positive by id, keep 5 hard negatives; the text-only sets (top-1 retrieved = positive) too |
| train_stage1 | Matryoshka InfoNCE training of the Nyx embedder with LoRA (`torchrun` + DeepSpeed ZeRO-2 over `num_gpus` GPUs, `route` holds that many `gpu` pool slots; CPU in one process on the demo); publishes `nyx_checkpoint` |
| feedback | retrieve the top-K with the stage-1 model, the answering VLM judges sliding windows, the first document of the best window above the threshold is the positive; queries with no helpful window dropped by name |
| train_stage2 | the stage-1 recipe on the feedback triplets plus the mix, from the base or the stage-1 model; publishes `nyx_checkpoint` |
| evaluate | recall@1/5/10, MRR and top-1 RAG accuracy on NyxQA dev/test at every Matryoshka dim, stage 1 vs stage 2; text sets by F1/EM; `reports/<run>/report.md` with plots |

A first `check` task refuses bad trigger values (unknown keys, ranges, names) in
one line. Each stage is a task group `plan -> shard (mapped, one per input shard) -> commit`.
A stage that is complete with the same config and inputs is a no-op (its log says
so, and it emits no asset event); `redo` recomputes the stages it names
(`mine+`: mine and every later stage), `force` every stage. Outputs: `<root>/partitions/<partition>/<stage>/`, with a
`_MANIFEST.json` (rows, drop reasons, hashes, timings) written last.
"""


@dag(
    dag_id="nyxqa_to_model",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    is_paused_upon_creation=True,  # Airflow's default too; the UI's trigger form offers "Unpause on trigger"
    max_active_runs=1,
    doc_md=DOC,
    tags=["nyx", "nyxqa", "pipeline"],
    params=trigger_params(),
    default_args=DEFAULT_ARGS,
)
def nyxqa_to_model():
    previous = check_task()  # refuses bad trigger values before any stage runs
    for name in STAGE_NAMES:
        group = stage_group(name)
        previous >> group
        previous = group


nyxqa_to_model()
