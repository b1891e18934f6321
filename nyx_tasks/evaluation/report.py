"""The evaluation results table and its report (arXiv 2510.17354, "Experiments": retrieval and
RAG accuracy at every Matryoshka dimension, Nyx stage 1 vs stage 2, text-only QA by F1 / EM).

The table is long: one dict row per (model, dataset, split, dim, metric) with the columns of
`RESULT_COLUMNS` and optionally `protocol` (the evaluation protocol that produced it, one per
table: the report states it); the stage writes it to Parquet. Columns, for readers of that Parquet:

    model     the retriever's name (`evaluate.retrievers[].name`: stage1, stage2, mme5, e5, none,
              golden, ...; the column keeps its historical name)
    dataset   nyxqa or a text set's name;  split: dev / test (NyxQA), eval (text sets), all (NyxQA
              cost rows: one corpus serves every split)
    dim       the Matryoshka dim (none / golden rows repeat the same value at every dim)
    metric    accuracy: rag_accuracy, f1, em, recall@k, mrr; cost (`COST_METRICS`): index_bytes
              (the float32 vectors searched at that dim: n_docs x dim x 4), latency_ms_p50 /
              latency_ms_p95 (single-query search time, median / 95th percentile, ms)
    value     the mean over the n queries (accuracy) or the cost figure
    n         queries scored (accuracy), queries timed (cost rows; index_bytes without timing: documents)
    ci_low, ci_high   the 95% percentile bootstrap interval of the mean; None for cost rows
    protocol  evaluate.protocol (strict / paper), the same in every row
    baseline  the retriever `delta` is against (evaluate.baseline); None where there is no delta
    delta     value minus the baseline's value on the same queries (same dataset, split, dim, metric
              and n): the mean of the per-query differences; None for the baseline's own rows, cost
              rows, and rows whose baseline row is missing or was scored on other queries
    delta_ci_low, delta_ci_high   its 95% paired bootstrap interval (one resample of the queries
              for both retrievers, `metrics.paired_bootstrap_ci`); None without a bootstrap

`render_report` turns it into `report.md`: first a summary of the headline datasets (`headline`;
per dataset/split the retrieval metrics at the largest dim and the headline metric at every dim,
each retriever with its interval and each retriever minus the baseline with its paired interval),
then one section per dataset/split (the headline datasets' first, the others after a heading that
points at the notes): a metric x retriever
by dim table, each retriever minus the baseline retriever (`baseline`, default the first), a
cost table (dim x retriever: headline accuracy, index bytes, p50 / p95 latency) when the table
has cost rows for that dataset, plot links) plus one PNG plot per metric against the dimension
(a line per retriever, its interval as a band) and one of accuracy against latency (a point per
dim), and returns compact summary lines for the task log.

Ordering, so that the caller decides it and reruns are byte-identical: datasets, splits and models
in order of first appearance in `rows`; dims largest first in tables; metrics as rag_accuracy,
f1, em, recall@k by k, mrr, then any other in order of appearance.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

RESULT_COLUMNS = ("model", "dataset", "split", "dim", "metric", "value", "n", "ci_low", "ci_high")
# the paired difference against the baseline retriever on the same queries (None where there is none)
DELTA_COLUMNS = ("baseline", "delta", "delta_ci_low", "delta_ci_high")
# the evaluation protocol (evaluate.protocol, the same in every row), then the paired difference
OPTIONAL_COLUMNS = ("protocol", *DELTA_COLUMNS)
HEADLINE_METRICS = ("rag_accuracy", "f1", "em")  # the first one present is a section's headline
COST_METRICS = ("index_bytes", "latency_ms_p50", "latency_ms_p95")  # per (model, dataset, dim); no interval
PLOT_SIZE, PLOT_DPI = (6.4, 4.0), 120  # inches, dots per inch: 768 x 480 px, one figure per metric
_TEXT_COLUMNS = ("model", "dataset", "split", "metric")
_KEY_COLUMNS = ("model", "dataset", "split", "dim", "metric")  # one row per key
_RECALL = re.compile(r"recall@(\d+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


# ----------------------------------------------------------------------------- validation


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_pair(i: int, row: Mapping, lo_col: str, hi_col: str) -> None:
    """An optional interval: both set or both None, finite, not reversed."""
    lo, hi = row.get(lo_col), row.get(hi_col)
    for col, v in ((lo_col, lo), (hi_col, hi)):
        if v is not None and not _is_real(v):
            raise ValueError(f"row {i}: column {col!r} must be a finite number or None, got {v!r}")
    if (lo is None) != (hi is None):
        raise ValueError(f"row {i}: columns {lo_col!r} and {hi_col!r} must both be set or both None")
    if lo is not None and lo > hi:
        raise ValueError(f"row {i}: column {lo_col!r} ({lo}) is above {hi_col!r} ({hi})")


def _check_delta(i: int, row: Mapping) -> None:
    """The optional paired difference: `baseline` names the retriever exactly when `delta` is set,
    and its interval only with it."""
    base, delta = row.get("baseline"), row.get("delta")
    if base is not None and (not isinstance(base, str) or not base):
        raise ValueError(f"row {i}: column 'baseline' must be a non-empty str or None, got {base!r}")
    if delta is not None and not _is_real(delta):
        raise ValueError(f"row {i}: column 'delta' must be a finite number or None, got {delta!r}")
    if (base is None) != (delta is None):
        raise ValueError(f"row {i}: columns 'baseline' and 'delta' must both be set or both None")
    _check_pair(i, row, "delta_ci_low", "delta_ci_high")
    if delta is None and row.get("delta_ci_low") is not None:
        raise ValueError(f"row {i}: a delta interval without a 'delta'")


def _check_row(i: int, row) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"row {i}: expected a dict, got {type(row).__name__}")
    missing = [c for c in RESULT_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row {i}: missing column(s) {missing}")
    unknown = sorted(str(c) for c in row if c not in RESULT_COLUMNS + OPTIONAL_COLUMNS)
    if unknown:
        raise ValueError(f"row {i}: unknown column(s) {unknown}; expected {list(RESULT_COLUMNS)}")
    for col in _TEXT_COLUMNS + (("protocol",) if "protocol" in row else ()):
        if not isinstance(row[col], str) or not row[col]:
            raise ValueError(f"row {i}: column {col!r} must be a non-empty str, got {row[col]!r}")
    for col in ("dim", "n"):
        if not _is_int(row[col]) or row[col] < 1:
            raise ValueError(f"row {i}: column {col!r} must be a positive int, got {row[col]!r}")
    if not _is_real(row["value"]):
        raise ValueError(f"row {i}: column 'value' must be a finite number, got {row['value']!r}")
    _check_pair(i, row, "ci_low", "ci_high")
    _check_delta(i, row)


def validate_rows(rows: Sequence[Mapping]) -> None:
    """Check every result row against `RESULT_COLUMNS`; raise ValueError naming the row index and
    column: missing or unknown columns, empty text columns, a non-int or non-positive `dim` or
    `n`, a non-numeric or non-finite `value`, a confidence interval that is half set, non-numeric
    or reversed, a repeated (model, dataset, split, dim, metric) key, a `protocol` (optional)
    that is not a non-empty str or not the same in every row, and optional `DELTA_COLUMNS` that
    are half set (`baseline` without `delta`, an interval without a delta) or ill-typed."""
    seen: dict[tuple, int] = {}
    protocols: set = set()
    for i, row in enumerate(rows):
        _check_row(i, row)
        key = tuple(row[c] for c in _KEY_COLUMNS)
        if key in seen:
            raise ValueError(
                f"row {i}: duplicate of row {seen[key]} for {dict(zip(_KEY_COLUMNS, key, strict=True))}"
            )
        seen[key] = i
        protocols.add(row.get("protocol"))
        if len(protocols) > 1:
            raise ValueError(f"row {i}: protocol {row.get('protocol')!r} differs from the other rows' "
                             f"({sorted(map(str, protocols - {row.get('protocol')}))}); one protocol per table")


# ----------------------------------------------------------------------------- table shaping


def _ordered(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _sort_metrics(metrics: list[str]) -> list[str]:
    def key(item):
        pos, m = item
        if m in HEADLINE_METRICS:
            return (0, HEADLINE_METRICS.index(m))
        if match := _RECALL.fullmatch(m):
            return (1, int(match.group(1)))
        return (2, 0) if m == "mrr" else (3, pos)

    return [m for _, m in sorted(enumerate(metrics), key=key)]


def _group(
    rows: Sequence[Mapping],
) -> dict[tuple[str, str], dict[str, dict[str, dict[int, Mapping]]]]:
    """(dataset, split) -> metric -> model -> dim -> row, in first-appearance order."""
    groups: dict = {}
    for row in rows:
        by_metric = groups.setdefault((row["dataset"], row["split"]), {})
        by_metric.setdefault(row["metric"], {}).setdefault(row["model"], {})[int(row["dim"])] = row
    return {
        g: {m: by_metric[m] for m in _sort_metrics(list(by_metric))}
        for g, by_metric in groups.items()
    }


def _headline(by_metric: Mapping) -> str | None:
    return next((m for m in HEADLINE_METRICS if m in by_metric), None)


def _dims(by_metric: Mapping) -> list[int]:
    return sorted(
        {d for by_model in by_metric.values() for cells in by_model.values() for d in cells},
        reverse=True,
    )


def _slug(name: str) -> str:
    """A file-name-safe form of `name`; '-' never occurs in it (it separates the parts of a plot
    name), and a short hash keeps two names that sanitise alike apart."""
    safe = _UNSAFE.sub("_", name).strip(".") or "_"
    return safe if safe == name else f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


# ----------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _cell(row: Mapping | None) -> str:
    if row is None:
        return "–"
    ci = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None else ""
    return f"{row['value']:.3f}{ci} (n={row['n']})"


def _signed(delta: float) -> str:
    delta = round(delta, 3) + 0.0  # + 0.0 turns -0.0 into 0.0, so no "-0.000"
    return f"{delta:+.3f}"


def _deltas(by_metric: Mapping, dims: list[int], baseline: str) -> dict[tuple[str, str], dict[int, float]]:
    """(metric, retriever) -> dim -> retriever - baseline, where both have that cell."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for metric, by_model in by_metric.items():
        base = by_model.get(baseline)
        for model, cand in by_model.items():
            if model == baseline or not base:
                continue
            common = {
                d: cand[d]["value"] - base[d]["value"] for d in dims if d in base and d in cand
            }
            if common:
                out[(metric, model)] = common
    return out


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def _bytes(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:.0f} B"


def _cost_table(by_metric: Mapping, cost: Mapping, dims: list[int]) -> list[str]:
    """dim x retriever: the headline accuracy cell, index bytes, p50 / p95 latency (n timed)."""
    headline = _headline(by_metric) or next(iter(by_metric))
    models = _ordered([*by_metric[headline], *cost])
    body = []
    for d in dims:
        for model in models:
            c = cost.get(model, {})
            p50, p95, size = (c.get(m, {}).get(d) for m in ("latency_ms_p50", "latency_ms_p95", "index_bytes"))
            body.append([str(d), _md(model), _cell(by_metric[headline].get(model, {}).get(d)),
                         _bytes(size["value"]) if size else "–",
                         f"{p50['value']:.3f}" if p50 else "–",
                         f"{p95['value']:.3f} (n={p95['n']})" if p95 else "–"])
    return _table(["dim", "retriever", headline, "index bytes", "p50 ms", "p95 ms"], body)


def _section(
    dataset: str, split: str, by_metric: Mapping, dims: list[int], plots: list[tuple[str, str]],
    baseline: str, cost: Mapping | None = None,
) -> list[str]:
    lines = [f"## {_md(dataset)} / {_md(split)}", ""]
    body = [
        [_md(metric), _md(model), *(_cell(cells.get(d)) for d in dims)]
        for metric, by_model in by_metric.items()
        for model, cells in by_model.items()
    ]
    lines += _table(["metric", "retriever", *map(str, dims)], body) + [""]
    deltas = _deltas(by_metric, dims, baseline)
    if deltas:
        lines += [
            f"**vs {_md(baseline)}** (retriever − {_md(baseline)}, the baseline; positive: better than it)",
            "",
        ]
        body = [
            [_md(m), _md(model), *(_signed(per_dim[d]) if d in per_dim else "–" for d in dims)]
            for (m, model), per_dim in deltas.items()
        ]
        lines += _table(["metric", "retriever", *map(str, dims)], body) + [""]
    if cost:
        lines += ["**Cost per dimension** (index: the float32 vectors searched, n_docs x dim x 4 bytes; "
                  "latency: one query per search call to the configured backend, its per-call setup included, "
                  "ms; compare within this report only)", ""]
        lines += _cost_table(by_metric, cost, dims) + [""]
    for name, what in plots:
        lines += [f"![{_md(dataset)} / {_md(split)}: {what}]({name})", ""]
    return lines


# ----------------------------------------------------------------------------- the summary section


def _in_headline(dataset: str, headline: Sequence[str]) -> bool:
    """A benchmark's subsets (`mmeb-eval/<subset>`) go with the benchmark's name."""
    return dataset in headline or dataset.split("/", 1)[0] in headline


def _summary_metrics(by_metric: Mapping) -> list[str]:
    """The summary table's metrics: the smallest and the largest recall@k, then mrr, those present;
    a dataset without any shows its headline answer metric (else its first metric)."""
    recalls = [m for m in by_metric if _RECALL.fullmatch(m)]  # by k: `_group` sorts the metrics
    shown = _ordered([*recalls[:1], *recalls[-1:], *(["mrr"] if "mrr" in by_metric else [])])
    return shown or [_headline(by_metric) or next(iter(by_metric))]


def _interval(row: Mapping | None) -> str:
    if row is None:
        return "–"
    ci = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None else ""
    return f"{row['value']:.3f}{ci}"


def _paired(row: Mapping | None, base: Mapping | None, baseline: str) -> str:
    """row minus the baseline's row: the paired delta the row carries against `baseline`, with its
    interval; else (rows without one) the difference of the two values over the same number of
    queries, without an interval; – when there is neither."""
    if row is not None and row.get("baseline") == baseline and row.get("delta") is not None:
        lo, hi = row.get("delta_ci_low"), row.get("delta_ci_high")
        return _signed(row["delta"]) + (f" [{_signed(lo)}, {_signed(hi)}]" if lo is not None else "")
    if row is None or base is None or row["n"] != base["n"]:
        return "–"
    return _signed(row["value"] - base["value"])


def _summary_table(by_metric: Mapping, baseline: str) -> list[str]:
    """Retrievers x the summary metrics, each retriever at its largest dim (`value [ci]`), then a
    row per retriever minus the baseline at that dim (the paired delta [its interval])."""
    metrics = _summary_metrics(by_metric)
    models = _ordered(model for m in metrics for model in by_metric[m])
    top = {model: max(d for m in metrics for d in by_metric[m].get(model, {})) for model in models}
    cells = {model: [by_metric[m].get(model, {}).get(top[model]) for m in metrics] for model in models}
    body = [[_md(model), str(top[model]), str(max(c["n"] for c in cells[model] if c)),
             *map(_interval, cells[model])] for model in models]
    for model in models:
        base = [by_metric[m].get(baseline, {}).get(top[model]) for m in metrics]
        deltas = [_paired(c, b, baseline) for c, b in zip(cells[model], base, strict=True)]
        if model != baseline and any(d != "–" for d in deltas):
            body.append([f"{_md(model)} − {_md(baseline)}", str(top[model]), "", *deltas])
    return _table(["retriever", "dim", "n", *map(_md, metrics)], body)


def _dim_table(by_metric: Mapping, baseline: str) -> tuple[str, list[str]]:
    """(the metric, its table): mrr (else the first summary metric) at every dim, a row per
    retriever (`value [ci]`), then a row per retriever minus the baseline (paired delta [interval])."""
    metric = "mrr" if "mrr" in by_metric else _summary_metrics(by_metric)[0]
    by_model = by_metric[metric]
    dims = sorted({d for cells in by_model.values() for d in cells}, reverse=True)
    base = by_model.get(baseline, {})
    body = [[_md(model), *(_interval(cells.get(d)) for d in dims)] for model, cells in by_model.items()]
    for model, cells in by_model.items():
        deltas = [_paired(cells.get(d), base.get(d), baseline) for d in dims]
        if model != baseline and any(d != "–" for d in deltas):
            body.append([f"{_md(model)} − {_md(baseline)}", *deltas])
    return metric, _table(["retriever", *map(str, dims)], body)


def _summary_section(groups: Mapping, chosen: list[tuple[str, str]], baseline: str, others: bool) -> list[str]:
    """## Summary: per chosen dataset/split its summary table and its Matryoshka view."""
    named = ", ".join(_ordered(_md(d) for d, _ in chosen))
    rest = " The other datasets' sections follow under *Other results*." if others else ""
    lines = ["## Summary", "",
             f"Datasets: {named}.{rest} Cells: `value [95% bootstrap interval]` at each retriever's largest dim "
             f"(`dim`) over `n` queries; rows `retriever − {_md(baseline)}`: its difference from the baseline on "
             "the same queries with the 95% paired bootstrap interval (one resample of the queries for both; "
             f"positive: better than {_md(baseline)}); a difference without an interval: no bootstrap, or the "
             "rows carry no paired delta.", ""]
    for dataset, split in chosen:
        by_metric = groups[(dataset, split)]
        metric, table = _dim_table(by_metric, baseline)
        lines += [f"### {_md(dataset)} / {_md(split)}", "", *_summary_table(by_metric, baseline), "",
                  f"{_md(metric)} at every dim (Matryoshka: the columns are embedding dims):", "", *table, ""]
    return lines


def _others_heading(notes: Sequence[str]) -> list[str]:
    see = " (see notes)" if notes else ""
    return [f"## Other results{see}", "",
            "Datasets outside the summary's" + (": the notes say what their numbers are worth." if notes else "."), ""]


# ----------------------------------------------------------------------------- plots


def _new_figure():
    """One axes on a figure drawn by Agg, without pyplot: no global backend switch and no figure
    registry, so rendering is safe inside a worker that also does other plotting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _draw(ax, by_model: Mapping, colours: Mapping[str, str], dims: list[int], ylabel: str) -> None:
    """One line per model against a log-2 dimension axis, with the CI as a band where present."""
    from matplotlib.ticker import NullLocator

    for model, cells in by_model.items():
        xs = sorted(cells)
        ax.plot(xs, [cells[d]["value"] for d in xs], marker="o", color=colours[model], label=model)
        if any(cells[d]["ci_low"] is not None for d in xs):
            nan = float("nan")
            lo = [nan if cells[d]["ci_low"] is None else cells[d]["ci_low"] for d in xs]
            hi = [nan if cells[d]["ci_high"] is None else cells[d]["ci_high"] for d in xs]
            if len(xs) > 1:
                ax.fill_between(xs, lo, hi, color=colours[model], alpha=0.15, linewidth=0)
            else:  # a band over one point has no width: draw the interval as an error bar
                y = cells[xs[0]]["value"]
                # yerr must be >= 0, and nothing forces an interval to contain its value
                err = [[max(0.0, y - lo[0])], [max(0.0, hi[0] - y)]]
                ax.errorbar(xs, [y], yerr=err, color=colours[model], capsize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, labels=[str(d) for d in dims])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(dims) / 1.4, max(dims) * 1.4)  # room for the end markers on a log axis
    ax.set_xlabel("embedding dim (Matryoshka)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _plot_metric(path: Path, title: str, metric: str, by_model, colours, dims) -> None:
    """One metric's figure: a line per model against the dim, its interval as a band."""
    fig, ax = _new_figure()
    _draw(ax, by_model, colours, dims, metric)
    ax.set_title(title)
    ax.legend(title="model")
    fig.savefig(path, format="png")


def _plot_cost(path: Path, title: str, by_metric: Mapping, cost: Mapping, colours) -> bool:
    """Headline accuracy against p50 latency: one point per dim (labelled), a line per retriever
    that has both. False (nothing written) when no retriever has both."""
    headline = _headline(by_metric) or next(iter(by_metric))
    fig, ax = _new_figure()
    drawn = False
    for model, cells in by_metric[headline].items():
        lat = cost.get(model, {}).get("latency_ms_p50", {})
        dims = sorted(d for d in cells if d in lat)
        if not dims:
            continue
        xs, ys = [lat[d]["value"] for d in dims], [cells[d]["value"] for d in dims]
        ax.plot(xs, ys, marker="o", color=colours[model], label=model)
        for d, x, y in zip(dims, xs, ys, strict=True):
            ax.annotate(str(d), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn = True
    if drawn:
        ax.set_xlabel("search latency per query, p50 (ms)")
        ax.set_ylabel(headline)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(title="retriever")
        fig.savefig(path, format="png")
    return drawn


def _plot_names(stem: str, by_metric: Mapping) -> dict[str, str]:
    """metric -> its plot's file name, in metric order. The headline metric keeps the name it has
    always had (`<stem>-accuracy_vs_dim.png`, linked from earlier reports); every other metric is
    `<stem>-<metric>_vs_dim.png` with recall@k spelled recall_at_k, a short hash where two names
    would clash."""
    headline = _headline(by_metric)
    names: dict[str, str] = {}
    for metric in by_metric:
        if metric == headline:
            what = "accuracy"
        elif match := _RECALL.fullmatch(metric):
            what = f"recall_at_{match.group(1)}"
        else:
            what = _slug(metric)
        name = f"{stem}-{what}_vs_dim.png"
        if name in names.values():
            name = f"{stem}-{what}_{hashlib.sha1(metric.encode()).hexdigest()[:6]}_vs_dim.png"
        names[metric] = name
    return names


# ----------------------------------------------------------------------------- summary


def _summary(
    dataset: str, split: str, by_metric: Mapping, dims: list[int], protocol: str | None = None,
    baseline: str = "stage1",
) -> list[str]:
    """One line per model (the headline metric, em beside f1, and recall@1, each at every dim)
    plus a line per retriever minus the baseline; each names the protocol when the rows carry one."""
    named = f"protocol {protocol}, " if protocol else ""
    wanted = (_headline(by_metric), "em", "recall@1")
    shown = [m for m in by_metric if m in wanted] or [next(iter(by_metric))]
    models = _ordered(model for m in shown for model in by_metric[m])

    def fmt(values: Mapping[int, str]) -> str:
        return " ".join(f"{d}={values[d]}" for d in dims if d in values)

    lines = []
    for model in models:
        parts, ns = [], []
        for m in shown:
            cells = by_metric[m].get(model, {})
            if cells:
                parts.append(f"{m} " + fmt({d: f"{r['value']:.3f}" for d, r in cells.items()}))
                ns += [r["n"] for r in cells.values()]
        lines.append(f"{dataset}/{split} {model} ({named}n={max(ns)}): " + " | ".join(parts))
    deltas = _deltas({m: by_metric[m] for m in shown}, dims, baseline)
    for model in models:
        parts = [
            f"{m} " + fmt({d: _signed(v) for d, v in per_dim.items()})
            for (m, cand), per_dim in deltas.items() if cand == model
        ]
        if parts:
            where = f" ({named[:-2]})" if protocol else ""
            lines.append(f"{dataset}/{split} {model}-{baseline}{where}: " + " | ".join(parts))
    return lines


def _cost_summary(dataset: str, cost: Mapping) -> list[str]:
    """One line per retriever with cost rows: bytes and p50 latency at each dim."""
    lines = []
    for model, by in cost.items():
        dims = sorted({d for cells in by.values() for d in cells}, reverse=True)
        parts = [f"{d}={_bytes(by['index_bytes'][d]['value']) if d in by.get('index_bytes', {}) else '–'}"
                 f"/{by['latency_ms_p50'][d]['value']:.3f}ms" if d in by.get("latency_ms_p50", {}) else
                 f"{d}={_bytes(by['index_bytes'][d]['value'])}" for d in dims]
        lines.append(f"{dataset} cost {model} (index bytes/p50 latency): " + " ".join(parts))
    return lines


# ----------------------------------------------------------------------------- entry point


def _split_cost(rows: Sequence[Mapping]) -> tuple[list[Mapping], dict]:
    """(the accuracy rows, the cost rows as dataset -> model -> metric -> dim -> row)."""
    cost: dict = {}
    for r in rows:
        if r["metric"] in COST_METRICS:
            cost.setdefault(r["dataset"], {}).setdefault(r["model"], {}).setdefault(r["metric"], {})[int(r["dim"])] = r
    return [r for r in rows if r["metric"] not in COST_METRICS], cost


def _dataset_section(out: Path, group: tuple[str, str], by_metric: Mapping, cost: Mapping, colours: Mapping,
                     baseline: str) -> tuple[list[str], list[Path]]:
    """One dataset/split's section lines and its plots (written into `out`)."""
    dataset, split = group
    dims = _dims(by_metric)
    stem = f"{_slug(dataset)}-{_slug(split)}"
    names: list[tuple[str, str]] = []  # (file name, what it shows)
    for metric, name in _plot_names(stem, by_metric).items():
        _plot_metric(out / name, f"{dataset} / {split}: {metric} vs dim", metric, by_metric[metric], colours, dims)
        names.append((name, f"{metric} vs dim"))
    if cost and _plot_cost(out / f"{stem}-cost.png", f"{dataset} / {split}: accuracy vs latency",
                           by_metric, cost, colours):
        names.append((f"{stem}-cost.png", "accuracy vs search latency (a point per dim)"))
    return _section(dataset, split, by_metric, dims, names, baseline, cost), [out / name for name, _ in names]


def _front(title: str, protocol: str | None, notes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the title and protocol lines, the notes and the cell legend)."""
    head = [f"# {title}", ""]
    if protocol:
        head += [f"**Protocol: {_md(protocol)}** (evaluate.protocol; every number below comes from it)", ""]
    rest = ["## Notes", "", *(f"- {' '.join(str(n).splitlines())}" for n in notes), ""] if notes else []
    rest += ["Columns are Matryoshka embedding dims; cells are `value [ci_low, ci_high] (n=queries)`: the mean, "
             "its 95% bootstrap interval, and the queries it is over. The `model` column of the results table "
             "holds the retriever's name.", ""]
    return head, rest


def render_report(
    rows: Sequence[Mapping], out_dir: str, title: str, notes: Sequence[str] = (),
    baseline: str | None = None, headline: Sequence[str] | None = None,
) -> dict:
    """Write the evaluation report of a results table into `out_dir` (created if needed).

    rows: result rows with `RESULT_COLUMNS` (checked by `validate_rows`; at least one).
    Writes `report.md`: the title, the protocol when the rows carry one, then `## Summary` for the
    headline datasets (`headline`: dataset names, a benchmark's name covering its subsets; None,
    empty or naming none of the rows' datasets: every dataset): per dataset/split the smallest and
    largest recall@k and mrr (a dataset without them: its headline metric) at each retriever's
    largest dim as "value [ci]", each retriever minus `baseline` (default: the first retriever in
    `rows`) as its paired delta "+d [lo, hi]" from the `DELTA_COLUMNS` (rows without them: the
    difference of the values), and mrr at every dim likewise; then the notes as bullets; then per
    dataset/split, the headline datasets' first and the others after `## Other results (see
    notes)`: the metric x retriever table
    by dim with "value [ci] (n=...)" cells, each retriever minus `baseline` where both are present,
    the cost table when rows with `COST_METRICS`
    name the dataset, image links) and, per dataset/split, one plot per metric (`PLOT_SIZE` inches at
    `PLOT_DPI`): `<dataset>-<split>-accuracy_vs_dim.png` for the headline metric (rag_accuracy,
    else f1, else em) and `<dataset>-<split>-<metric>_vs_dim.png` for every other one (recall@k as
    `recall_at_k`), in the tables' metric order, and `<dataset>-<split>-cost.png` (headline accuracy
    against p50 latency) when there are latency rows. Returns {"markdown": path, "plots": [paths],
    "summary_lines": [str]}; the summary lines are for the task log.
    """
    validate_rows(rows)
    if not rows:
        raise ValueError("render_report: no result rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = {m: f"C{i % 10}" for i, m in enumerate(_ordered(r["model"] for r in rows))}
    scored, cost = _split_cost(rows)
    baseline = baseline or next((r["model"] for r in scored), None)
    protocol = rows[0].get("protocol")  # validate_rows: the same in every row, or absent
    groups = _group(scored)
    chosen = [g for g in groups if _in_headline(g[0], headline or ())] or list(groups)
    others = [g for g in groups if g not in chosen]
    head, rest = _front(title, protocol, notes)
    lines = head + (_summary_section(groups, chosen, baseline, bool(others)) if groups else []) + rest
    plots: list[Path] = []
    for group in [*chosen, *others]:
        if others and group == others[0]:
            lines += _others_heading(notes)
        section, figures = _dataset_section(out, group, groups[group], cost.get(group[0], {}), colours, baseline)
        lines += section
        plots += figures
    summary = [line for (dataset, split), by_metric in groups.items()
               for line in _summary(dataset, split, by_metric, _dims(by_metric), protocol, baseline)]
    for dataset, ds_cost in cost.items():
        summary += _cost_summary(dataset, ds_cost)

    markdown = out / "report.md"
    markdown.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return {"markdown": str(markdown), "plots": [str(p) for p in plots], "summary_lines": summary}
