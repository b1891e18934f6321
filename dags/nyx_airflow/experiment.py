"""The experiment DAG's form and tasks: check (the whole grid validated) -> base (the stages every
variant shares, in the base partition) -> variant (mapped, one per variant: every stage in
`<base>--<variant>`, adopting the base's unchanged snapshots) -> report.

Each task calls one function of `nyx_tasks.experiments`; XCom carries the variants (names and
overrides) and their records (partitions, which stages were shared), never data.
"""

from __future__ import annotations

from airflow.sdk import Param, get_current_context, task

from nyx_tasks.core.log import get_logger
from nyx_tasks.experiments import (
    GridError,
    Variant,
    check_variants,
    expand,
    run_base,
    run_variant,
    variant_config,
    write_report,
)
from nyx_tasks.store.artifacts import ArtifactStore

from .params import NAME_RE, NAME_RULE, ConfError, check_conf, optional_str, trigger_params
from .stage_group import config_from_context, run_options

EXAMPLE_GRID = {"evaluate.bootstrap": [200, 1000]}


def experiment_params() -> dict[str, Param]:
    """The pipeline's form without redo (every variant adopts or computes by its own keys), plus the
    experiment's name and its grid of dotted `key: value` overrides."""
    params = {k: v for k, v in trigger_params().items() if k != "redo"}
    params["partition"] = optional_str("Base partition", "Run", "The experiment's base partition: the stages no "
                                        "variant changes are computed (or found complete) there and shared; empty = "
                                        f"the run's logical date. Allowed: {NAME_RULE}.")
    return {
        "experiment": Param("grid", type="string", minLength=1, maxLength=64, title="Experiment name",
                            section="Experiment",
                            description=f"Names the report folder reports/experiments/<name>/. Allowed: {NAME_RULE}."),
        "grid": Param(EXAMPLE_GRID, type=["null", "object"], title="Grid", section="Experiment",
                      description="Dotted config keys, each with a list of values; several keys make their "
                                  "product. One variant per combination, named like `bootstrap=200`, in partition "
                                  "<partition>--<variant>. E.g. {\"feedback.threshold\": [0.0, 0.5]}."),
        "variants": Param(None, type=["null", "object"], title="Named variants", section="Experiment",
                          description="Explicit variants besides the grid: name -> {dotted key: value}, e.g. "
                                      "{\"strict\": {\"evaluate.protocol\": \"strict\"}}."),
        **params,
    }


def _variants(params: dict) -> list[Variant]:
    return expand(params.get("grid"), params.get("variants"))


def check_experiment():
    """Refuse bad trigger values and any variant whose config does not validate, in one line each,
    before anything runs; returns the variants to map over."""
    @task(task_id="check", retries=0, doc_md="Check the trigger values and every variant's whole config (one "
          "line naming the variant and key); returns the variants the `variant` task is mapped over.")
    def check() -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException

        ctx = get_current_context()
        run, params = ctx["dag_run"], ctx["params"]
        try:
            check_conf(params, run.conf, run.run_type, known=set(ctx["dag"].params))
            if not NAME_RE.match(params.get("experiment") or ""):
                raise ConfError(f"experiment {params.get('experiment')!r} is not a valid name: use {NAME_RULE}")
            base = config_from_context()
            variants = _variants(params)
            check_variants(base, variants)
        except (ConfError, GridError) as e:
            raise AirflowFailException(f"refused: {e}") from None
        except Exception as e:  # a config the profile and these values cannot make
            first = str(e).strip().splitlines()
            raise AirflowFailException(f"refused: {type(e).__name__}: {' '.join(first[:3])[:400]}") from None
        get_logger("run").info("experiment %s: base partition %s, %d variant(s): %s", params["experiment"],
                               base.partition, len(variants), ", ".join(v.name for v in variants))
        return [{"name": v.name, "overrides": v.overrides} for v in variants]

    return check()


def base_task(variants):
    @task(task_id="base", doc_md="Run, in the base partition, the stages no variant changes (a no-op where "
          "complete): the variants adopt these snapshots instead of recomputing them.")
    def base(variants: list[dict]) -> dict[str, str]:
        cfg = config_from_context()
        cfgs = [variant_config(cfg, Variant(**v)) for v in variants]
        return run_base(cfg, cfgs, ArtifactStore(cfg.artifact_root()), run_options())

    return base(variants)


@task(task_id="variant", map_index_template="{{ variant_name }}",
      doc_md="Every stage of one variant in its partition <base>--<variant>: a stage whose config and inputs "
             "equal the base's adopts the base's snapshot; a changed one computes in the variant's own folder.")
def variant_task(spec: dict) -> dict:
    get_current_context()["variant_name"] = spec["name"]
    cfg = config_from_context()
    return run_variant(cfg, get_current_context()["params"]["experiment"], Variant(**spec),
                       ArtifactStore(cfg.artifact_root()), run_options())


@task(task_id="report", doc_md="One comparison report across the variants: reports/experiments/<name>/report.md "
      "(overrides, shared and computed stages, evaluate's results with intervals) with a plot per metric.")
def report_task(records: list[dict]) -> str:
    cfg = config_from_context()
    store = ArtifactStore(cfg.artifact_root())
    rel = write_report(store, get_current_context()["params"]["experiment"], cfg.partition, list(records))
    return store.url(rel)
