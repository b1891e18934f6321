"""DAG integrity: the DAG folder imports cleanly; every DAG has tags, an owner, retries,
documentation, the shared defaults and is paused on creation (the Astronomer template's checks,
one test per DAG); nyxqa_to_model has the structure the registry implies; the trigger forms
refuse bad values."""

import copy
import json
import logging
import os
import re

import pytest

from nyx_tasks.stages import STAGE_NAMES
from tests.conftest import REPO

# Every DAG the folder defines; test_the_dag_folder_defines_exactly_these fails when one is added
# or dropped, so a new DAG cannot miss the checks below (the ids are known at collection time, the
# DagBag is parsed once, when the first test needs it).
DAG_IDS = ["nyxqa_to_model", "nyx_remine_negatives", "nyx_experiments", "nyx_index", *(f"nyx_stage_{s}" for s in STAGE_NAMES)]
EVERY_DAG = pytest.mark.parametrize("dag_id", DAG_IDS)

# Tasks that deliberately have no retries, each with its reason.
NO_RETRY_TASKS = {
    "check": "it refuses bad trigger values before any stage runs; the same values would be refused "
             "again (and it fails with AirflowFailException, which Airflow never retries)",
}
# default_args a DAG sets differently from nyx_airflow.defaults.DEFAULT_ARGS, each with its reason
# (the DAG file says it too).
DEFAULT_ARG_OVERRIDES = {
    "nyx_remine_negatives": {"retry_delay", "retry_exponential_backoff"},  # one GPU task: a flat minute
}


@pytest.fixture(scope="module")
def dagbag():
    import sys

    # Importing and parsing configure Airflow's logging, which replaces the root logger's handlers:
    # they are put back.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from airflow.dag_processing.dagbag import DagBag  # what airflow.models.DagBag names in 3.3

    # Airflow puts the DAG folder on sys.path in its own processes; do the same here.
    if str(REPO / "dags") not in sys.path:
        sys.path.insert(0, str(REPO / "dags"))

    # Airflow 3 no longer mixes the example DAGs into a DagBag (include_examples is gone; they
    # are a bundle of their own, and conftest sets load_examples False besides): only dags/.
    try:
        return DagBag(dag_folder=str(REPO / "dags"))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)



def declared(fact: str) -> set[str]:
    """The stages that declare `fact` (a Stage class attribute the DAG builder reads)."""
    from nyx_tasks.stages import STAGE_NAMES, get_stage

    return {name for name in STAGE_NAMES if getattr(get_stage(name), fact)}

def test_no_import_errors(dagbag):
    errors = "\n".join(f"{path}:\n{err}" for path, err in dagbag.import_errors.items())
    assert dagbag.import_errors == {}, errors
    assert "nyxqa_to_model" in dagbag.dag_ids


def test_the_dag_folder_defines_exactly_these(dagbag):
    assert sorted(dagbag.dag_ids) == sorted(DAG_IDS)


@EVERY_DAG
def test_dag_has_tags(dagbag, dag_id):
    tags = dagbag.dags[dag_id].tags
    assert tags and all(t.strip() for t in tags), f"{dag_id} has no tags"
    assert "nyx" in tags, f"{dag_id}: every Nyx DAG carries the 'nyx' tag (the UI's filter)"


@EVERY_DAG
def test_dag_has_an_owner(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    for task in dag.tasks:
        assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id}: owner {task.owner!r}"
    assert dag.owner == "nyx"


@EVERY_DAG
def test_tasks_retry_except_the_documented_ones(dagbag, dag_id):
    for task in dagbag.dags[dag_id].tasks:
        if task.task_id in NO_RETRY_TASKS:
            assert task.retries == 0, f"{dag_id}.{task.task_id}: no retries by design ({NO_RETRY_TASKS[task.task_id]})"
        else:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has retries={task.retries}"


@EVERY_DAG
def test_dag_is_paused_upon_creation(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.is_paused_upon_creation is True and not dag.catchup


@EVERY_DAG
def test_dag_has_doc_md(dagbag, dag_id):
    doc = dagbag.dags[dag_id].doc_md
    assert doc and doc.strip(), f"{dag_id} has no doc_md"


@EVERY_DAG
def test_dag_uses_the_shared_default_args(dagbag, dag_id):
    from nyx_airflow.defaults import DEFAULT_ARGS, START_DATE

    dag = dagbag.dags[dag_id]
    overridden = DEFAULT_ARG_OVERRIDES.get(dag_id, set())
    assert overridden <= set(DEFAULT_ARGS) and not overridden & {"owner", "retries"}
    for key, value in DEFAULT_ARGS.items():
        assert key in dag.default_args, f"{dag_id} lacks default_args[{key!r}]"
        if key not in overridden:
            assert dag.default_args[key] == value, f"{dag_id}: default_args[{key!r}] differs from DEFAULT_ARGS"
    assert dag.start_date == START_DATE


def test_structure_follows_the_stage_registry(dagbag):
    from nyx_airflow.stage_group import GPU_COUNTS
    GPU_ROUTED, VECTOR_STAGES = declared("gpu_routed"), declared("embeds_corpora")

    dag = dagbag.dags["nyxqa_to_model"]
    assert dag.schedule is None or dag.timetable.summary in ("None", "")
    assert {"nyx", "nyxqa"} <= set(dag.tags) and dag.doc_md
    expected = {"check"} | {f"{s}.{t}" for s in STAGE_NAMES for t in ("plan", "shard", "commit")}
    expected |= {f"{s}.{t}" for s in GPU_ROUTED for t in ("route", *(f"shard_gpu{n}" for n in GPU_COUNTS))}
    expected |= {f"{s}.{t}" for s in VECTOR_STAGES for t in ("vectors_plan", "vectors_route", "vectors", "vectors_gpu")}
    assert set(dag.task_ids) == expected
    for s in VECTOR_STAGES:  # embedding shards are mapped before the stage plans; one route is always skipped
        cpu, gpu = dag.get_task(f"{s}.vectors"), dag.get_task(f"{s}.vectors_gpu")
        assert cpu.upstream_task_ids == gpu.upstream_task_ids == {f"{s}.vectors_plan", f"{s}.vectors_route"}
        assert (gpu.queue, gpu.pool, gpu.pool_slots) == ("gpu", "gpu", 1) and cpu.queue == "default"
        assert cpu.map_index_template == "{{ shard_name }}"
        plan = dag.get_task(f"{s}.plan")
        assert plan.upstream_task_ids == {cpu.task_id, gpu.task_id} and plan.trigger_rule == "none_failed"
    for s in STAGE_NAMES:
        plan, shard, commit = (dag.get_task(f"{s}.{t}") for t in ("plan", "shard", "commit"))
        assert commit.trigger_rule == "none_failed"
        assert shard.map_index_template == "{{ shard_name }}"
        assert [(type(o).__name__, o.name) for o in commit.outlets] == [("AssetAlias", f"nyx_{s}_commits")]
        assert plan.retries == 2 and plan.retry_exponential_backoff == 2.0  # True would mean x1.0 in Airflow 3.3
        if s in GPU_ROUTED:
            gpus = [dag.get_task(f"{s}.shard_gpu{n}") for n in GPU_COUNTS]
            for n, gpu in zip(GPU_COUNTS, gpus, strict=True):
                assert gpu.upstream_task_ids == shard.upstream_task_ids == {plan.task_id, f"{s}.route"}
                assert (gpu.queue, gpu.pool, gpu.pool_slots) == ("gpu", "gpu", n) and shard.queue == "default"
            assert commit.upstream_task_ids == {shard.task_id, *(g.task_id for g in gpus)}
        else:
            assert shard.upstream_task_ids == {plan.task_id}
            assert commit.upstream_task_ids == {shard.task_id}
    assert dag.get_task(f"{STAGE_NAMES[0]}.plan").upstream_task_ids == {"check"} and dag.get_task("check").retries == 0
    for a, b in zip(STAGE_NAMES, STAGE_NAMES[1:], strict=False):
        first = f"{b}.vectors_plan" if b in VECTOR_STAGES else f"{b}.plan"
        assert f"{a}.commit" in dag.get_task(first).upstream_task_ids
    assert STAGE_NAMES[STAGE_NAMES.index("filter") + 1:][:2] == ("mine", "train_stage1")


def test_gpu_routing_picks_the_pool_slots_the_run_needs(dagbag):  # dagbag: dags/ on sys.path
    from nyx_airflow.stage_group import gpu_variant

    from nyx_tasks.core.config import load_config
    from nyx_tasks.stages import get_stage

    assert [gpu_variant(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="at most 8"):
        gpu_variant(9)
    paper, demo = load_config("paper"), load_config("demo")
    gpus = {name: get_stage(name).gpus for name in declared("gpu_routed")}
    assert gpus["train_stage1"](paper) == 4 and gpus["train_stage1"](demo) == 0  # the code's 4 GPUs
    assert gpu_variant(gpus["train_stage2"](paper)) == 8  # its 6 GPUs hold an 8-slot variant
    assert gpus["synthesize"](paper) == 4 and gpus["synthesize"](demo) == 0


@pytest.mark.parametrize("bad", [{"profile": "huge"}, {"force": "yes"}, {"synth_backend": "tgi"},
                                 {"feedback_top_k": "30"}, {"source_paths": "x.parquet"}, {"redo": "mine"}])
def test_trigger_form_refuses_wrong_types(dagbag, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(copy.deepcopy(dagbag.dags["nyxqa_to_model"].params))  # update() sets the shared Params
    with pytest.raises(ParamValidationError):  # refused on assignment or on validation
        params.update(bad)
        params.validate()


@pytest.mark.parametrize("bad, named", [
    ({"every_nth": 0}, "every_nth = 0 is out of range: it must be 1 or more"),
    ({"sample_size": -5}, "sample_size = -5 is out of range: it must be 1 to 10,000,000"),
    ({"num_gpus": 9}, "num_gpus = 9"), ({"num_gpus": -1}, "num_gpus = -1"), ({"train_steps": 0}, "train_steps = 0"),
    ({"partition": "../x"}, "partition '../x' is not a valid name"), ({"partition": "a b"}, "partition 'a b'"),
    ({"source_paths": [""]}, "source_paths: an empty line"), ({"base_model": "two words"}, "base_model 'two words'"),
    ({"redo": ["chunkk"]}, "redo: 'chunkk' is not a stage; did you mean 'chunk'?"),
])
def test_check_refuses_bad_values_in_one_readable_line(dagbag, bad, named):
    """What the schema no longer bounds (the UI would silently clamp to minimum/maximum), the
    run's first task refuses in one line naming the field, the value and the rule."""
    from airflow.sdk.definitions.param import ParamsDict
    from nyx_airflow.params import ConfError, check_conf

    params = ParamsDict(copy.deepcopy(dagbag.dags["nyxqa_to_model"].params))  # update() sets the shared Params
    params.update(bad)
    values = params.validate()  # the schema lets it through: types are right
    with pytest.raises(ConfError) as err:
        check_conf(values, bad)
    msg = str(err.value)
    assert named in msg and "\n" not in msg and "Failed validating" not in msg and "^" not in msg


@pytest.mark.parametrize("key, nearest", [("sample-size", "sample_size"), ("bogus_key", None), ("partiton", "partition"),
                                          ("Force", "force")])
def test_unknown_conf_keys_are_refused_naming_the_nearest(dagbag, key, nearest):
    from nyx_airflow.params import ConfError, check_conf

    with pytest.raises(ConfError) as err:
        check_conf({}, {key: 1}, known=set(dagbag.dags["nyxqa_to_model"].params))
    msg = str(err.value)
    assert f"unknown conf key {key!r}" in msg and "\n" not in msg
    assert (f"did you mean {nearest!r}?" in msg) if nearest else "did you mean" not in msg


@EVERY_DAG
def test_trigger_form_submits_as_it_opens(dagbag, dag_id):
    """The UI marks a field required when its schema type does not include "null" (its
    isParamRequired rule) and refuses to trigger while a required field is empty; a
    dropdown labels a None option "null" unless values_display names it."""
    from airflow.sdk.definitions.param import ParamsDict
    from nyx_airflow.params import check_conf

    params = dagbag.dags[dag_id].params
    for name in params:
        param = params.get_param(name)
        types = param.schema.get("type")
        nullable = isinstance(types, list) and "null" in types
        assert nullable or param.value not in (None, "", []), f"{name} would be a required field left empty"
        if None in (param.schema.get("enum") or []):
            assert param.schema.get("values_display", {}).get("null"), f"{name} shows a 'null' option"
        if "integer" in (types or []):
            assert "minimum" not in param.schema and "maximum" not in param.schema, f"{name}: the UI would clamp"
    defaults = ParamsDict(copy.deepcopy(params)).validate()
    # defaults pass, in a backfill too where the partition is left to the logical date (the re-mining
    # DAG's is fixed: it is no backfill DAG)
    check_conf(defaults, {}, run_type="backfill" if defaults.get("partition") is None else "manual", known=set(params))


def test_redo_names_stages_and_later_stages():
    from nyx_airflow.params import overrides_from_params, redo_stages

    assert redo_stages(["chunk"]) == {"chunk"}
    assert redo_stages(["mine+"]) == set(STAGE_NAMES[STAGE_NAMES.index("mine"):])
    assert redo_stages(None) == redo_stages([]) == set()
    params = {"redo": ["sample", "evaluate+"]}
    forced = {s for s in STAGE_NAMES if overrides_from_params(params, "2026-01-02", s).get("force")}
    assert forced == {"sample", "evaluate"}
    assert all(overrides_from_params({"force": True}, "d", s)["force"] for s in STAGE_NAMES)


def test_backfill_runs_write_their_logical_dates_and_refuse_a_fixed_partition():
    from nyx_airflow.params import ConfError, check_conf, overrides_from_params

    assert [overrides_from_params({"partition": None}, d)["partition"] for d in ("2026-01-01", "2026-01-02")] == \
        ["2026-01-01", "2026-01-02"]
    assert overrides_from_params({"partition": "p1"}, "2026-01-01")["partition"] == "p1"
    check_conf({"partition": "p1"}, {"partition": "p1"}, run_type="manual")
    with pytest.raises(ConfError, match="every date would write the same partition"):
        check_conf({"partition": "p1"}, {"partition": "p1"}, run_type="backfill")


def test_params_become_config_overrides(dagbag):
    from nyx_airflow.params import overrides_from_params

    from nyx_tasks.core.config import load_config

    over = overrides_from_params({"profile": "demo", "partition": None, "every_nth": 3, "sample_size": 9,
                                  "source_paths": ["/data/x.parquet"], "force": True}, "2026-01-02")
    cfg = load_config("demo", over)
    assert cfg.partition == "2026-01-02" and cfg.ingest.every_nth == 3 and cfg.sample.size == 9
    assert cfg.ingest.source.kind == "files" and cfg.force


def test_the_forms_gpu_count_keeps_the_papers_examples_per_step(dagbag):
    """The paper profile fixes examples per optimiser step (512, 1344): the form's GPU count moves
    gradient accumulation, not the recipe; a count that cannot keep it is refused, naming both."""
    from nyx_airflow.params import overrides_from_params

    from nyx_tasks.core.config import ConfigError, load_config

    for gpus, acc1, acc2 in ((8, 4, 6), (2, 16, 24), (4, 8, 12)):
        cfg = load_config("paper", overrides_from_params({"profile": "paper", "num_gpus": gpus}, "2026-01-02"))
        assert (cfg.train_stage1.accumulation, cfg.train_stage2.accumulation) == (acc1, acc2)
        assert cfg.train_stage1.per_device_batch_size * gpus * acc1 == 512
        assert cfg.train_stage2.per_device_batch_size * gpus * acc2 == 1344
    with pytest.raises(ConfigError, match="global_batch_size \\(512\\).*x GPUs \\(6\\)"):
        load_config("paper", overrides_from_params({"profile": "paper", "num_gpus": 6}, "2026-01-02"))


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


def test_remine_offers_the_pipelines_run_fields(dagbag):
    """The re-mining form is the pipeline form's Run section (no redo: its task is no registry
    stage) with the partition fixed to demo, and it makes the config it made before the params
    were shared: partition demo, the profile's root, no force."""
    from airflow.sdk.definitions.param import ParamsDict
    from nyx_airflow.params import overrides_from_params, run_params

    remine, full = dagbag.dags["nyx_remine_negatives"].params, dagbag.dags["nyxqa_to_model"].params
    assert list(remine) == list(run_params(redo=False)) == ["profile", "partition", "artifacts_root", "force"]
    for name in remine:
        mine, theirs = remine.get_param(name), full.get_param(name)
        assert mine.schema == theirs.schema and mine.description == theirs.description, name
        assert mine.value == ("demo" if name == "partition" else theirs.value), name
    defaults = ParamsDict(copy.deepcopy(remine)).validate()
    assert defaults == {"profile": "demo", "partition": "demo", "artifacts_root": None, "force": False}
    assert overrides_from_params(defaults, "2026-01-04") == {"partition": "demo"}  # as with the old form
    forced = overrides_from_params({**defaults, "partition": "p1", "artifacts_root": "/x", "force": True}, "d")
    assert forced == {"partition": "p1", "artifacts": {"root": "/x"}, "force": True}


@pytest.mark.parametrize("conf, named", [({"partition": "../x"}, "partition '../x' is not a valid name"),
                                         ({"redo": ["mine"]}, "unknown conf key 'redo'"),
                                         ({"partiton": "p"}, "did you mean 'partition'?")])
def test_remine_refuses_bad_values_in_one_line(dagbag, conf, named):
    """The old form's partition pattern is now check_conf's rule, as in the other DAGs: the remine
    task refuses before embedding anything."""
    from airflow.sdk.definitions.param import ParamsDict
    from nyx_airflow.params import ConfError, check_conf

    params = dagbag.dags["nyx_remine_negatives"].params
    values = ParamsDict(copy.deepcopy(params)).validate()
    values.update({k: v for k, v in conf.items() if k in params})
    with pytest.raises(ConfError, match=re.escape(named)):
        check_conf(values, conf, known=set(params))


def test_one_backfillable_dag_per_stage(dagbag):
    from airflow.sdk import DAG
    from nyx_airflow.params import trigger_params
    VECTOR_STAGES = declared("embeds_corpora")

    for stage in STAGE_NAMES:
        dag = dagbag.dags[f"nyx_stage_{stage}"]
        assert isinstance(dag, DAG) and dag.is_paused_upon_creation and not dag.catchup
        # backfills need a time-based schedule
        assert type(dag.timetable).__name__ == "CronTriggerTimetable" and dag.timetable.expression == "0 0 * * *"
        assert {t.split(".")[0] for t in dag.task_ids} == {stage, "gate", "check"}  # that stage, behind the gate
        assert dag.get_task("gate").downstream_task_ids == {"check"}
        first = f"{stage}.vectors_plan" if stage in VECTOR_STAGES else f"{stage}.plan"
        assert dag.get_task("check").downstream_task_ids == {first}
        assert set(dag.params) == set(trigger_params()) and stage in dag.tags
    full = dagbag.dags["nyxqa_to_model"]
    for stage in STAGE_NAMES:  # the same task group in both: one factory, no copies
        assert {t for t in full.task_ids if t.startswith(f"{stage}.")} == set(dagbag.dags[f"nyx_stage_{stage}"].task_ids) - {"gate", "check"}


@EVERY_DAG
def test_trigger_form_fields_have_titles_and_sections(dagbag, dag_id):
    params = dagbag.dags[dag_id].params
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.schema.get("section") and param.description, name


def test_model_and_training_params_become_overrides():
    from nyx_airflow.params import overrides_from_params

    from nyx_tasks.core.config import load_config

    cfg = load_config("demo", overrides_from_params(
        {"base_model": "/models/qwen", "answer_model": "Qwen/Qwen2.5-VL-7B-Instruct", "num_gpus": 4,
         "train_steps": 7, "synth_backend": "openai", "miner_model": "intfloat/mmE5-mllama-11b-instruct",
         "feedback_top_k": 12, "synth_model": ""}, "2026-01-02"))
    assert cfg.train_stage1.base_model == cfg.train_stage2.base_model == "/models/qwen"
    assert cfg.feedback.generation.model == cfg.evaluate.generation.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.train_stage1.num_gpus == cfg.train_stage2.num_gpus == 4 and cfg.train_stage2.max_steps == 7
    assert cfg.synthesize.generation.backend == "openai" and cfg.feedback.top_k == 12
    assert cfg.synthesize.generation.model == load_config("demo").synthesize.generation.model  # empty: the profile's


def test_asset_lineage_runs_from_obelics_to_the_evaluated_model(dagbag):
    CHECKPOINT_STAGES = declared("publishes_checkpoint")

    from nyx_tasks.stages import get_stage

    dag = dagbag.dags["nyxqa_to_model"]
    assert [a.name for a in dag.get_task("ingest.plan").inlets] == ["obelics"]
    produced = {"obelics"}
    for stage in STAGE_NAMES:  # every stage reads only assets produced before it
        inlets = {a.name for a in dag.get_task(f"{stage}.plan").inlets}
        assert inlets <= produced and (stage == "ingest" or inlets == {f"nyx_{s}" for s in get_stage(stage).inputs})
        (alias,) = dag.get_task(f"{stage}.commit").outlets  # events go through the alias when a commit writes
        assert alias.name == f"nyx_{stage}_commits"
        produced |= {f"nyx_{stage}"} | ({"nyx_checkpoint"} if stage in CHECKPOINT_STAGES else set())
    assert {"nyx_evaluate", "nyx_checkpoint"} <= produced


def test_shards_are_grouped_into_at_most_max_shard_tasks():
    from nyx_airflow.stage_group import group_name, group_shards

    shards = [{"shard": i, "name": f"s{i}"} for i in range(5)]
    assert group_shards(shards, None) == [[s] for s in shards]
    assert group_shards(shards, 8) == [[s] for s in shards]
    groups = group_shards(shards, 2)
    assert [[s["shard"] for s in g] for g in groups] == [[0, 1, 2], [3, 4]]
    assert [s for g in group_shards(shards, 3) for s in g] == shards  # every shard once, in order
    assert group_name(groups[0]) == "s0 .. s2 (3 shards)" and group_name([shards[4]]) == "s4"


def test_max_shard_tasks_changes_no_stage_config_hash():
    from nyx_tasks.core.config import load_config
    from nyx_tasks.runner import stage_config_hash
    from nyx_tasks.stages import get_stage

    one, many = load_config("demo", {"airflow": {"max_shard_tasks": 1}}), load_config("demo", {"airflow": {"max_shard_tasks": None}})
    for name in STAGE_NAMES:
        assert stage_config_hash(get_stage(name), one) == stage_config_hash(get_stage(name), many), name


def test_experiments_dag_checks_then_maps_one_variant_task_per_variant(dagbag):
    """check (no retries) -> base (shared stages) -> variant (mapped over check's variants) -> report."""
    from airflow.sdk.definitions.param import ParamsDict

    dag = dagbag.dags["nyx_experiments"]
    assert {t.task_id for t in dag.tasks} == {"check", "base", "variant", "report"}
    variant = dag.get_task("variant")
    assert variant.upstream_task_ids == {"check", "base"} and dag.get_task("base").upstream_task_ids == {"check"}
    assert dag.get_task("report").upstream_task_ids == {"variant"} and dag.get_task("check").retries == 0
    assert type(variant).__name__.endswith("MappedOperator")  # .expand over the variants
    assert "redo" not in dag.params and {"experiment", "grid", "variants", "partition"} <= set(dag.params)
    defaults = ParamsDict(copy.deepcopy(dag.params)).validate()
    from nyx_tasks.core.config import load_config
    from nyx_tasks.experiments import check_variants, expand

    variants = expand(defaults["grid"], defaults["variants"])  # the form's example grid is a valid experiment
    assert [v.name for v in variants] == ["bootstrap=200", "bootstrap=1000"]
    check_variants(load_config("demo", {"partition": "demo"}), variants)


def test_each_stage_declares_what_its_task_group_needs():
    """The DAG builder reads these from the stages (no list of stage names in stage_group.py)."""
    from nyx_tasks.core.config import load_config
    from nyx_tasks.stages import STAGE_NAMES, get_stage

    cfg = load_config("demo")
    assert declared("gpu_routed") == {"synthesize", "train_stage1", "feedback", "train_stage2", "evaluate"}
    assert declared("embeds_corpora") == {"mine", "feedback", "evaluate"}
    assert declared("publishes_checkpoint") == {"train_stage1", "train_stage2"}
    generating = {n for n in STAGE_NAMES if get_stage(n).generation(cfg) is not None}
    assert generating == {"synthesize", "feedback", "evaluate"}
    assert all(get_stage(n).generation(cfg) is getattr(cfg, n).generation for n in generating)
    assert all(set(get_stage(n).flow) == {"in", "out", "drops"} for n in STAGE_NAMES)  # the explorer's words


def test_the_vllm_connection_reaches_every_openai_generation_block(dagbag, monkeypatch):
    """`nyx_vllm` (here from the environment, as Airflow reads connections) gives its URL to each stage
    whose declared generation uses the openai backend, and its key to that block's environment
    variable, never to the config; hf blocks are left as they are."""
    from nyx_airflow.stage_group import apply_vllm_connection

    from nyx_tasks.core.config import load_config

    monkeypatch.setenv("AIRFLOW_CONN_NYX_VLLM", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 8011, "password": "k-123"}))
    cfg = load_config("demo", ["synthesize.generation.backend=openai", "evaluate.generation.backend=openai"])
    monkeypatch.setenv(cfg.synthesize.generation.api_key_env, "before")  # restored (or removed) afterwards
    out = apply_vllm_connection(cfg)
    assert out.synthesize.generation.base_url == out.evaluate.generation.base_url == "http://127.0.0.1:8011/v1"
    assert out.feedback.generation == cfg.feedback.generation  # hf: untouched
    assert os.environ[cfg.synthesize.generation.api_key_env] == "k-123"
    assert "k-123" not in out.model_dump_json()
    hf_only = load_config("demo")
    assert apply_vllm_connection(hf_only) is hf_only


def test_the_dag_page_and_each_backfill_page_carry_each_stage_doc(dagbag):
    """`Stage.doc` is a stage's one description: the pipeline DAG's stage table and each backfill
    DAG's page are made from it."""
    from nyx_tasks.stages import STAGE_NAMES, get_stage

    doc = dagbag.dags["nyxqa_to_model"].doc_md
    for name in STAGE_NAMES:
        assert f"| {name} | {get_stage(name).doc} |" in doc
        assert get_stage(name).doc in dagbag.dags[f"nyx_stage_{name}"].doc_md
