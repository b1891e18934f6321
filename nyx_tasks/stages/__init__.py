"""The stage registry, in pipeline order. The CLI and the DAGs are generated
from it; a stage module exposes `STAGE`, an instance of `runner.Stage`."""

from __future__ import annotations

import importlib

# name -> module; order is the pipeline order (paper sections: NyxQA construction).
STAGE_MODULES: dict[str, str] = {
    "ingest": "nyx_tasks.stages.ingest",
    "chunk": "nyx_tasks.stages.chunk",
    "sample": "nyx_tasks.stages.sample",
    "synthesize": "nyx_tasks.stages.synthesize",
    "filter": "nyx_tasks.stages.filter",
    "mine": "nyx_tasks.stages.mine",
    "train_stage1": "nyx_tasks.stages.train_stage1",
    "feedback": "nyx_tasks.stages.feedback",
    "train_stage2": "nyx_tasks.stages.train_stage2",
    "evaluate": "nyx_tasks.stages.evaluate",
}
STAGE_NAMES: tuple[str, ...] = tuple(STAGE_MODULES)


def get_stage(name: str):
    if name not in STAGE_MODULES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(STAGE_MODULES[name]).STAGE
