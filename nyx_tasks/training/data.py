"""The training mix (tevatron's "dataset" role): raw triplets, no tokenisation.

Paper (arXiv 2510.17354, training): stage 1 trains on NyxQA with its mined hard negatives plus
public sets (MMEB-train, mmE5's synthetic data, the text-only QA sets); stage 2 adds the
VLM-feedback triplets. Every source is a table in the TRIPLETS schema; this module reads them
(`load_sources`), resolves image ids to stored paths (`image_index`), and lays out each epoch
(`TrainingMix`): weights, one seeded shuffle, and a seeded choice of hard negatives. The collator
(tokenising) and the trainer come after it and only see `Example`s.

Every random choice is a `random.Random` seeded by a string naming what it decides, so the same
(seed, epoch) always gives the same list, whatever else ran before.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass

from nyx_tasks.core.config import TrainConfig, TrainSource
from nyx_tasks.core.log import get_logger
from nyx_tasks.sources.importers import dataset_rel
from nyx_tasks.store.artifacts import ArtifactStore, image_paths, iter_stage_batches

PARTITION_KINDS = ("mine", "negatives", "feedback")


@dataclass(frozen=True)
class Doc:
    """A mixed-modal text: one placeholder per image; images as paths relative to the artifact root."""

    text: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    qa_id: str
    source: str  # the TrainSource name
    query: Doc
    positive: Doc
    negatives: tuple[Doc, ...]  # negatives.per_query of them, fewer when the row has fewer
    instruction: str = ""  # put before the query when it is encoded ("" : none)


# ------------------------------------------------------------------ reading
def _stage_rows(store: ArtifactStore, partition: str, stage: str) -> list[dict]:
    return [r for b in iter_stage_batches(store, partition, stage) for r in b.to_pylist()]


def newest_negatives(store: ArtifactStore, partition: str) -> str | None:
    """The newest complete `partitions/<p>/negatives/<version>/` by its manifest's finished time."""
    base = f"{ArtifactStore.stage_rel(partition, 'negatives')}"
    found = []
    for version in store.listdir(base):
        m = store.read_json(f"{base}/{version}/_MANIFEST.json")
        if m and m.get("status") == "complete":
            found.append((m["timings"]["finished_at"], m["timings"].get("planned_at", ""), version))
    return max(found)[2] if found else None


def _dataset_manifest(store: ArtifactStore, name: str) -> dict:
    m = store.read_json(f"{dataset_rel(name)}/_MANIFEST.json")
    if m is None:
        raise FileNotFoundError(f"no imported dataset {name!r} under {store.url(dataset_rel(name))}: "
                                f"run `nyx import mmeb|mme5 SRC... --name {name}` first")
    return m


def _source_rows(store: ArtifactStore, partition: str, src: TrainSource, cache: dict, log) -> list[dict]:
    def stage(name: str) -> list[dict]:
        if name not in cache:
            cache[name] = _stage_rows(store, partition, name)
        return cache[name]

    if src.kind == "mine":
        return stage("mine")
    if src.kind == "negatives":
        version = newest_negatives(store, partition)
        if version is None:
            log.info("train source %r: no re-mined negatives under %s; falling back to the mine output",
                     src.name, store.url(ArtifactStore.stage_rel(partition, "negatives")))
            return stage("mine")
        log.info("train source %r: negatives version %s", src.name, version)
        return stage(f"negatives/{version}")
    if src.kind == "feedback":
        if store.read_json(f"{ArtifactStore.stage_rel(partition, 'feedback')}/_MANIFEST.json") is None:
            raise FileNotFoundError(
                f"train source {src.name!r} (kind=feedback) needs the `feedback` stage's output for partition "
                f"{partition!r} under {store.root}, and there is none: run `nyx feedback --partition {partition}` "
                "(the VLM-feedback stage, paper: stage 2) first")
        return stage("feedback")
    m = _dataset_manifest(store, src.dataset)
    return [r for o in m["outputs"]["part"] for b in store.read_parquet(o["path"]) for r in b.to_pylist()]


def _cap(rows: list[dict], n: int, order: str, rng_key: str) -> list[dict]:
    """At most n rows, kept in input order: the first n, or a sample seeded by `rng_key`
    (independent of the epoch)."""
    if len(rows) <= n:
        return rows
    if order == "first":
        return rows[:n]
    picked = random.Random(rng_key).sample(range(len(rows)), n)
    return [rows[i] for i in sorted(picked)]


def select_rows(rows: list[dict], src: TrainSource, seed: int) -> list[dict]:
    # kind=negatives holds NyxQA only; its fallback (mine) must give the same kind of rows
    select = set(src.select or (["nyxqa"] if src.kind == "negatives" else []))
    exclude = set(src.exclude)
    kept = [r for r in rows if (not select or r["source"] in select) and r["source"] not in exclude
            and (src.split is None or r["split"] == src.split)]
    if not kept and not src.required:
        return []
    if not kept:
        raise ValueError(
            f"train source {src.name!r} (kind={src.kind}) has no rows after select={sorted(select) or 'all'} "
            f"exclude={sorted(exclude) or 'none'} split={src.split!r}; its input has {len(rows)} rows, by source "
            f"{dict(Counter(r['source'] for r in rows))} and split {dict(Counter(r['split'] for r in rows))}")
    if src.max_rows_per_subset is not None:
        by_subset: dict[str, list[dict]] = {}
        for r in kept:
            by_subset.setdefault(r["source"], []).append(r)
        capped = {name: {id(r) for r in _cap(group, src.max_rows_per_subset, src.cap_order,
                                               f"{seed}:cap:{src.name}:{name}")}
                  for name, group in by_subset.items()}
        kept = [r for r in kept if id(r) in capped[r["source"]]]
    if src.max_rows is not None:
        kept = _cap(kept, src.max_rows, src.cap_order, f"{seed}:cap:{src.name}")
    return kept


def source_instruction(src: TrainSource, cfg: TrainConfig) -> str:
    """The instruction before this source's queries: its own when set; none for imported
    datasets (MMEB's and mmE5's queries carry their own); else the stage's."""
    if src.query_instruction is not None:
        return src.query_instruction
    return "" if src.kind == "dataset" else cfg.query_instruction


def load_sources(store: ArtifactStore, partition: str, cfg: TrainConfig, log=None) -> dict[str, list[dict]]:
    """TrainSource name -> triplet rows (TRIPLETS dicts) after `select`, `exclude`, `split` and the
    caps (`max_rows_per_subset` per `source` value, then `max_rows`), in `cfg.sources` order. kind mine: the partition's `mine` output;
    negatives: the newest `negatives/<version>` (NyxQA rows; falls back to `mine` with a log
    line); dataset: `<root>/datasets/<name>/` from `nyx import`; feedback: the `feedback`
    stage's output (an error naming the stage while it does not exist). A source with no rows
    after filtering is an error naming it."""
    log = log or get_logger("train")
    cache: dict[str, list[dict]] = {}
    out: dict[str, list[dict]] = {}
    for src in cfg.sources:
        out[src.name] = select_rows(_source_rows(store, partition, src, cache, log), src, cfg.seed)
        log.info("train source %r (kind=%s): %d rows%s%s", src.name, src.kind, len(out[src.name]),
                 f" by subset {dict(sorted(Counter(r['source'] for r in out[src.name]).items()))}"
                 if src.max_rows_per_subset or src.kind == "dataset" else "",
                 "" if out[src.name] else " (optional: skipped)")
    if not any(out.values()):
        raise ValueError(f"every train source is empty: {sorted(out)}; check the sources' select and split")
    return out


def image_index(store: ArtifactStore, partition: str, cfg: TrainConfig) -> dict[str, str]:
    """image_id -> path relative to the root: the partition's ingest images (when a source reads
    the partition) plus the IMAGES tables of every dataset source."""
    paths: dict[str, str] = {}
    if any(s.kind in PARTITION_KINDS for s in cfg.sources):
        paths.update(image_paths(store, partition))
    for src in cfg.sources:
        if src.kind == "dataset":
            for o in _dataset_manifest(store, src.dataset)["outputs"].get("images", []):
                for b in store.read_parquet(o["path"], columns=["image_id", "path"]):
                    paths.update(zip(b.column("image_id").to_pylist(), b.column("path").to_pylist(), strict=True))
    return paths


# --------------------------------------------------------------------- mix
@dataclass(frozen=True)
class _Row:
    qa_id: str
    query: Doc
    positive: Doc
    negatives: tuple[Doc, ...]  # every mined negative, in rank order


def _doc(text: str, ids: list[str], images: dict[str, str], placeholder: str, side: str) -> Doc | str:
    """A Doc, or the drop reason: an image id with no stored path, or a placeholder count that
    does not match the images (the collator could not place them)."""
    if any(i not in images for i in ids):
        return f"{side}_image_missing"
    if text.count(placeholder) != len(ids):
        return f"{side}_placeholder_mismatch"
    return Doc(text, tuple(images[i] for i in ids))


TEXT_ENCODER_IMAGE_ROW = "text_encoder_image_row"  # an encoder backbone sees no images


def _prepare(r: dict, images: dict[str, str], placeholder: str, text_only: bool = False) -> _Row | str:
    """The row's Docs, or its drop reason. `text_only` (an encoder backbone): a row whose query or
    positive carries an image is dropped by name; its image negatives are left out."""
    negatives = list(zip(r["neg_texts"], r["neg_image_ids"], strict=True))
    if text_only:
        if r["query_image_ids"] or r["pos_image_ids"]:
            return TEXT_ENCODER_IMAGE_ROW
        negatives = [(t, ids) for t, ids in negatives if not ids]
    docs = [_doc(r["query"], r["query_image_ids"], images, placeholder, "query"),
            _doc(r["pos_text"], r["pos_image_ids"], images, placeholder, "positive")]
    docs += [_doc(t, ids, images, placeholder, "negative") for t, ids in negatives]
    bad = next((d for d in docs if isinstance(d, str)), None)
    return bad or _Row(r["qa_id"], docs[0], docs[1], tuple(docs[2:]))


def _fraction(frac: float, n: int) -> int:
    return min(n, int(frac * n + 0.5))


class TrainingMix:
    """The epochs of the training mix: each source contributes weight x rows per epoch (whole
    part: every row that many times; fractional part: a seeded sample without replacement),
    the epoch is shuffled once, and each example takes `negatives.per_query` of its row's
    negatives: the first (hardest) ones, or a seeded sample that keeps rank order
    (`negatives.choice`). Each example carries its source's query instruction.

    `counts[source]`: rows (kept), rows_per_epoch, dropped (by reason), subsets (kept rows by their
    `source` value: an imported subset, a text set, nyxqa), rows_short_of_negatives
    (every example of such a row has fewer than `negatives.per_query` negatives), rows_with_images
    (a query, positive or negative of the row carries an image), image_negatives_left_out (an
    encoder backbone: negatives with an image, left out of their rows)."""

    def __init__(self, rows_by_source: dict[str, list[dict]], cfg: TrainConfig, images: dict[str, str]):
        self.cfg = cfg
        self.weights = {s.name: s.weight for s in cfg.sources}
        self.instructions = {s.name: source_instruction(s, cfg) for s in cfg.sources}
        self.rows: dict[str, list[_Row]] = {}
        self.counts: dict[str, dict] = {}
        k = cfg.negatives.per_query
        for name, rows in rows_by_source.items():
            kept, dropped, subsets = [], Counter(), Counter()
            text_only, left_out = cfg.family == "encoder", 0
            for r in rows:
                row = _prepare(r, images, cfg.image_placeholder, text_only)
                if text_only and not isinstance(row, str):
                    left_out += sum(1 for ids in r["neg_image_ids"] if ids)
                if isinstance(row, str):
                    dropped[row] += 1
                else:
                    kept.append(row)
                    subsets[r["source"]] += 1
            self.rows[name] = kept
            w = self.weights.get(name, 1.0)
            self.counts[name] = {
                "rows": len(kept), "rows_per_epoch": int(w) * len(kept) + _fraction(w - int(w), len(kept)),
                "dropped": dict(sorted(dropped.items())), "subsets": dict(sorted(subsets.items())),
                "rows_short_of_negatives": sum(1 for x in kept if len(x.negatives) < k),
                "rows_with_images": sum(1 for x in kept if any(d.images for d in (x.query, x.positive, *x.negatives))),
                "image_negatives_left_out": left_out,
            }

    def __len__(self) -> int:
        return sum(c["rows_per_epoch"] for c in self.counts.values())

    def epoch(self, e: int) -> list[Example]:
        """Deterministic for (cfg.seed, e); another epoch gives another order and sample."""
        seed = self.cfg.seed
        picks: list[tuple[str, int, int]] = []  # (source, row index, copy)
        for name, rows in self.rows.items():
            w = self.weights.get(name, 1.0)
            whole, n = int(w), len(rows)
            for copy in range(whole):
                picks += [(name, i, copy) for i in range(n)]
            m = _fraction(w - whole, n)
            if m:
                sample = random.Random(f"{seed}:{e}:weight:{name}").sample(range(n), m)
                picks += [(name, i, whole) for i in sorted(sample)]
        random.Random(f"{seed}:{e}:shuffle").shuffle(picks)
        return [self._example(name, self.rows[name][i], e, copy) for name, i, copy in picks]

    def _example(self, source: str, row: _Row, e: int, copy: int) -> Example:
        negs, k = row.negatives, self.cfg.negatives.per_query
        if len(negs) > k and self.cfg.negatives.choice == "first":
            negs = negs[:k]
        elif len(negs) > k:
            # a repeated row (weight >= 2) gets its own sample per copy
            rng = random.Random(f"{self.cfg.seed}:{e}:negatives:{source}:{row.qa_id}:{copy}")
            negs = tuple(negs[j] for j in sorted(rng.sample(range(len(negs)), k)))
        return Example(row.qa_id, source, row.query, row.positive, negs,
                       self.instructions.get(source, self.cfg.query_instruction))

    def examples(self, epochs: float) -> list[Example]:
        """epoch(0) + epoch(1) + ...; a fractional last epoch is a prefix of that epoch."""
        out: list[Example] = []
        for e in range(int(epochs)):
            out += self.epoch(e)
        frac = epochs - int(epochs)
        if frac > 0:
            last = self.epoch(int(epochs))
            out += last[:_fraction(frac, len(last))]
        return out


def example_size(ex: Example) -> tuple[int, int]:
    """What sets the padded length of an example's micro-batch: its images (each a block of vision
    tokens), then its longest document's characters (a micro-batch's documents pad to the longest)."""
    docs = (ex.positive, *ex.negatives)
    return sum(len(d.images) for d in (ex.query, *docs)), max(len(d.text) for d in docs)


def group_by_length(examples: list[Example], micro: int, window: int, seed: str) -> list[Example]:
    """`examples` reordered so each run of `micro` holds examples of similar size: every window of
    `window` examples sorted by `example_size`, cut into micro-batches, and the window's micro-batches
    shuffled (seeded by `seed` and the window), so the step order stays mixed. The same examples, each
    once; a trailing partial window is grouped the same way, its short micro-batch last (`window` is a
    multiple of `micro`)."""
    out: list[Example] = []
    for w, start in enumerate(range(0, len(examples), window)):
        part = sorted(examples[start:start + window], key=example_size)
        batches = [part[i:i + micro] for i in range(0, len(part), micro)]
        short = batches.pop() if len(batches[-1]) < micro else []  # stays last: the cuts stay micro-batches
        random.Random(f"{seed}:length-groups:{w}").shuffle(batches)
        out += [ex for b in batches for ex in b] + short
    return out


@functools.cache
def _example_dataset_class():
    import torch.utils.data

    class ExampleDataset(torch.utils.data.Dataset):
        """A map-style torch Dataset over a list of Examples (the collator tokenises them)."""

        def __init__(self, examples):
            self.examples = list(examples)

        def __len__(self) -> int:
            return len(self.examples)

        def __getitem__(self, i: int) -> Example:
            return self.examples[i]

    return ExampleDataset


def __getattr__(name: str):
    # `ExampleDataset` subclasses torch's Dataset; building it on first use keeps torch out of
    # every import of this module.
    if name == "ExampleDataset":
        return _example_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
