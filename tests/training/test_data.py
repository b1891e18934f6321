"""The training mix: sources (select / split / cap), weights, epochs, negatives, images, versions."""

import hashlib
import shutil

import pytest

from nyx_tasks.core.config import TrainConfig, TrainSource
from nyx_tasks.core.schema import TRIPLETS
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
from nyx_tasks.training.data import Doc, TrainingMix, image_index, load_sources
from tests.conftest import demo_cfg


@pytest.fixture
def own_copy(built, tmp_path):
    """A private copy of the built root, for tests that write."""
    root = tmp_path / "artifacts"
    shutil.copytree(built, root)
    return root


def train(*sources, **kw) -> TrainConfig:
    return TrainConfig(sources=[TrainSource(**s) for s in sources], **kw)


def row(qa_id, n_negs=5, source="s"):
    return {"source": source, "qa_id": qa_id, "query": f"q {qa_id}", "query_image_ids": [], "pos_text": f"p {qa_id}",
            "pos_image_ids": [], "neg_texts": [f"{qa_id} n{i}" for i in range(n_negs)],
            "neg_image_ids": [[] for _ in range(n_negs)], "split": "train"}


# ------------------------------------------------------------- with a partition
def test_select_split_and_a_seeded_cap(built):
    store = ArtifactStore(str(built))
    mine = read_stage_table(store, "demo", "mine").to_pylist()
    cfg = train({"name": "text", "select": ["hotpotqa", "musique"]}, {"name": "nyx", "select": ["nyxqa"]},
                {"name": "capped", "select": ["2wikimultihopqa"], "max_rows": 5}, {"name": "all", "split": None})
    got = load_sources(store, "demo", cfg)
    assert {r["source"] for r in got["text"]} == {"hotpotqa", "musique"} and len(got["text"]) == 32
    assert len(got["nyx"]) == 3 and len(got["all"]) == len(mine) == 51
    two_wiki = [r["qa_id"] for r in mine if r["source"] == "2wikimultihopqa"]
    capped = [r["qa_id"] for r in got["capped"]]
    assert len(capped) == 5 and capped == [q for q in two_wiki if q in capped]  # a sample, in input order
    assert [r["qa_id"] for r in load_sources(store, "demo", cfg)["capped"]] == capped  # seeded
    other = load_sources(store, "demo", cfg.model_copy(update={"seed": 1}))["capped"]
    assert [r["qa_id"] for r in other] != capped
    mix = TrainingMix(got, cfg, image_index(store, "demo", cfg))
    for e in range(3):  # the cap is drawn once: every epoch sees the same 5 rows
        assert sorted(x.qa_id for x in mix.epoch(e) if x.source == "capped") == sorted(capped)
    with pytest.raises(ValueError, match="'nyx_dev'.*no rows.*split='dev'"):
        load_sources(store, "demo", train({"name": "nyx_dev", "select": ["nyxqa"], "split": "dev"}))


def test_image_paths_resolve_to_stored_files(built):
    store = ArtifactStore(str(built))
    cfg = train({"name": "nyx", "select": ["nyxqa"]}, negatives={"per_query": 5})
    mix = TrainingMix(load_sources(store, "demo", cfg), cfg, image_index(store, "demo", cfg))
    docs = [d for x in mix.epoch(0) for d in (x.query, x.positive, *x.negatives)]
    assert mix.counts["nyx"]["dropped"] == {} and sum(len(d.images) for d in docs) >= 3
    for d in docs:
        assert d.text.count("<image>") == len(d.images)
        assert all(p.startswith("images/") and store.exists(p) for p in d.images)


def test_negatives_kind_takes_the_newest_version_and_falls_back_to_mine(own_copy, caplog):
    from nyx_tasks.stages.mine import remine

    store = ArtifactStore(str(own_copy))
    cfg = train({"name": "neg", "kind": "negatives"})
    caplog.set_level("INFO", logger="nyx.train")
    rows = load_sources(store, "demo", cfg)["neg"]
    assert "falling back to the mine output" in caplog.text
    assert {r["source"] for r in rows} == {"nyxqa"} and len(rows) == 3  # NyxQA only, as re-mining gives
    result, v1, _ = remine(demo_cfg(own_copy), store)
    assert result.status == "computed"
    m1 = result.manifest
    # two hand-made versions: the newest by finished time wins, whatever the names sort like
    for version, finished, miner in (("aaa", "2999-01-01T00:00:00+00:00", "hand:newest"),
                                     ("zzz", "2000-01-01T00:00:00+00:00", "hand:oldest")):
        base = f"partitions/demo/negatives/{version}"
        w = store.parquet_writer(f"{base}/part-00000.parquet", TRIPLETS)
        w.write_rows([{**r, "miner_id": miner} for r in read_stage_table(store, "demo", f"negatives/{v1}").to_pylist()])
        store.write_json_atomic(f"{base}/_MANIFEST.json", {**m1, "outputs": {"part": [w.close()]},
                                                           "timings": {**m1["timings"], "finished_at": finished}})
    caplog.clear()
    rows = load_sources(store, "demo", cfg)["neg"]
    assert {r["miner_id"] for r in rows} == {"hand:newest"} and "negatives version aaa" in caplog.text
    store.remove("partitions/demo/negatives/aaa")
    caplog.clear()
    rows = load_sources(store, "demo", cfg)["neg"]  # v1 (finished now) beats the hand-made 2000 one
    assert f"negatives version {v1}" in caplog.text and not rows[0]["miner_id"].startswith("hand:")


def test_dataset_source_reads_what_nyx_import_wrote(own_copy, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nyx_tasks.sources.importers import import_dataset
    from tests.conftest import png_bytes

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes())
    src = tmp_path / "mmeb.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"qry": "<|image_1|>\nRepresent the given image", "qry_image_path": "a.png", "pos_text": "red",
         "pos_image_path": "", "neg_text": "['blue', 'green']", "neg_image_path": "['', '']"},
        {"qry": "which colour is red?", "qry_image_path": "", "pos_text": "<|image_1|>", "pos_image_path": "a.png",
         "neg_text": "", "neg_image_path": ""}]), src)
    store = ArtifactStore(str(own_copy))
    import_dataset("mmeb", [str(src)], "mmeb_tiny", store, [str(tmp_path / "img")])
    cfg = train({"name": "nyx", "select": ["nyxqa"]}, {"name": "mmeb", "kind": "dataset", "dataset": "mmeb_tiny"})
    mix = TrainingMix(load_sources(store, "demo", cfg), cfg, image_index(store, "demo", cfg))
    got = {x.qa_id: x for x in mix.epoch(0) if x.source == "mmeb"}
    assert mix.counts["mmeb"]["rows"] == 2 and mix.counts["mmeb"]["rows_short_of_negatives"] == 1
    a, b = got["mmeb_tiny-00000000"], got["mmeb_tiny-00000001"]
    assert a.query.text == "<image>\nRepresent the given image" and a.negatives in ((Doc("blue"),), (Doc("green"),))
    assert b.positive == Doc("<image>", a.query.images) and store.exists(a.query.images[0])
    # a dataset-only mix needs no partition at all
    only = train({"name": "mmeb", "kind": "dataset", "dataset": "mmeb_tiny"})
    assert len(load_sources(store, "no-such-partition", only)["mmeb"]) == 2
    png_id = hashlib.sha256(png_bytes()).hexdigest()
    assert image_index(store, "no-such-partition", only) == {png_id: a.query.images[0]}
    with pytest.raises(FileNotFoundError, match="nyx import"):
        load_sources(store, "demo", train({"name": "x", "kind": "dataset", "dataset": "never_imported"}))


def test_feedback_kind_names_the_missing_stage(built):
    with pytest.raises(FileNotFoundError, match="`feedback` stage"):
        load_sources(ArtifactStore(str(built)), "demo", train({"name": "fb", "kind": "feedback"}))


# ---------------------------------------------------------------- the mix alone
def test_weights_half_double_and_zero():
    rows = {n: [row(f"{n}{i}", source=n) for i in range(40)] for n in ("half", "double", "zero")}
    cfg = train({"name": "half", "weight": 0.5}, {"name": "double", "weight": 2}, {"name": "zero", "weight": 0})
    mix = TrainingMix(rows, cfg, {})
    assert {n: c["rows_per_epoch"] for n, c in mix.counts.items()} == {"half": 20, "double": 80, "zero": 0}
    e0, e1 = mix.epoch(0), mix.epoch(1)
    for ep in (e0, e1):
        ids = [x.qa_id for x in ep]
        assert len(ids) == len(mix) == 100 and not any(x.source == "zero" for x in ep)
        assert all(ids.count(f"double{i}") == 2 for i in range(40))
        assert len({q for q in ids if q.startswith("half")}) == 20  # without replacement
    assert {x.qa_id for x in e0 if x.source == "half"} != {x.qa_id for x in e1 if x.source == "half"}


def test_epochs_are_deterministic_and_differ():
    rows = {"s": [row(f"q{i}") for i in range(30)]}
    cfg = train({"name": "s"})
    a, b = TrainingMix(rows, cfg, {}), TrainingMix(rows, cfg, {})
    assert a.epoch(0) == a.epoch(0) == b.epoch(0) and a.epoch(3) == b.epoch(3)
    assert [x.qa_id for x in a.epoch(0)] != [x.qa_id for x in a.epoch(1)]
    assert sorted(x.qa_id for x in a.epoch(0)) == sorted(x.qa_id for x in a.epoch(1))
    assert a.examples(2) == a.epoch(0) + a.epoch(1)
    assert a.examples(1.5) == a.epoch(0) + a.epoch(1)[:15]
    other = TrainingMix(rows, cfg.model_copy(update={"seed": 7}), {})
    assert [x.qa_id for x in other.epoch(0)] != [x.qa_id for x in a.epoch(0)]


def test_negatives_sample_keeps_rank_order_and_short_rows_are_counted():
    rows = {"s": [row(f"q{i}") for i in range(20)] + [row("short", n_negs=1)]}
    cfg = train({"name": "s"}, negatives={"per_query": 2})
    mix = TrainingMix(rows, cfg, {})
    assert mix.counts["s"]["rows_short_of_negatives"] == 1
    picks = {}
    for e in range(3):
        for x in mix.epoch(e):
            ranks = [int(n.text.rsplit("n", 1)[1]) for n in x.negatives]
            assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
            assert len(ranks) == (1 if x.qa_id == "short" else 2)
            picks.setdefault(x.qa_id, []).append(tuple(ranks))
    assert TrainingMix(rows, cfg, {}).epoch(1) == mix.epoch(1)  # deterministic per (seed, epoch, row)
    assert any(len(set(p)) > 1 for p in picks.values())  # epochs draw different negatives
    assert all(len(x.negatives) == 0 for x in TrainingMix(rows, train({"name": "s"}, negatives={"per_query": 0}),
                                                          {}).epoch(0))


def test_missing_images_and_placeholder_mismatch_drop_by_name():
    good = {**row("ok"), "query": "see <image>", "query_image_ids": ["i1"]}
    rows = {"s": [good, {**row("gone"), "query": "see <image>", "query_image_ids": ["nope"]},
                  {**row("neg"), "neg_texts": ["<image>"], "neg_image_ids": [["nope"]]},
                  {**row("count"), "pos_text": "no placeholder", "pos_image_ids": ["i1"]}]}
    mix = TrainingMix(rows, train({"name": "s"}), {"i1": "images/i1.png"})
    assert mix.counts["s"]["dropped"] == {"query_image_missing": 1, "negative_image_missing": 1,
                                          "positive_placeholder_mismatch": 1}
    (x,) = mix.epoch(0)
    assert x.query == Doc("see <image>", ("images/i1.png",)) and x.source == "s"


def test_example_dataset_wraps_examples_for_torch():
    import torch.utils.data

    from nyx_tasks.training.data import ExampleDataset

    examples = TrainingMix({"s": [row("a"), row("b")]}, train({"name": "s"}), {}).epoch(0)
    ds = ExampleDataset(examples)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 2 and ds[1] == examples[1]
