"""Warm task processes: import, once, what the stages' task processes import.

A task process of a model-bearing stage spends ~5 s of a 2-core machine importing
torch, transformers and the model families before it loads a model; `nyx run` pays
that once, an Airflow run once per task. An executor that forks its task processes
(Airflow's LocalExecutor: scheduler -> worker -> task, all by fork) can import these
modules before it forks, and every task starts with them loaded (shared
copy-on-write). Only imports: nothing here starts a thread, opens a device or loads
weights, so forking afterwards is safe (OpenMP and the tokenizers' thread pools start
on first use, in the task).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from nyx_tasks.core.log import TASK_ENV

# The libraries, then the model families the profiles use (transformers loads a family's
# modules on first use: Qwen2.5-VL for the Nyx embedder and the answering VLM, InternVL for
# synthesis, Mllama for mmE5, Qwen2 for the text tiny model, BERT for MiniLM / E5), then
# this package's stage modules.
MODULES = (
    "numpy", "pyarrow.parquet", "PIL.Image", "torch", "transformers", "tokenizers", "peft", "faiss",
    "sentence_transformers",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
    "transformers.models.qwen2_vl.image_processing_qwen2_vl", "transformers.models.internvl.modeling_internvl",
    "transformers.models.internvl.processing_internvl", "transformers.models.mllama.modeling_mllama",
    "transformers.models.mllama.processing_mllama", "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.bert.modeling_bert", "transformers.trainer",
    "nyx_tasks.runner", "nyx_tasks.stages", "nyx_tasks.inference.hf_backend", "nyx_tasks.embedding.nyx",
    "nyx_tasks.embedding.mme5", "nyx_tasks.embedding.st", "nyx_tasks.training.driver", "nyx_tasks.retrieval.search",
)


def preload(modules: tuple[str, ...] = MODULES, log: logging.Logger | None = None) -> dict[str, str]:
    """Import `modules` (after setting `log.TASK_ENV` where unset: libgomp reads OMP_* when torch
    loads, so here, not later in the task); returns what failed to import and why (an optional
    library that is not installed is skipped, never an error)."""
    for var, value in TASK_ENV:
        os.environ.setdefault(var, value)
    t0, failed = time.monotonic(), {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a library refusing this machine: the task will say so itself
            failed[name] = f"{type(e).__name__}: {e}"
    if log:
        log.info("preloaded %d of %d modules for the task processes in %.1f s%s", len(modules) - len(failed),
                 len(modules), time.monotonic() - t0, f"; not loaded: {sorted(failed)}" if failed else "")
    return failed
