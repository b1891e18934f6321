"""nyx_tasks.evaluation.report: a synthetic results table (stage1 and stage2 at dims 128..16 on
NyxQA dev/test and one text-only set) rendered to report.md + PNGs; the numbers, the delta signs,
the notes, the plot links and files, the summary lines, and row validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from nyx_tasks.evaluation.report import (
    DELTA_COLUMNS,
    PLOT_DPI,
    PLOT_SIZE,
    RESULT_COLUMNS,
    render_report,
    validate_rows,
)

DIMS = [128, 64, 32, 16]
MODELS = ["stage1", "stage2"]
NYX_METRICS = ["rag_accuracy", "recall@1", "recall@5", "recall@10", "mrr"]
TEXT_METRICS = ["f1", "em"]
NOTES = ["demo run: tiny model", "CIs: 95% percentile bootstrap"]


def make_rows(shift: float = 0.0) -> list[dict]:
    """stage2 beats stage1 on NyxQA and on hotpotqa F1 but loses on hotpotqa EM; values fall with
    the dim; retrieval rows carry a CI, MRR and the text set do not."""
    rows = []
    for dataset, split, metrics, n in [
        ("nyxqa", "dev", NYX_METRICS, 40),
        ("nyxqa", "test", NYX_METRICS, 120),
        ("hotpotqa", "dev", TEXT_METRICS, 50),
    ]:
        for model in MODELS:
            for i, dim in enumerate(DIMS):
                for j, metric in enumerate(metrics):
                    gain = 0.0512 if model == "stage2" else 0.0
                    if metric == "em":
                        gain = -gain
                    value = 0.2 + 0.1 * j + gain - 0.031 * i + 0.0017 * (split == "test") + shift
                    ci = metric.startswith("recall@") or metric == "rag_accuracy"
                    rows.append(
                        {
                            "model": model,
                            "dataset": dataset,
                            "split": split,
                            "dim": dim,
                            "metric": metric,
                            "value": value,
                            "n": n,
                            "ci_low": value - 0.04 if ci else None,
                            "ci_high": value + 0.05 if ci else None,
                        }
                    )
    return rows


def expected_cell(row: dict) -> str:
    ci = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None else ""
    return f"{row['value']:.3f}{ci} (n={row['n']})"


def find(rows, **key) -> dict:
    (row,) = [r for r in rows if all(r[k] == v for k, v in key.items())]
    return row


def section(markdown: str, dataset: str, split: str) -> str:
    """The text of the `## dataset / split` section."""
    parts = re.split(r"^## ", markdown, flags=re.M)
    (body,) = [p for p in parts if p.startswith(f"{dataset} / {split}\n")]
    return body


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    rows = make_rows()
    out_dir = tmp_path_factory.mktemp("report") / "nested" / "eval"  # created by render_report
    result = render_report(rows, str(out_dir), "Nyx demo evaluation", notes=NOTES)
    return rows, out_dir, result, Path(result["markdown"]).read_text()


def test_layout(rendered):
    _, out_dir, result, markdown = rendered
    assert Path(result["markdown"]) == out_dir / "report.md"
    names = [Path(p).name for p in result["plots"]]
    # one figure per metric, in the tables' metric order; the headline keeps accuracy_vs_dim
    per_metric = ["recall_at_1", "recall_at_5", "recall_at_10", "mrr"]
    assert names == [
        *(f"nyxqa-{split}-{what}_vs_dim.png" for split in ("dev", "test")
          for what in ("accuracy", *per_metric)),
        "hotpotqa-dev-accuracy_vs_dim.png",  # a text set: F1 is its headline, EM beside it
        "hotpotqa-dev-em_vs_dim.png",
    ]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*names, "report.md"])
    assert markdown.startswith("# Nyx demo evaluation\n")
    headings = re.findall(r"^## (.*)$", markdown, flags=re.M)
    # no headline sets named: the summary covers every dataset, no section is moved
    assert headings == ["Summary", "Notes", "nyxqa / dev", "nyxqa / test", "hotpotqa / dev"]
    summary = markdown.split("\n## Notes\n")[0]
    assert re.findall(r"^### (.*)$", summary, flags=re.M) == ["nyxqa / dev", "nyxqa / test", "hotpotqa / dev"]


def test_tables_hold_every_value_formatted(rendered):
    rows, _, _, markdown = rendered
    for dataset, split, metrics in [
        ("nyxqa", "dev", NYX_METRICS),
        ("nyxqa", "test", NYX_METRICS),
        ("hotpotqa", "dev", TEXT_METRICS),
    ]:
        body = section(markdown, dataset, split)
        assert "| metric | retriever | 128 | 64 | 32 | 16 |" in body
        for metric in metrics:
            for model in MODELS:
                cells = [
                    expected_cell(
                        find(rows, dataset=dataset, split=split, model=model, metric=metric, dim=d)
                    )
                    for d in DIMS
                ]
                assert f"| {metric} | {model} | " + " | ".join(cells) + " |" in body


def test_delta_table_signs(rendered):
    rows, _, _, markdown = rendered

    def delta_line(dataset, split, metric):
        values = []
        for d in DIMS:
            key = {"dataset": dataset, "split": split, "metric": metric, "dim": d}
            diff = (
                find(rows, model="stage2", **key)["value"]
                - find(rows, model="stage1", **key)["value"]
            )
            values.append(f"{diff:+.3f}")
        return f"| {metric} | stage2 | " + " | ".join(values) + " |"

    test = section(markdown, "nyxqa", "test")
    assert "**vs stage1** (retriever − stage1, the baseline" in test
    assert (
        delta_line("nyxqa", "test", "rag_accuracy")
        == "| rag_accuracy | stage2 | +0.051 | +0.051 | +0.051 | +0.051 |"
    )
    assert delta_line("nyxqa", "test", "rag_accuracy") in test
    hotpot = section(markdown, "hotpotqa", "dev")
    assert delta_line("hotpotqa", "dev", "f1") in hotpot
    assert delta_line("hotpotqa", "dev", "em") == "| em | stage2 | -0.051 | -0.051 | -0.051 | -0.051 |"
    assert delta_line("hotpotqa", "dev", "em") in hotpot


def test_notes_are_bullets(rendered):
    *_, markdown = rendered
    for note in NOTES:
        assert f"\n- {note}\n" in markdown


def test_every_plot_is_linked_and_a_valid_png(rendered):
    _, out_dir, result, markdown = rendered
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(links) == sorted(Path(p).name for p in result["plots"])
    width, height = (round(inches * PLOT_DPI) for inches in PLOT_SIZE)
    assert width >= 640 and height >= 400  # readable without zooming
    for path in result["plots"]:
        assert Path(path).parent == out_dir and Path(path).stat().st_size > 0
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (width, height)
    assert "![nyxqa / test: rag_accuracy vs dim](nyxqa-test-accuracy_vs_dim.png)" in markdown
    assert "![hotpotqa / dev: f1 vs dim](hotpotqa-dev-accuracy_vs_dim.png)" in markdown


def test_one_plot_per_metric_linked_from_its_section(rendered):
    rows, _, result, markdown = rendered
    plots = {Path(p).name: Path(p) for p in result["plots"]}
    for dataset, split, metrics in [
        ("nyxqa", "dev", NYX_METRICS),
        ("nyxqa", "test", NYX_METRICS),
        ("hotpotqa", "dev", TEXT_METRICS),
    ]:
        body = section(markdown, dataset, split)
        links = re.findall(rf"!\[{dataset} / {split}: (\S+) vs dim\]\(([^)]+)\)", body)
        assert [m for m, _ in links] == metrics  # every metric of the section, once, in table order
        assert all(name.startswith(f"{dataset}-{split}-") and name in plots for _, name in links)
    # each figure draws its own metric: no two plots of the report are the same image
    contents = [p.read_bytes() for p in plots.values()]
    assert len(set(contents)) == len(contents)


def test_clashing_metric_names_get_distinct_plots(tmp_path):
    rows = [good_row(metric="rag_accuracy"), good_row(metric="accuracy"), good_row(metric="recall@5")]
    result = render_report(rows, str(tmp_path), "clash")
    names = [Path(p).name for p in result["plots"]]
    assert len(names) == len(set(names)) == 3 and names[0] == "nyxqa-dev-accuracy_vs_dim.png"
    assert names[1] == "nyxqa-dev-recall_at_5_vs_dim.png"
    assert re.fullmatch(r"nyxqa-dev-accuracy_[0-9a-f]{6}_vs_dim\.png", names[2])
    markdown = Path(result["markdown"]).read_text()
    assert all(f"]({n})" in markdown for n in names)


def test_plots_follow_the_data_and_rerender_identically(rendered, tmp_path):
    rows, out_dir, result, markdown = rendered
    again = render_report(rows, str(tmp_path / "same"), "Nyx demo evaluation", notes=NOTES)
    render_report(make_rows(shift=0.1), str(tmp_path / "other"), "Nyx demo evaluation")
    assert Path(again["markdown"]).read_text() == markdown
    for path in result["plots"]:
        name = Path(path).name
        assert (tmp_path / "same" / name).read_bytes() == Path(path).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != Path(path).read_bytes()


def test_summary_lines(rendered):
    rows, _, result, _ = rendered
    lines = result["summary_lines"]
    for dataset, split in [("nyxqa", "dev"), ("nyxqa", "test"), ("hotpotqa", "dev")]:
        for model in MODELS:
            (line,) = [x for x in lines if x.startswith(f"{dataset}/{split} {model} ")]
            assert all(f"{d}=" in line for d in DIMS)
        assert any(x.startswith(f"{dataset}/{split} stage2-stage1: ") for x in lines)
    test2 = next(x for x in lines if x.startswith("nyxqa/test stage2 "))
    acc = [
        f"{d}={find(rows, dataset='nyxqa', split='test', model='stage2', metric='rag_accuracy', dim=d)['value']:.3f}"
        for d in DIMS
    ]
    assert test2.startswith(
        "nyxqa/test stage2 (n=120): rag_accuracy " + " ".join(acc) + " | recall@1 "
    )
    hotpot1 = next(x for x in lines if x.startswith("hotpotqa/dev stage1 "))
    assert "f1 128=" in hotpot1 and "| em 128=" in hotpot1 and "recall" not in hotpot1
    assert "em 128=-0.051" in next(x for x in lines if x.startswith("hotpotqa/dev stage2-stage1"))


def test_single_model_and_unsafe_names(tmp_path):
    rows = [
        r | {"dataset": "web/qa set"}
        for r in make_rows()
        if r["model"] == "stage2" and r["dataset"] == "nyxqa" and r["split"] == "dev"
    ]
    result = render_report(rows, str(tmp_path), "only stage 2")
    markdown = Path(result["markdown"]).read_text()
    assert "**vs " not in markdown and "## Notes" not in markdown
    assert not any("stage2-stage1" in x for x in result["summary_lines"])
    for path in result["plots"]:
        assert Path(path).parent == tmp_path and re.fullmatch(
            r"[A-Za-z0-9_.-]+\.png", Path(path).name
        )
    assert len(result["plots"]) == len(NYX_METRICS)  # one per metric


def test_render_rejects_an_empty_table(tmp_path):
    with pytest.raises(ValueError, match="no result rows"):
        render_report([], str(tmp_path), "empty")


def good_row(**change) -> dict:
    row = {
        "model": "stage1",
        "dataset": "nyxqa",
        "split": "dev",
        "dim": 16,
        "metric": "mrr",
        "value": 0.5,
        "n": 10,
        "ci_low": None,
        "ci_high": None,
    }
    return row | change


def test_validate_rows_accepts_good_rows():
    import numpy as np

    validate_rows(
        [good_row(), good_row(dim=np.int64(32), value=np.float32(0.25), ci_low=0.1, ci_high=0.4)]
    )
    nones = dict.fromkeys(DELTA_COLUMNS)
    validate_rows([good_row(**nones), good_row(model="stage2", baseline="stage1", delta=-0.1, delta_ci_low=None,
                                               delta_ci_high=None),
                   good_row(model="e5", baseline="stage1", delta=0.2, delta_ci_low=0.1, delta_ci_high=0.3)])
    assert set(good_row()) == set(RESULT_COLUMNS)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {k: v for k, v in good_row().items() if k != "value"},
            r"row 1: missing column\(s\) \['value'\]",
        ),
        (good_row(value="0.5"), "row 1: column 'value' must be a finite number, got '0.5'"),
        (good_row(value=float("nan")), "row 1: column 'value' must be a finite number"),
        (good_row(value=True), "row 1: column 'value'"),
        (good_row(dim="16"), "row 1: column 'dim' must be a positive int"),
        (good_row(dim=16.0), "row 1: column 'dim'"),
        (good_row(n=0), "row 1: column 'n' must be a positive int"),
        (good_row(model=""), "row 1: column 'model' must be a non-empty str"),
        (good_row(ci_low="x", ci_high=0.6), "row 1: column 'ci_low'"),
        (good_row(ci_low=0.4), "both be set or both None"),
        (good_row(ci_low=0.6, ci_high=0.4), "'ci_low' \\(0.6\\) is above"),
        (good_row() | {"extra": 1}, r"unknown column\(s\) \['extra'\]"),
        (good_row(baseline="stage2"), "'baseline' and 'delta' must both be set"),
        (good_row(delta=0.1), "'baseline' and 'delta' must both be set"),
        (good_row(baseline="", delta=0.1), "'baseline' must be a non-empty str"),
        (good_row(baseline="stage2", delta=float("inf")), "'delta' must be a finite number"),
        (good_row(baseline="stage2", delta=0.1, delta_ci_low=0.0), "'delta_ci_low' and 'delta_ci_high'"),
        (good_row(baseline="stage2", delta=0.1, delta_ci_low=0.2, delta_ci_high=0.0), "'delta_ci_low' \\(0.2\\)"),
        (good_row(delta_ci_low=0.0, delta_ci_high=0.2), "a delta interval without a 'delta'"),
        (good_row(), "row 1: duplicate of row 0"),
        ("not a row", "row 1: expected a dict"),
    ],
)
def test_validate_rows_names_the_bad_row_and_column(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_rows([good_row(), bad])


def test_one_dim_with_an_interval_that_misses_its_value(tmp_path):
    rows = [good_row(metric="recall@1", value=0.5, ci_low=0.6, ci_high=0.7)]
    (plot,) = render_report(rows, str(tmp_path), "one dim")["plots"]
    with Image.open(plot) as img:
        assert img.format == "PNG"


def test_rows_round_trip_through_parquet(rendered, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rendered[0]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "results.parquet")
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.column_names == list(RESULT_COLUMNS)
    assert str(table.schema.field("ci_low").type) == "double"
    back = table.to_pylist()
    validate_rows(back)
    assert back == rows


def cost_rows() -> list[dict]:
    """stage1 and an embedder `e5` (dims 64, 16 only: its wider dims were skipped) with cost rows;
    none and golden at every dim with one value; NyxQA dev."""
    rows = []
    for model, dims in (("stage1", DIMS), ("e5", [64, 16]), ("none", DIMS), ("golden", DIMS)):
        for d in dims:
            v = {"stage1": 0.4 + d / 1000, "e5": 0.3 + d / 1000, "none": 0.25, "golden": 0.9}[model]
            rows.append({"model": model, "dataset": "nyxqa", "split": "dev", "dim": d, "metric": "rag_accuracy",
                         "value": v, "n": 40, "ci_low": v - 0.1, "ci_high": v + 0.1})
            if model in ("stage1", "e5"):
                base = {"model": model, "dataset": "nyxqa", "split": "all", "dim": d, "ci_low": None,
                        "ci_high": None, "n": 30}
                rows += [base | {"metric": "index_bytes", "value": float(500 * d * 4)},
                         base | {"metric": "latency_ms_p50", "value": d / 100},
                         base | {"metric": "latency_ms_p95", "value": d / 50}]
    return rows


def test_cost_table_and_every_retriever_at_every_dim(tmp_path):
    rows = cost_rows()
    result = render_report(rows, str(tmp_path), "costs", notes=["e5: dims [128, 32] skipped"])
    markdown = Path(result["markdown"]).read_text()
    body = section(markdown, "nyxqa", "dev")
    # every value with its interval and n; a skipped dim is a dash
    assert "| rag_accuracy | e5 | – | 0.364 [0.264, 0.464] (n=40) | – | 0.316 [0.216, 0.416] (n=40) |" in body
    assert "| rag_accuracy | none | " + " | ".join(["0.250 [0.150, 0.350] (n=40)"] * 4) + " |" in body
    assert "## nyxqa / all" not in markdown  # cost rows are a table of their own, not a section
    assert "**Cost per dimension**" in body
    assert "| dim | retriever | rag_accuracy | index bytes | p50 ms | p95 ms |" in body
    assert "| 64 | stage1 | 0.464 [0.364, 0.564] (n=40) | 128.00 kB | 0.640 | 1.280 (n=30) |" in body
    assert "| 128 | e5 | – | – | – | – |" in body and "| 16 | golden | 0.900 [0.800, 1.000] (n=40) | – | – | – |" in body
    # deltas against the first retriever (stage1), one line per other retriever
    assert "**vs stage1**" in body and "| rag_accuracy | golden | +0.372 | +0.436 | +0.468 | +0.484 |" in body
    assert "- e5: dims [128, 32] skipped" in markdown
    cost_png = tmp_path / "nyxqa-dev-cost.png"
    assert str(cost_png) in result["plots"] and "(nyxqa-dev-cost.png)" in body
    with Image.open(cost_png) as im:
        assert im.format == "PNG"
    lines = result["summary_lines"]
    assert "nyxqa cost stage1 (index bytes/p50 latency): 128=256.00 kB/1.280ms 64=128.00 kB/0.640ms " \
           "32=64.00 kB/0.320ms 16=32.00 kB/0.160ms" in lines
    assert any(x.startswith("nyxqa/dev e5-stage1: rag_accuracy 64=-0.100 16=-0.100") for x in lines)
    # another baseline
    again = render_report(rows, str(tmp_path / "b"), "costs", baseline="none")
    assert "**vs none**" in Path(again["markdown"]).read_text()


def with_deltas(rows: list[dict]) -> list[dict]:
    """make_rows() with stage2's paired delta against stage1 as the evaluate stage writes it: the
    difference of the values, an interval skewed to tell it from anything the report computes."""
    out = []
    for r in rows:
        if r["model"] != "stage2":
            out.append(r | dict.fromkeys(DELTA_COLUMNS))
            continue
        base = find(rows, model="stage1", dataset=r["dataset"], split=r["split"], dim=r["dim"], metric=r["metric"])
        d = r["value"] - base["value"]
        out.append(r | {"baseline": "stage1", "delta": d, "delta_ci_low": d - 0.0123, "delta_ci_high": d + 0.0456})
    return out


def signed(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"


def test_summary_comes_first_with_the_paired_deltas_the_rows_carry(tmp_path):
    rows = with_deltas(make_rows())
    notes = ["hotpotqa: noise"]
    result = render_report(rows, str(tmp_path), "headline", notes=notes, headline=["nyxqa"])
    markdown = Path(result["markdown"]).read_text()
    headings = re.findall(r"^##+ (.*)$", markdown, flags=re.M)
    # the summary of the headline sets first, then the notes, their sections, and the rest under a heading
    assert headings == ["Summary", "nyxqa / dev", "nyxqa / test", "Notes", "nyxqa / dev", "nyxqa / test",
                        "Other results (see notes)", "hotpotqa / dev"]
    summary = markdown.split("\n## Notes\n")[0]
    test = summary.split("### nyxqa / test\n")[1]
    key = {"dataset": "nyxqa", "split": "test", "dim": 128}

    def interval(r):
        return f"{r['value']:.3f}" + (f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None else "")

    def paired(r):
        return f"{signed(r['delta'])} [{signed(r['delta_ci_low'])}, {signed(r['delta_ci_high'])}]"

    metrics = ["recall@1", "recall@10", "mrr"]  # the smallest and the largest k, then mrr; no rag_accuracy
    assert "| retriever | dim | n | recall@1 | recall@10 | mrr |" in test
    for model in MODELS:
        cells = [interval(find(rows, model=model, metric=m, **key)) for m in metrics]
        assert f"| {model} | 128 | 120 | " + " | ".join(cells) + " |" in test
    deltas = [paired(find(rows, model="stage2", metric=m, **key)) for m in metrics]
    assert "| stage2 − stage1 | 128 |  | " + " | ".join(deltas) + " |" in test
    assert deltas[0] == "+0.051 [+0.039, +0.097]"  # the interval is the row's, not recomputed
    # the Matryoshka view: mrr at every dim, each retriever and its paired delta
    dims = test.split("mrr at every dim (Matryoshka")[1]
    assert "| retriever | 128 | 64 | 32 | 16 |" in dims
    mrr = [find(rows, model="stage2", metric="mrr", dataset="nyxqa", split="test", dim=d) for d in DIMS]
    assert "| stage2 | " + " | ".join(map(interval, mrr)) + " |" in dims
    assert "| stage2 − stage1 | " + " | ".join(map(paired, mrr)) + " |" in dims
    assert "hotpotqa" not in summary.split("## Summary")[1]
    again = render_report(rows, str(tmp_path / "again"), "headline", notes=notes, headline=["nyxqa"])
    assert Path(again["markdown"]).read_text() == markdown  # byte-identical on a rerun


def test_summary_without_carried_deltas_shows_the_plain_difference(tmp_path):
    # rows without delta columns (or with deltas against another baseline): the difference of the
    # values, without an interval
    rows = [r | {"baseline": "stage2", "delta": 0.0, "delta_ci_low": None, "delta_ci_high": None}
            if r["model"] == "stage1" else r for r in make_rows()]
    result = render_report(rows, str(tmp_path), "plain", headline=["hotpotqa", "nowhere"])
    markdown = Path(result["markdown"]).read_text()
    assert re.findall(r"^##+ (.*)$", markdown, flags=re.M) == [
        "Summary", "hotpotqa / dev", "hotpotqa / dev", "Other results", "nyxqa / dev", "nyxqa / test"]
    summary = markdown.split("\n## hotpotqa / dev\n")[0]
    # no retrieval metric: the dataset's headline answer metric, at the largest dim and at every dim
    assert "| retriever | dim | n | f1 |" in summary and "\nf1 at every dim (Matryoshka" in summary
    assert "| stage2 − stage1 | 128 |  | +0.051 |" in summary
    assert "| stage2 − stage1 | " + " | ".join(["+0.051"] * 4) + " |" in summary
    # named headline sets that are not in the table: every dataset is in the summary
    other = render_report(make_rows(), str(tmp_path / "none"), "x", headline=["nowhere"])
    text = Path(other["markdown"]).read_text()
    assert "Other results" not in text and text.count("### ") == 3
