"""Experiments: a named grid of config-override variants over one base partition, each run end to
end, recomputing only the stages its overrides change, then one comparison report.

    <root>/partitions/<base>/<stage>/                       the base partition, computed as usual
    <root>/partitions/<base>--<variant>/_EXPERIMENT.json    {experiment, variant, base, overrides}
    <root>/partitions/<base>--<variant>/<stage>/_MANIFEST.json
                                                            adopted (lists the base's files, `adopted_from`)
                                                            or computed here, in the variant's own folder
    <root>/reports/experiments/<name>/report.md             the comparison: overrides, results with
    <root>/reports/experiments/<name>/<metric>.png          intervals and each variant minus the first,
                                                            one plot per metric
    <root>/reports/experiments/<name>/results.csv           every variant's eval_results rows, tagged
    <root>/reports/experiments/<name>/experiment.json       variants, partitions, shared/own stages

Sharing is the runner's (`runner.adoption`): a stage of a variant partition whose key (config hash
plus input hashes) equals the base partition's committed snapshot writes a manifest that points at
the base's files instead of recomputing. Its output hash is the base's, so the next stage's key
matches too, up to the first stage a variant's overrides change; from there the variant computes
in its own partition. The base is never written by a variant, and a re-run is a no-op.

A grid is given as dotted `key: value` overrides, the form `--set` takes: `grid` maps each key to a
list of values (several keys: their product) and `variants` names explicit override sets.
`expand` turns them into named variants (`threshold=0.5`), `check_variants` validates each
variant's whole config before anything runs.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nyx_tasks.core.config import NyxConfig, deep_merge, describe
from nyx_tasks.core.log import get_logger
from nyx_tasks.evaluation.report import DELTA_COLUMNS
from nyx_tasks.runner import RunOptions, Stage, run_stage, stage_config_hash
from nyx_tasks.stages import STAGE_NAMES, get_stage
from nyx_tasks.store.artifacts import EXPERIMENT, ArtifactStore, read_manifest, read_stage_table

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")  # a partition name (the DAG form's rule)
SEPARATOR = "--"  # <base>--<variant>
REFUSED_KEYS = ("partition", "profile", "force", "artifacts")  # what a variant may not move
# eval_results' numbers and each row's paired difference from its variant's baseline retriever; every other
# column names a row
STAT_COLUMNS = ("value", "n", "ci_low", "ci_high", *DELTA_COLUMNS)
REPORTS = "reports/experiments"
MAX_PLOTS = 12

log = get_logger("experiments")


class GridError(ValueError):
    """A grid or variant the experiment refuses; the message is one line naming the variant and key."""


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value

    def tree(self) -> dict[str, Any]:
        """The overrides as a config tree (`feedback.threshold: 0.5` -> {feedback: {threshold: 0.5}})."""
        out: dict[str, Any] = {}
        for key, value in self.overrides.items():
            *parents, leaf = key.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out


# ------------------------------------------------------------------------------ the grid


def _mapping(value: Any, what: str) -> dict:
    """A form value as a mapping: an object, or YAML/JSON text of one (the CLI, a pasted grid)."""
    import yaml

    if value in (None, "", {}):
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise GridError(f"{what}: not YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise GridError(f"{what}: expected a mapping of dotted keys to values, got {type(value).__name__}")
    return value


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise GridError(f"{where}: {key!r} is not a dotted config key (e.g. feedback.threshold)")
    if key.split(".")[0] in REFUSED_KEYS:
        raise GridError(f"{where}: {key!r} cannot vary within an experiment (the base run sets "
                        f"{', '.join(REFUSED_KEYS)})")
    return key


def value_text(value: Any) -> str:
    """A value as it reads in a variant name: YAML scalars as written, lists and maps as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _safe(text: str) -> str:
    """A name part that is safe in a path and a partition name: other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-") or "x"


def grid_name(assignment: dict[str, Any], keys: list[str]) -> str:
    """`threshold=0.5` (the key's last part, or the whole dotted key where two keys share it),
    several keys joined by '_'."""
    leaves = [k.split(".")[-1] for k in keys]
    parts = []
    for key in keys:
        short = key.split(".")[-1]
        label = short if leaves.count(short) == 1 else key
        parts.append(_safe(f"{label}={value_text(assignment[key])}"))
    return "_".join(parts)


def expand(grid: Any = None, variants: Any = None) -> list[Variant]:
    """The named variants of a grid (the product of every key's values, in the order given) and of
    explicit `variants` (name -> overrides). Names are unique and safe as path parts."""
    grid, named = _mapping(grid, "grid"), _mapping(variants, "variants")
    out: list[Variant] = []
    if grid:
        keys = [_check_key(k, "grid") for k in grid]
        axes = []
        for key in keys:
            values = grid[key] if isinstance(grid[key], list) else [grid[key]]
            if not values:
                raise GridError(f"grid: {key!r} has no values")
            axes.append(values)
        for combo in itertools.product(*axes):
            assignment = dict(zip(keys, combo, strict=True))
            out.append(Variant(grid_name(assignment, keys), assignment))
    for name, overrides in named.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise GridError(f"variant {name!r}: not a valid name (letters, digits, '_', '.', '=', '-', starting "
                            "with a letter or digit)")
        body = _mapping(overrides, f"variant {name!r}")
        out.append(Variant(name, {_check_key(k, f"variant {name!r}"): v for k, v in body.items()}))
    if not out:
        raise GridError("the experiment has no variants: give a grid (e.g. {\"feedback.threshold\": [0.0, 0.5]}) "
                        "or named variants")
    seen: dict[str, Variant] = {}
    for v in out:
        if v.name in seen:
            raise GridError(f"variant {v.name!r} is named twice ({seen[v.name].overrides} and {v.overrides}); "
                            "rename one")
        seen[v.name] = v
    return out


def variant_partition(base: str, variant: str) -> str:
    """`<base>--<variant>`, refused when it is no valid partition name (e.g. too long)."""
    name = f"{base}{SEPARATOR}{variant}"
    if not NAME_RE.match(name):
        raise GridError(f"variant {variant!r}: partition {name!r} is not a valid name (at most 64 characters: "
                        "name the variant shorter)")
    return name


def variant_config(base: NyxConfig, variant: Variant) -> NyxConfig:
    """The base run's config with the variant's overrides, in the variant's partition; one line
    naming the variant and key when it does not validate (types, ranges, cross-field rules)."""
    data = deep_merge(base.model_dump(mode="json"), variant.tree())
    data["partition"] = variant_partition(base.partition, variant.name)
    try:
        return NyxConfig.model_validate(data)
    except ValidationError as e:
        raise GridError(f"variant {variant.name!r}: {describe(e)}") from None
    except ValueError as e:  # a rule of config_rules, already one line
        raise GridError(f"variant {variant.name!r}: {str(e).strip().splitlines()[0]}") from None


def check_variants(base: NyxConfig, variants: list[Variant], stages: list[Stage] | None = None) -> list[NyxConfig]:
    """Every variant's config, all validated before anything runs (the first bad one refused)."""
    cfgs = [variant_config(base, v) for v in variants]
    stages = stages or _registry()
    for v, cfg in zip(variants, cfgs, strict=True):
        changed = changed_stages(base, cfg, stages)
        log.info("variant %s: partition %s, overrides %s, changes %s", v.name, cfg.partition, v.overrides,
                 ", ".join(changed) or "no stage (the base's outputs throughout)")
    return cfgs


def _registry() -> list[Stage]:
    return [get_stage(s) for s in STAGE_NAMES]


def changed_stages(base: NyxConfig, cfg: NyxConfig, stages: list[Stage]) -> list[str]:
    """The stages whose config hash differs from the base's (their outputs, and those downstream,
    are recomputed in the variant's partition)."""
    return [s.name for s in stages if stage_config_hash(s, base) != stage_config_hash(s, cfg)]


def shared_stages(base: NyxConfig, cfgs: list[NyxConfig], stages: list[Stage]) -> list[Stage]:
    """The stages no variant changes, directly or through an input: computed once, in the base."""
    shared: list[Stage] = []
    names: set[str] = set()
    for s in stages:
        same = all(stage_config_hash(s, base) == stage_config_hash(s, c) for c in cfgs)
        if same and all(i in names for i in s.inputs):
            shared.append(s)
            names.add(s.name)
    return shared


# ------------------------------------------------------------------------------ running


def run_base(base: NyxConfig, cfgs: list[NyxConfig], store: ArtifactStore, opts: RunOptions | None = None,
             stages: list[Stage] | None = None) -> dict[str, str]:
    """Run, in the base partition, the stages every variant shares (a no-op where complete), so the
    variants adopt them; returns stage -> status."""
    stages = stages or _registry()
    done = {s.name: run_stage(s, base, store, opts).status for s in shared_stages(base, cfgs, stages)}
    log.info("experiment base %s: %d shared stage(s) (%s): %d computed, %d already complete", base.partition,
             len(done), ", ".join(done) or "none", sum(v == "computed" for v in done.values()),
             sum(v != "computed" for v in done.values()))
    return done


def mark_variant(store: ArtifactStore, experiment: str, variant: Variant, cfg: NyxConfig, base: str) -> None:
    """The variant partition's `_EXPERIMENT.json`: which base its stages adopt from."""
    rel = f"partitions/{cfg.partition}/{EXPERIMENT}"
    record = {"experiment": experiment, "variant": variant.name, "base": base, "overrides": variant.overrides}
    if store.read_json(rel) != record:
        store.write_json_atomic(rel, record)


def run_variant(base: NyxConfig, experiment: str, variant: Variant, store: ArtifactStore,
                opts: RunOptions | None = None, stages: list[Stage] | None = None) -> dict:
    """Every stage, in order, in the variant's partition: adopted from the base where its key matches,
    computed in the variant's own folders where not. Returns the variant's record for the report."""
    cfg = variant_config(base, variant)
    mark_variant(store, experiment, variant, cfg, base.partition)
    status: dict[str, str] = {}
    for s in stages or _registry():
        result = run_stage(s, cfg, store, opts)
        adopted = result.manifest.get("adopted_from")
        status[s.name] = "shared" if adopted else result.status  # computed | skipped (its own, from before)
    shared = [s for s, v in status.items() if v == "shared"]
    log.info("variant %s (partition %s): %d stage(s) shared with %s, %d computed, %d already complete", variant.name,
             cfg.partition, len(shared), base.partition, sum(v == "computed" for v in status.values()),
             sum(v == "skipped" for v in status.values()))
    return {"name": variant.name, "partition": cfg.partition, "overrides": variant.overrides, "stages": status}


# ------------------------------------------------------------------------------ the report


def report_rel(experiment: str) -> str:
    return f"{REPORTS}/{experiment}"


def _results(store: ArtifactStore, partition: str, stage: str):
    """A variant's evaluate rows (None when it has none), read through its manifest (adopted or not)."""
    if read_manifest(store, partition, stage, missing_ok=True) is None:
        return None
    return read_stage_table(store, partition, stage)


def comparison_rows(store: ArtifactStore, records: list[dict], stage: str = "evaluate") -> tuple[list[str], list[dict]]:
    """(identity columns, rows): every variant's eval rows tagged with `variant`, read generically:
    every column but the numbers (`STAT_COLUMNS`) names a row, whatever columns and rows exist."""
    rows, ident = [], None
    for rec in records:
        table = _results(store, rec["partition"], stage)
        if table is None:
            log.warning("variant %s: no %s output in partition %s; left out of the comparison",
                        rec["name"], stage, rec["partition"])
            continue
        cols = [c for c in table.column_names if c not in STAT_COLUMNS]
        ident = ident or cols
        ident += [c for c in cols if c not in ident]
        rows += [{"variant": rec["name"], **r} for r in table.to_pylist()]
    return ident or [], rows


def headline(ident: list[str], rows: list[dict]) -> list[dict]:
    """The rows at each (everything but dim)'s largest dim (all rows when there is no dim column)."""
    if "dim" not in ident:
        return rows
    rest = [c for c in ident if c != "dim"]
    top: dict[tuple, Any] = {}
    for r in rows:
        k = tuple(r.get(c) for c in rest)
        if r["dim"] is not None and (top.get(k) is None or r["dim"] > top[k]):
            top[k] = r["dim"]
    return [r for r in rows if r["dim"] == top.get(tuple(r.get(c) for c in rest))]


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    text = f"{r['value']:.4g}"
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        text += f" [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
    return text + (f" (n={r['n']})" if r.get("n") is not None else "")


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _diff(r: dict | None, ref: dict | None) -> str:
    """r's value minus the reference variant's, – without both (an unpaired difference of means)."""
    if r is None or ref is None:
        return "–"
    return f"{r['value'] - ref['value'] + 0.0:+.4g}"


def _results_table(ident: list[str], keyed: dict[tuple, dict[str, dict]], names: list[str]) -> list[str]:
    """A row per identity, a column per variant (value [interval] (n)), then a column per other variant
    minus the first (the reference)."""
    ref, rest = names[0], names[1:]
    header = [*ident, *map(_md, names), *(f"{_md(n)} − {_md(ref)}" for n in rest)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, by_variant in keyed.items():
        cells = [*(_md(x) for x in k), *(_cell(by_variant.get(n)) for n in names),
                 *(_diff(by_variant.get(n), by_variant.get(ref)) for n in rest)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _results_section(ident: list[str], top: list[dict], names: list[str], stage: str) -> list[str]:
    """## Results: the headline rows side by side (`_results_table`), or a line saying there are none."""
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in top:
        keyed.setdefault(tuple(r.get(c) for c in ident), {})[r["variant"]] = r
    lines = ["", f"## Results ({stage}: value [CI low, CI high] (n)" + (", at each row's largest dim)"
                                                                     if "dim" in ident else ")"), ""]
    if not keyed:
        return [*lines, f"No variant has `{stage}` results yet."]
    if len(names) > 1:
        lines += [f"`<variant> − {_md(names[0])}`: that variant's value minus the reference variant's "
                  f"({_md(names[0])}, the first): an unpaired difference of means (each variant scored its "
                  "queries in its own partition; no per-query pairing across variants). The paired difference "
                  "from each variant's baseline retriever is in results.csv (`delta`, `delta_ci_low`, "
                  "`delta_ci_high`) and in each variant's evaluation report.", ""]
    return lines + _results_table(ident, keyed, names)


def write_report(store: ArtifactStore, experiment: str, base: str, records: list[dict],
                 stage: str = "evaluate") -> str:
    """reports/experiments/<name>/: report.md (variants and their overrides, what each shared and
    computed; the headline results side by side with intervals, then each other variant minus the
    first, an unpaired difference of the aggregated means), one PNG per metric, results.csv
    and experiment.json. Returns report.md's path relative to the root."""
    import csv
    import io
    import tempfile
    from pathlib import Path

    rel = report_rel(experiment)
    ident, rows = comparison_rows(store, records, stage)
    names = [r["name"] for r in records]
    lines = [f"# Experiment {experiment}", "",
             f"Base partition `{base}`; {len(records)} variant(s); written "
             f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}. A shared stage's output is the base "
             "partition's, adopted by reference (same config and input hashes); the others were computed in the "
             "variant's partition.", "",
             "## Variants", "", "| variant | partition | overrides | computed in the variant | shared with the base |",
             "|---|---|---|---|---|"]
    for rec in records:
        over = ", ".join(f"`{k}: {value_text(v)}`" for k, v in rec["overrides"].items()) or "none"
        own = [s for s, v in rec["stages"].items() if v != "shared"]
        shared = [s for s, v in rec["stages"].items() if v == "shared"]
        lines.append(f"| {_md(rec['name'])} | `{rec['partition']}` | {_md(over)} | {', '.join(own) or '–'} | "
                     f"{', '.join(shared) or '–'} |")
    top = headline(ident, rows)
    lines += _results_section(ident, top, names, stage)
    plots = _plots(top, ident, names)
    if plots:
        lines += ["", "## Plots", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for metric, fig in plots:
            name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"
            path = Path(tmp) / name
            fig.savefig(path)
            store.write_bytes_atomic(f"{rel}/{name}", path.read_bytes())
            lines += [f"![{_md(metric)}]({name})", ""]
    buf = io.StringIO()
    cols = ["variant", *ident, *[c for c in STAT_COLUMNS if rows and c in rows[0]]]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    store.write_bytes_atomic(f"{rel}/results.csv", buf.getvalue().encode())
    store.write_json_atomic(f"{rel}/experiment.json", {"experiment": experiment, "base": base, "variants": records,
                                                       "rows": len(rows), "report": f"{rel}/report.md"})
    store.write_bytes_atomic(f"{rel}/report.md", "\n".join(lines).encode())
    log.info("experiment %s: report of %d variant(s), %d result rows (%d headline), %d plot(s) -> %s", experiment,
             len(records), len(rows), len(top), len(plots), store.url(f"{rel}/report.md"))
    return f"{rel}/report.md"


def _plots(rows: list[dict], ident: list[str], names: list[str]) -> list[tuple[str, Any]]:
    """One figure per metric (at most MAX_PLOTS): a bar per variant for each row of that metric,
    the interval as an error bar where the row has one."""
    if not rows or "metric" not in ident:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    label_cols = [c for c in ident if c != "metric"]
    out = []
    for metric in sorted({r["metric"] for r in rows})[:MAX_PLOTS]:
        mine = [r for r in rows if r["metric"] == metric]
        labels = list(dict.fromkeys(" / ".join(str(r.get(c)) for c in label_cols) for r in mine))
        fig = Figure(figsize=(max(6.0, 0.5 * len(labels) * max(1, len(names)) + 2), 4.5), dpi=100,
                     layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            cells = {" / ".join(str(r.get(c)) for c in label_cols): r for r in mine if r["variant"] == name}
            xs = [j + i * width for j, lab in enumerate(labels) if lab in cells]
            got = [cells[lab] for lab in labels if lab in cells]
            if not got:
                continue
            ys = [r["value"] for r in got]
            err = [[max(0.0, r["value"] - r["ci_low"]) if r.get("ci_low") is not None else 0.0 for r in got],
                   [max(0.0, r["ci_high"] - r["value"]) if r.get("ci_high") is not None else 0.0 for r in got]]
            ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=name)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(labels))], labels=labels,
                      rotation=30, ha="right", fontsize=7)
        ax.set_title(metric)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        out.append((metric, fig))
    return out


def experiments(store: ArtifactStore, read_json=None) -> list[dict]:
    """The experiment reports under the root (name, base, variants, report path), for the explorer:
    each folder with a report.md and an experiment.json. `read_json(rel)` reads a record (None when
    there is none; OSError or ValueError when it cannot be read, as the explorer's reader says of a
    symlink or an oversized file); the store's own by default. A record that cannot be read or is
    malformed (not an object, no list of named `variants`, a `base` that is not a name) is listed
    with `broken` (the path and why) and no base or variants, never raised: one bad folder must not
    hide the others."""
    read_json = read_json or store.read_json
    out = []
    for name in store.listdir(REPORTS):
        if not NAME_RE.match(name):
            continue
        rel, report = f"{REPORTS}/{name}/experiment.json", f"{REPORTS}/{name}/report.md"
        why = ""
        try:
            rec = read_json(rel)
        except (OSError, ValueError) as e:  # a truncated write, a folder by that name, the reader's refusal
            rec, why = None, str(e) or type(e).__name__
        if (rec is None and not why) or not store.exists(report):
            continue
        if not why:
            variants = rec.get("variants") if isinstance(rec, dict) else None
            if not isinstance(rec, dict):
                why = f"a JSON {type(rec).__name__}, not an object"
            elif not isinstance(variants, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str)
                                                           for v in variants):
                why = "no list of named `variants`"
            elif not isinstance(rec.get("base", ""), str):
                why = "`base` is not a name"
        if why:
            out.append({"name": name, "base": "", "variants": [], "report": report, "broken": f"{rel}: {why}"})
        else:
            out.append({"name": name, "base": rec.get("base", ""), "variants": [v["name"] for v in variants],
                        "report": report})
    return out


__all__ = ["GridError", "Variant", "check_variants", "expand", "experiments", "run_base", "run_variant",
           "shared_stages", "variant_config", "variant_partition", "write_report"]
