"""The trigger form: validated params (JSON schema) shared by the Nyx DAGs."""

from __future__ import annotations

from airflow.sdk import Param

MODEL_REF = {"type": "string", "maxLength": 500, "pattern": r"^$|^[^\s]+$"}  # a hub id, path or tiny:<name>


def trigger_params() -> dict[str, Param]:
    """The trigger form. Empty values mean "the profile's"; every value is checked by
    JSON schema before anything runs, so a bad one is refused with a message."""
    return {
        "profile": Param("demo", type="string", enum=["demo", "paper"], title="Profile", section="Run",
                         description="Config profile: demo (tiny, CPU, local) or paper (the paper's models and sizes)."),
        "partition": Param("", type="string", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$", title="Partition",
                           section="Run", description="Name of the corpus slice; empty = the run's logical date (YYYY-MM-DD)."),
        "artifacts_root": Param("", type="string", title="Artifact root", section="Run",
                                description="Local path or fsspec URL; empty = $NYX_ARTIFACTS_ROOT or the profile's."),
        "force": Param(False, type="boolean", title="Force", section="Run",
                       description="Recompute stages even when complete and unchanged."),
        "source_paths": Param([], type="array", items={"type": "string", "minLength": 1}, title="OBELICS files",
                              section="Data", description="Parquet/JSONL files or globs (any fsspec URL); empty = the profile's source."),
        "every_nth": Param(None, type=["null", "integer"], minimum=1, title="Keep every Nth document", section="Data",
                           description="Empty = the profile's (paper: 5000)."),
        "sample_size": Param(None, type=["null", "integer"], minimum=1, maximum=10_000_000, title="Sample size",
                             section="Data", description="Chunks to sample (paper: 10,000); empty = the profile's."),
        "synth_backend": Param(None, type=["null", "string"], enum=[None, "hf", "openai", "vllm"], section="Models",
                               title="Synthesis backend", description="hf (in-process), openai (a vLLM server through "
                               "the nyx_vllm connection) or vllm (offline engine on the gpu queue); empty = the profile's."),
        "synth_model": Param("", **MODEL_REF, title="Synthesis VLM", section="Models",
                             description="Hub id or path (paper: OpenGVLab/InternVL3-78B); empty = the profile's."),
        "miner_model": Param("", **MODEL_REF, title="Miner", section="Models",
                             description="Hard-negative miner (paper: intfloat/mmE5-mllama-11b-instruct); empty = the profile's."),
        "base_model": Param("", **MODEL_REF, title="Retriever backbone", section="Models",
                            description="Qwen2.5-VL to train (paper: Qwen/Qwen2.5-VL-3B-Instruct); empty = the profile's."),
        "answer_model": Param("", **MODEL_REF, title="Answering VLM", section="Models",
                              description="Feedback and evaluation VLM (paper: Qwen/Qwen2.5-VL-7B-Instruct); empty = the profile's."),
        "num_gpus": Param(None, type=["null", "integer"], minimum=0, maximum=8, title="GPUs for training", section="Training",
                          description="0 = CPU in one process; N = torchrun over N GPUs on the gpu queue; empty = the profile's."),
        "train_steps": Param(None, type=["null", "integer"], minimum=1, maximum=10_000_000, title="Training steps",
                             section="Training", description="Stop both training stages after this many steps; empty = epochs."),
        "feedback_top_k": Param(None, type=["null", "integer"], minimum=1, maximum=1000, title="Feedback depth",
                                section="Training", description="Documents the VLM judges per query (paper: 30); empty = the profile's."),
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
    models = {
        "synth_model": [("synthesize", "generation", "model")],
        "synth_backend": [("synthesize", "generation", "backend")],
        "miner_model": [("mine", "embedder", "model")],
        "base_model": [("train_stage1", "base_model"), ("train_stage2", "base_model")],
        "answer_model": [("feedback", "generation", "model"), ("evaluate", "generation", "model")],
        "num_gpus": [("train_stage1", "num_gpus"), ("train_stage2", "num_gpus")],
        "train_steps": [("train_stage1", "max_steps"), ("train_stage2", "max_steps")],
        "feedback_top_k": [("feedback", "top_k")],
    }
    for param, paths in models.items():
        value = params.get(param)
        if value is None or value == "":
            continue
        for path in paths:
            node = over
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    return over
