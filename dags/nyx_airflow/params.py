"""The trigger form: validated params (JSON schema) shared by the Nyx DAGs."""

from __future__ import annotations

from airflow.sdk import Param


def trigger_params() -> dict[str, Param]:
    return {
        "profile": Param("demo", type="string", enum=["demo", "paper"], title="Profile",
                         description="Config profile: demo (tiny, CPU, local) or paper (the paper's models and sizes)."),
        "partition": Param("", type="string", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$", title="Partition",
                           description="Name of the corpus slice; empty = the run's logical date (YYYY-MM-DD)."),
        "artifacts_root": Param("", type="string", title="Artifact root",
                                description="Local path or fsspec URL; empty = $NYX_ARTIFACTS_ROOT or the profile's."),
        "source_paths": Param([], type="array", items={"type": "string", "minLength": 1}, title="OBELICS files",
                              description="Parquet/JSONL files or globs (any fsspec URL); empty = the profile's source."),
        "every_nth": Param(None, type=["null", "integer"], minimum=1, title="Keep every Nth document",
                           description="Empty = the profile's (paper: 5000)."),
        "sample_size": Param(None, type=["null", "integer"], minimum=1, maximum=10_000_000, title="Sample size",
                             description="Chunks to sample (paper: 10,000); empty = the profile's."),
        "force": Param(False, type="boolean", title="Force",
                       description="Recompute stages even when complete and unchanged."),
    }


def overrides_from_params(params: dict, logical_date_ds: str | None) -> dict:
    """Turn validated DAG params into a config override tree."""
    over: dict = {"partition": params.get("partition") or logical_date_ds or "default"}
    if params.get("artifacts_root"):
        over["artifacts"] = {"root": params["artifacts_root"]}
    ingest: dict = {}
    if params.get("source_paths"):
        ingest["source"] = {"kind": "files", "paths": list(params["source_paths"])}
    if params.get("every_nth"):
        ingest["every_nth"] = int(params["every_nth"])
    if ingest:
        over["ingest"] = ingest
    if params.get("sample_size"):
        over["sample"] = {"size": int(params["sample_size"])}
    if params.get("force"):
        over["force"] = True
    return over
