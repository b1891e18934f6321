"""Experiments (nyx_tasks/experiments.py): a grid of named variants, validated whole before anything
runs; variants that differ only in a late stage adopt the base partition's earlier snapshots by
reference (each shared stage processed once), compute the changed stage in their own partition,
never touch the base's folders, re-run as no-ops; one comparison report across them.

The pipeline here is three small stages on the runner (real plan/shard/commit, real manifests),
keyed on real config sections, so a test takes a second; the e2e test runs the real DAG."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from nyx_tasks import experiments as ex
from nyx_tasks.runner import Stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

RUNS: Counter[str] = Counter()  # shards processed per (stage, partition)


def _row(metric: str, value: float, **kw) -> dict:
    return {"model": "stage1", "dataset": "nyxqa", "split": "test", "dim": 8, "metric": metric, "value": value,
            "n": 10, "ci_low": None, "ci_high": None, "protocol": "strict", **kw}


class Early(Stage):
    name, config_key, outputs = "early", "ingest", {"part": "eval_results"}

    def plan_shards(self, ctx):
        return [{"shard": 0, "name": "all"}]

    def process(self, ctx, shard, out):
        RUNS[(self.name, ctx.partition)] += 1
        out.rows_in = 1
        out.write([_row("every_nth", float(ctx.cfg.ingest.every_nth))])


class Middle(Early):
    name, config_key, inputs = "middle", "chunk", ("early",)

    def process(self, ctx, shard, out):
        RUNS[(self.name, ctx.partition)] += 1
        rows = read_stage_table(ctx.store, ctx.partition, "early").to_pylist()  # resolves an adopted snapshot
        out.rows_in = len(rows)
        out.write([_row("tokens", r["value"] * ctx.cfg.chunk.chunk_tokens) for r in rows])


class Late(Early):
    """Reads middle; its value and interval follow evaluate.bootstrap, the knob the variants turn."""
    name, config_key, inputs = "late", "evaluate", ("middle",)

    def process(self, ctx, shard, out):
        RUNS[(self.name, ctx.partition)] += 1
        rows = read_stage_table(ctx.store, ctx.partition, "middle").to_pylist()
        out.rows_in = len(rows)
        b = ctx.cfg.evaluate.bootstrap
        out.write([_row("recall@1", r["value"] / 1000 + b / 1e4, ci_low=b / 1e4, ci_high=b / 1e4 + 0.1)
                   for r in rows] + [_row("latency_ms_p50", 3.0 + b / 100, model="bm25")])


STAGES = [Early(), Middle(), Late()]


@pytest.fixture
def base(make_cfg):
    RUNS.clear()
    return make_cfg("partition=exp")


def _files(root, partition: str) -> dict[str, float]:
    folder = root / "partitions" / partition
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_variants_share_unchanged_stages_and_write_changed_ones_apart(base, tmp_path):
    store = ArtifactStore(base.artifact_root())
    variants = ex.expand({"evaluate.bootstrap": [100, 200]})
    assert [v.name for v in variants] == ["bootstrap=100", "bootstrap=200"]
    cfgs = ex.check_variants(base, variants, STAGES)
    assert [s.name for s in ex.shared_stages(base, cfgs, STAGES)] == ["early", "middle"]
    ex.run_base(base, cfgs, store, stages=STAGES)
    assert not store.exists("partitions/exp/late")  # no variant needs the base's own late stage
    before = _files(tmp_path / "artifacts", "exp")

    records = [ex.run_variant(base, "bs", v, store, stages=STAGES) for v in variants]
    # the shared stages ran once, in the base; each variant computed late in its own partition
    assert RUNS == {("early", "exp"): 1, ("middle", "exp"): 1,
                    ("late", "exp--bootstrap=100"): 1, ("late", "exp--bootstrap=200"): 1}, RUNS
    assert [r["stages"] for r in records] == [{"early": "shared", "middle": "shared", "late": "computed"}] * 2
    assert _files(tmp_path / "artifacts", "exp") == before  # nothing written under the base
    base_mid = store.read_json("partitions/exp/middle/_MANIFEST.json")
    lates = []
    for r in records:
        mid = store.read_json(f"partitions/{r['partition']}/middle/_MANIFEST.json")
        assert mid["outputs"] == base_mid["outputs"] and mid["output_hash"] == base_mid["output_hash"]
        assert mid["adopted_from"]["partition"] == "exp" and mid["partition"] == r["partition"]
        late = store.read_json(f"partitions/{r['partition']}/late/_MANIFEST.json")
        assert "adopted_from" not in late and late["inputs"] == {"middle": base_mid["output_hash"]}
        assert all(f"partitions/{r['partition']}/late/attempts/" in e["path"] for e in late["outputs"]["part"])
        lates.append(late)
    assert lates[0]["output_hash"] != lates[1]["output_hash"]
    values = [read_stage_table(store, r["partition"], "late").column("value").to_pylist() for r in records]
    assert values[0] != values[1]

    # a re-run is a no-op: nothing processed, nothing rewritten
    after = {r["partition"]: _files(tmp_path / "artifacts", r["partition"]) for r in records}
    again = [ex.run_variant(base, "bs", v, store, stages=STAGES) for v in variants]
    assert sum(RUNS.values()) == 4
    assert [r["stages"] for r in again] == [{"early": "shared", "middle": "shared", "late": "skipped"}] * 2
    assert {r["partition"]: _files(tmp_path / "artifacts", r["partition"]) for r in records} == after


def test_a_variant_changing_an_early_stage_computes_from_there_on(base):
    store = ArtifactStore(base.artifact_root())
    ex.run_base(base, [base], store, stages=STAGES)  # the whole base (no variant yet)
    variant = ex.Variant("tokens", {"chunk.chunk_tokens": 50})
    rec = ex.run_variant(base, "e", variant, store, stages=STAGES)
    assert rec["stages"] == {"early": "shared", "middle": "computed", "late": "computed"}
    assert RUNS[("early", "exp")] == 1 and RUNS[("early", "exp--tokens")] == 0


def test_an_adopted_snapshot_whose_base_files_went_is_recomputed(base):
    store = ArtifactStore(base.artifact_root())
    ex.run_base(base, [base], store, stages=STAGES)
    v = ex.Variant("b", {"evaluate.bootstrap": 7})
    ex.run_variant(base, "e", v, store, stages=STAGES)
    gone = store.read_json("partitions/exp/early/_MANIFEST.json")["outputs"]["part"][0]["path"]
    store.remove(gone)  # the base recomputed with another config and removed its old attempt
    store.remove("partitions/exp/early/_MANIFEST.json")
    rec = ex.run_variant(base, "e", v, store, stages=STAGES)
    assert rec["stages"]["early"] == "computed" and RUNS[("early", "exp--b")] == 1
    assert store.read_json("partitions/exp--b/early/_MANIFEST.json").get("adopted_from") is None


def test_force_never_adopts(base):
    store = ArtifactStore(base.artifact_root())
    ex.run_base(base, [base], store, stages=STAGES)
    forced = base.model_copy(update={"force": True})
    rec = ex.run_variant(forced, "e", ex.Variant("same", {}), store, stages=STAGES)
    assert set(rec["stages"].values()) == {"computed"} and RUNS[("early", "exp")] == 1


def test_grid_is_expanded_named_and_validated_before_anything_runs(base):
    vs = ex.expand({"feedback.threshold": [0.0, 0.5], "evaluate.bootstrap": [0, 1000]},
                   {"no-ci": {"evaluate.bootstrap": 0}})
    assert [v.name for v in vs] == ["threshold=0.0_bootstrap=0", "threshold=0.0_bootstrap=1000",
                                    "threshold=0.5_bootstrap=0", "threshold=0.5_bootstrap=1000", "no-ci"]
    assert ex.expand("evaluate.bootstrap: [1, 2]")[1].overrides == {"evaluate.bootstrap": 2}  # YAML text too
    assert ex.expand({"a.x": ["p q/r"]})[0].name == "x=p-q-r"  # safe as a path part
    assert ex.expand({"a.k": [1], "b.k": [2]})[0].name == "a.k=1_b.k=2"  # same leaf: the whole key
    cases = [
        (({"feedback.threshold": [0.5, 1.5]},), "variant 'threshold=1.5': feedback.threshold: Input should be less than 1"),
        (({"feedback.thresold": [0.5]},), "variant 'thresold=0.5': feedback.thresold: Extra inputs are not permitted"),
        (({"partition": ["x"]},), "grid: 'partition' cannot vary"),
        (({"evaluate.bootstrap": [1]}, {"bootstrap=1": {}}), "variant 'bootstrap=1' is named twice"),
        ((None, {"../up": {}}), "variant '../up': not a valid name"),
        (({},), "the experiment has no variants"),
        (({"evaluate.bootstrap": ["x" * 70]},), "is not a valid name (at most 64 characters"),
    ]
    for args, message in cases:
        with pytest.raises(ex.GridError) as e:
            ex.check_variants(base, ex.expand(*args), STAGES)
        assert message in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    assert not ArtifactStore(base.artifact_root()).exists("partitions")


def test_report_compares_variants_with_intervals_over_whatever_rows_exist(base):
    store = ArtifactStore(base.artifact_root())
    variants = ex.expand({"evaluate.bootstrap": [100, 300]})
    cfgs = ex.check_variants(base, variants, STAGES)
    ex.run_base(base, cfgs, store, stages=STAGES)
    records = [ex.run_variant(base, "cmp", v, store, stages=STAGES) for v in variants]
    rel = ex.write_report(store, "cmp", "exp", records, stage="late")
    assert rel == "reports/experiments/cmp/report.md"
    text = store.fs.cat(store.path(rel)).decode()
    assert "| bootstrap=100 | `exp--bootstrap=100` | `evaluate.bootstrap: 100` | late | early, middle |" in text
    # one row per (model, dataset, split, dim, metric, protocol), a column per variant, with its interval
    r100, r300 = (read_stage_table(store, r["partition"], "late").to_pylist() for r in records)
    recall = [r for r in r100 if r["metric"] == "recall@1"][0]
    assert f"{recall['value']:.4g} [{recall['ci_low']:.4g}, {recall['ci_high']:.4g}] (n=10)" in text
    assert "| bm25 | nyxqa | test | 8 | latency_ms_p50 | strict | 4 (n=10) | 6 (n=10) | +2 |" in text  # no CI: the value
    # each variant but the first minus the first: an unpaired difference of the aggregated means, said so
    assert "| model | dataset | split | dim | metric | protocol | bootstrap=100 | bootstrap=300 | " \
           "bootstrap=300 − bootstrap=100 |" in text and "an unpaired difference of means" in text
    recall300 = [r for r in r300 if r["metric"] == "recall@1"][0]
    assert f"| {recall300['value'] - recall['value']:+.4g} |" in text
    assert "delta" not in text.split("## Results")[1].split("\n| model |")[1].split("\n")[0]  # not a row key
    assert "![recall@1](recall_1.png)" in text and "![latency_ms_p50](latency_ms_p50.png)" in text
    png = store.fs.cat(store.path("reports/experiments/cmp/recall_1.png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    csv_rows = store.fs.cat(store.path("reports/experiments/cmp/results.csv")).decode().splitlines()
    assert len(csv_rows) == 1 + len(r100) + len(r300) and csv_rows[0].startswith("variant,model,")
    assert csv_rows[0].endswith(",value,n,ci_low,ci_high,baseline,delta,delta_ci_low,delta_ci_high")
    listed = ex.experiments(store)
    assert listed == [{"name": "cmp", "base": "exp", "variants": ["bootstrap=100", "bootstrap=300"],
                       "report": "reports/experiments/cmp/report.md"}]
    assert json.loads(store.fs.cat(store.path("reports/experiments/cmp/experiment.json")))["rows"] == 4
