"""The trigger form (params shared by the Nyx DAGs) and the check that runs first.

The form must submit as it opens: every "empty keeps the profile's" field is
nullable (`["null", ...]`, default None), so the UI does not mark it required.
The JSON schema checks only types; ranges, name patterns and unknown conf keys
are checked by `check_conf` in the run's first task, which refuses a bad value
in one readable line (Airflow would answer a schema bound with a raw jsonschema
dump, and its number inputs silently clamp to `minimum`/`maximum`).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from airflow.sdk import Param

from nyx_tasks.core.config import list_profiles
from nyx_tasks.stages import STAGE_NAMES

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")
NAME_RULE = "letters, digits, '_', '.', '=', '-', at most 64, starting with a letter or digit"
# (low, high) of each integer field, shown in its description and enforced by check_conf
BOUNDS: dict[str, tuple[int, int | None]] = {
    "every_nth": (1, None), "sample_size": (1, 10_000_000), "num_gpus": (0, 8),
    "train_steps": (1, 10_000_000), "feedback_top_k": (1, 1000),
}
MODEL_FIELDS = ("synth_model", "miner_model", "base_model", "answer_model")
REDO_FROM = "+"  # "mine+" = mine and every stage after it
REDO_CHOICES = [*STAGE_NAMES, *(f"{s}{REDO_FROM}" for s in STAGE_NAMES)]
REDO_LABELS = {f"{s}{REDO_FROM}": f"{s} and every later stage" for s in STAGE_NAMES}


class ConfError(ValueError):
    """A trigger value the pipeline refuses; the message is one line."""


def _bounds_text(name: str) -> str:
    low, high = BOUNDS[name]
    return f"{low:,} to {high:,}" if high is not None else f"{low:,} or more"


def _optional_int(name: str, title: str, section: str, description: str) -> Param:
    return Param(None, type=["null", "integer"], title=title, section=section,
                 description=f"{description} ({_bounds_text(name)}; empty = the profile's).")


def optional_str(title: str, section: str, description: str, default: str | None = None) -> Param:
    return Param(default, type=["null", "string"], maxLength=500, title=title, section=section,
                 description=description)


def run_params(*, partition: str | None = None, redo: bool = True) -> dict[str, Param]:
    """What every Nyx DAG's form offers, in its Run section: profile, partition, artifact root and
    force, plus redo for the DAGs made of registry stages (`redo=False`: a DAG whose one task is no
    registry stage, where redo would mean nothing). `partition` is the field's default (None: empty,
    the run's logical date); the names, types, titles and checks are the same in every DAG, and
    `check_conf` checks them wherever they appear."""
    params = {
        "profile": Param("demo", type="string", enum=list_profiles(), title="Profile", section="Run",
                         description="Config profile: demo (tiny, CPU, local), paper (the paper's models and sizes) "
                                     "or paper-shape (the paper's settings with tiny models and sizes, on a CPU)."),
        "partition": optional_str("Partition", "Run", "Name of the corpus slice; empty = the run's logical date "
                                   f"(YYYY-MM-DD), so each backfill date writes its own partition. Allowed: {NAME_RULE}.",
                                   default=partition),
        "artifacts_root": optional_str("Artifact root", "Run",
                                        "Local path or fsspec URL; empty = $NYX_ARTIFACTS_ROOT or the profile's."),
        "force": Param(False, type="boolean", title="Force every stage", section="Run",
                       description="Recompute every stage of the run even when complete and unchanged."),
        "redo": Param(None, type=["null", "array"], items={"type": "string"}, examples=REDO_CHOICES,
                      values_display=REDO_LABELS, title="Redo stages", section="Run",
                      description="Recompute exactly these stages (complete ones included); 'X and every later stage' "
                                  "redoes X and everything after it. Other stages are reused when complete."),
    }
    if not redo:
        del params["redo"]
    return params


def trigger_params() -> dict[str, Param]:
    """The trigger form of the pipeline and stage DAGs."""
    return {
        **run_params(),
        "source_paths": Param(None, type=["null", "array"], items={"type": "string"}, title="OBELICS files",
                              section="Data", description="Parquet/JSONL files or globs (any fsspec URL), one per "
                              "line; empty = the profile's source."),
        "every_nth": _optional_int("every_nth", "Keep every Nth document", "Data", "Paper: 5000"),
        "sample_size": _optional_int("sample_size", "Sample size", "Data", "Chunks to sample; paper: 10,000"),
        "synth_backend": Param(None, type=["null", "string"], enum=[None, "hf", "openai", "vllm"], section="Models",
                               values_display={"null": "the profile's", "hf": "hf: in-process transformers",
                                               "openai": "openai: a vLLM server (the nyx_vllm connection)",
                                               "vllm": "vllm: offline engine on the gpu queue"},
                               title="Synthesis backend", description="How the synthesis VLM runs; empty = the profile's."),
        "synth_model": optional_str("Synthesis VLM", "Models",
                                     "Hub id or path (paper: OpenGVLab/InternVL3-78B); empty = the profile's."),
        "miner_model": optional_str("Miner", "Models", "Hard-negative miner (paper: "
                                     "intfloat/mmE5-mllama-11b-instruct); empty = the profile's."),
        "base_model": optional_str("Retriever backbone", "Models", "Qwen2.5-VL to train (paper: "
                                    "Qwen/Qwen2.5-VL-3B-Instruct); empty = the profile's."),
        "answer_model": optional_str("Answering VLM", "Models", "Feedback and evaluation VLM (paper: "
                                      "Qwen/Qwen2.5-VL-7B-Instruct); empty = the profile's."),
        "num_gpus": _optional_int("num_gpus", "GPUs for training", "Training",
                                  "0 = CPU in one process; N = torchrun over N GPUs on the gpu queue. With a "
                                  "profile's global_batch_size (paper: 512, 1344) accumulation follows, so N must "
                                  "divide it with the per-GPU batch (paper: 1, 2, 4 or 8)"),
        "train_steps": _optional_int("train_steps", "Training steps", "Training",
                                     "Stop both training stages after this many steps; empty = epochs"),
        "feedback_top_k": _optional_int("feedback_top_k", "Feedback depth", "Training",
                                        "Documents the VLM judges per query; paper: 30"),
    }


def _nearest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def redo_stages(redo) -> set[str]:
    """The stages a `redo` value names ('X+' = X and every later stage); refuses unknown names."""
    out: set[str] = set()
    for item in redo or []:
        name = str(item).strip()
        later = name.endswith(REDO_FROM)
        stage = name[:-1] if later else name
        if stage not in STAGE_NAMES:
            raise ConfError(f"redo: {name!r} is not a stage; {_nearest(stage, STAGE_NAMES)}"
                            f"stages: {', '.join(STAGE_NAMES)} (add '{REDO_FROM}' for 'and every later stage')")
        out.update(STAGE_NAMES[STAGE_NAMES.index(stage):] if later else [stage])
    return out


def check_conf(params: dict, conf: dict | None, run_type: str | None = None,
               known: set[str] | None = None) -> None:
    """Refuse, in one line, what the JSON schema lets through: unknown conf keys (naming the
    nearest valid one), out-of-range numbers, bad names, unknown redo stages, and a fixed
    partition in a backfill (every date would write the same partition)."""
    known = known if known is not None else set(trigger_params())
    for key in conf or {}:
        if key not in known:
            raise ConfError(f"unknown conf key {key!r}: {_nearest(key, known)}valid keys: {', '.join(sorted(known))}")
    for name, (low, high) in BOUNDS.items():
        value = params.get(name)
        if value is None or name not in known:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ConfError(f"{name} = {value!r} is out of range: it must be {_bounds_text(name)}")
    partition = params.get("partition")
    if partition and not NAME_RE.match(partition):
        raise ConfError(f"partition {partition!r} is not a valid name: use {NAME_RULE}")
    if partition and run_type == "backfill":
        raise ConfError(f"partition {partition!r} is set in a backfill, so every date would write the same partition; "
                        "leave it empty and each run writes the partition of its logical date")
    for name in MODEL_FIELDS:
        value = params.get(name)
        if value and (value != value.strip() or any(c.isspace() for c in value)):
            raise ConfError(f"{name} {value!r} is not a model reference: a hub id, path or tiny:<name> has no spaces")
    for path in params.get("source_paths") or []:
        if not str(path).strip():
            raise ConfError("source_paths: an empty line; give one file or glob per line")
    redo_stages(params.get("redo"))


def stage_overrides(params: dict, stage: str | None) -> dict:
    """`force` for this stage: the run's force, or `stage` named by redo."""
    return {"force": True} if params.get("force") or (stage and stage in redo_stages(params.get("redo"))) else {}


def overrides_from_params(params: dict, logical_date_ds: str | None, stage: str | None = None) -> dict:
    """Turn validated DAG params into a config override tree (for `stage`, when given)."""
    over: dict[str, Any] = {"partition": params.get("partition") or logical_date_ds or "default"}
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
    over.update(stage_overrides(params, stage))
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
