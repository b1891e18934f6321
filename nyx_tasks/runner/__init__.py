"""The stage runner, by job: `contract` (what a stage is and is handed), `engine` (plan, shard,
commit, run), `manifest` (a snapshot's manifest and the checks before a commit) and `adoption`
(an experiment variant adopting its base's snapshot). Stages and callers import from here."""

from nyx_tasks.runner.contract import (
           RunOptions,
           ShardOutputs,
           Stage,
           StageContext,
           StageResult,
           stage_config_hash,
)
from nyx_tasks.runner.engine import (
           commit_stage,
           plan_stage,
           run_shard,
           run_stage,
           write_resolved_config,
)

__all__ = ["RunOptions", "ShardOutputs", "Stage", "StageContext", "StageResult", "commit_stage", "plan_stage",
           "run_shard", "run_stage", "stage_config_hash", "write_resolved_config"]
