"""DAG integrity: the DAG folder imports cleanly and nyxqa_to_model has the
structure the registry implies; the trigger form refuses bad values."""

import pytest

from nyx_tasks.stages import STAGE_NAMES
from tests.conftest import REPO


@pytest.fixture(scope="module")
def dagbag():
    import sys

    from airflow.dag_processing.dagbag import DagBag

    # Airflow puts the DAG folder on sys.path in its own processes; do the same here.
    if str(REPO / "dags") not in sys.path:
        sys.path.insert(0, str(REPO / "dags"))

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "nyxqa_to_model" in dagbag.dag_ids


def test_structure_follows_the_stage_registry(dagbag):
    from nyx_airflow.stage_group import CHECKPOINT_STAGES, GPU_COUNTS, GPU_ROUTED

    dag = dagbag.dags["nyxqa_to_model"]
    assert dag.schedule is None or dag.timetable.summary in ("None", "")
    assert {"nyx", "nyxqa"} <= set(dag.tags) and dag.doc_md
    expected = {f"{s}.{t}" for s in STAGE_NAMES for t in ("plan", "shard", "commit")}
    expected |= {f"{s}.{t}" for s in GPU_ROUTED for t in ("route", *(f"shard_gpu{n}" for n in GPU_COUNTS))}
    assert set(dag.task_ids) == expected
    for s in STAGE_NAMES:
        plan, shard, commit = (dag.get_task(f"{s}.{t}") for t in ("plan", "shard", "commit"))
        assert commit.trigger_rule == "none_failed"
        assert shard.map_index_template == "{{ shard_name }}"
        assert [o.name for o in commit.outlets] == [f"nyx_{s}"] + (["nyx_checkpoint"] if s in CHECKPOINT_STAGES else [])
        assert plan.retries == 2
        if s in GPU_ROUTED:
            gpus = [dag.get_task(f"{s}.shard_gpu{n}") for n in GPU_COUNTS]
            for n, gpu in zip(GPU_COUNTS, gpus, strict=True):
                assert gpu.upstream_task_ids == shard.upstream_task_ids == {plan.task_id, f"{s}.route"}
                assert (gpu.queue, gpu.pool, gpu.pool_slots) == ("gpu", "gpu", n) and shard.queue == "default"
            assert commit.upstream_task_ids == {shard.task_id, *(g.task_id for g in gpus)}
        else:
            assert shard.upstream_task_ids == {plan.task_id}
            assert commit.upstream_task_ids == {shard.task_id}
    for a, b in zip(STAGE_NAMES, STAGE_NAMES[1:], strict=False):
        assert f"{a}.commit" in dag.get_task(f"{b}.plan").upstream_task_ids
    assert STAGE_NAMES[STAGE_NAMES.index("filter") + 1:][:2] == ("mine", "train_stage1")


def test_gpu_routing_picks_the_pool_slots_the_run_needs():
    from nyx_airflow.stage_group import GPU_ROUTED, gpu_variant

    from nyx_tasks.config import load_config

    assert [gpu_variant(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="at most 8"):
        gpu_variant(9)
    paper, demo = load_config("paper"), load_config("demo")
    assert GPU_ROUTED["train_stage1"](paper) == 8 and GPU_ROUTED["train_stage1"](demo) == 0
    assert GPU_ROUTED["synthesize"](paper) == 4 and GPU_ROUTED["synthesize"](demo) == 0


@pytest.mark.parametrize("bad", [{"every_nth": 0}, {"profile": "huge"}, {"partition": "../x"},
                                 {"sample_size": -5}, {"force": "yes"}, {"source_paths": [""]}])
def test_trigger_form_refuses_bad_values(dagbag, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["nyxqa_to_model"].params)
    with pytest.raises(ParamValidationError):  # refused on assignment or on validation
        params.update(bad)
        params.validate()


def test_params_become_config_overrides(dagbag):
    from nyx_airflow.params import overrides_from_params

    from nyx_tasks.config import load_config

    over = overrides_from_params({"profile": "demo", "partition": "", "every_nth": 3, "sample_size": 9,
                                  "source_paths": ["/data/x.parquet"], "force": True}, "2026-01-02")
    cfg = load_config("demo", over)
    assert cfg.partition == "2026-01-02" and cfg.ingest.every_nth == 3 and cfg.sample.size == 9
    assert cfg.ingest.source.kind == "files" and cfg.force


def test_remine_dag_runs_on_a_cron_or_a_new_checkpoint(dagbag):
    from airflow.sdk import AssetOrTimeSchedule
    from nyx_airflow.stage_group import CHECKPOINT_ASSET

    dag = dagbag.dags["nyx_remine_negatives"]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 3 * * 0"
    assert [a.name for a in dag.timetable.asset_condition.objects] == [CHECKPOINT_ASSET.name]
    (remine,) = dag.tasks
    assert [o.name for o in remine.outlets] == ["nyx_negatives"]
    assert (remine.queue, remine.pool) == ("gpu", "gpu")
