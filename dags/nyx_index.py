"""nyx_index: embed your own documents with a retriever you trained (`nyx export model`) into a
searchable index, the DAG of `nyx index NAME FILES --model DIR`.

The form: the index's name, the Parquet/JSONL files of documents (paths, globs or fsspec URLs, one
per line), the exported model folder, the id and text columns, the artifact root, and whether to
embed on the `gpu` queue (one `gpu` pool slot). The run is resumable as the CLI's is: a rerun (or a
retried task) embeds only the vector shards that are missing. Search it with `nyx search "query"
--index NAME` or on the explorer's search page (/nyx/search).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE
from nyx_airflow.params import optional_str, run_params
from nyx_airflow.stage_group import config_from_context

from nyx_tasks.core.base import StageError
from nyx_tasks.store.artifacts import ArtifactStore


def index_params() -> dict[str, Param]:
    run = run_params(redo=False)
    return {
        "name": Param("mydocs", type="string", minLength=1, maxLength=64, title="Index name", section="Index",
                      description="indexes/<name>/ under the root: letters, digits, '.', '_' or '-'."),
        "inputs": Param(None, type=["null", "array"], items={"type": "string"}, title="Document files",
                        section="Index", description="Parquet / JSONL files of your documents (paths, globs, "
                        "fsspec URLs), one per line."),
        "model": optional_str("Exported model", "Index", "A folder `nyx export model --stage ... --to DIR` wrote."),
        "id_column": optional_str("Id column", "Index", "The documents' id column; empty = id.", default="id"),
        "text_column": optional_str("Text column", "Index", "The documents' text column; empty = text.",
                                    default="text"),
        "image_column": optional_str("Image column", "Index", "A column of image paths or URLs per document (a VLM "
                                     "retriever); empty = text only. Fetched as ingest fetches images."),
        "server": optional_str("Embedding server", "Index", "The /v1 URL of `vllm serve` on the exported folder "
                               "(the README's flags), which then embeds; empty = embed in this task."),
        "on_gpu": Param(False, type="boolean", title="Embed on the gpu queue", section="Index",
                        description="Run on a gpu worker holding one `gpu` pool slot (else the default queue)."),
        "profile": run["profile"], "artifacts_root": run["artifacts_root"],
    }


def build() -> dict:
    """The index task: the form's values -> `build_index`; a bad value fails the run in one line
    (no retry)."""
    from nyx_tasks.retrieval.user_index import Columns, build_index  # torch: only in the task

    params = get_current_context()["params"]
    if not params.get("inputs") or not params.get("model"):
        raise AirflowFailException("refused: give the document files and the exported model folder")
    cfg = config_from_context()
    try:
        columns = Columns(params.get("id_column") or "id", params.get("text_column") or "text",
                          params.get("image_column") or None)
        return build_index(ArtifactStore(cfg.artifact_root()), params["name"], params["model"],
                           [str(p) for p in params["inputs"]], columns, cfg.ingest.fetch,
                           server=params.get("server") or None)
    except StageError as e:
        raise AirflowFailException(f"refused: {e}") from None


@dag(dag_id="nyx_index", schedule=None, start_date=START_DATE, catchup=False, is_paused_upon_creation=True,
     doc_md=__doc__, tags=["nyx", "index"], params=index_params(), default_args=DEFAULT_ARGS)
def nyx_index():
    @task.branch(task_id="route", doc_md="The default queue, or the gpu queue when the form asks for it.")
    def route() -> str:
        return "index_gpu" if get_current_context()["params"].get("on_gpu") else "index"

    @task(task_id="index", doc_md="Embed the documents' missing vector shards and write the index record.")
    def index() -> dict:
        return build()

    chosen = route()
    chosen >> [index(), index.override(task_id="index_gpu", queue="gpu", pool="gpu", pool_slots=1)()]


nyx_index()
