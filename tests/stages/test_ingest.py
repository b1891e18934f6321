"""`ingest` on the bundled corpus (file URLs) and on a loopback HTTP corpus."""

import json

from nyx_tasks.artifacts import ArtifactStore, read_stage_table
from nyx_tasks.obelics import EOD_MARKER, Malformed, parse_row
from nyx_tasks.runner import run_stage
from nyx_tasks.stages import get_stage
from tests.conftest import long_text, obelics_row, png_bytes, write_jsonl


def test_sample_corpus_drops_every_bad_case_by_name(make_cfg):
    cfg = make_cfg()
    store = ArtifactStore(cfg.artifact_root())
    m = run_stage(get_stage("ingest"), cfg, store).manifest
    expected = {"image_not_found", "image_decode_error", "image_not_image_content_type",
                "image_decompression_bomb", "malformed_length_mismatch", "malformed_slot_not_exactly_one",
                "malformed_invalid_utf8", "malformed_invalid_json", "duplicate_document"}
    assert set(m["drops"]) == expected and all(v == 1 for v in m["drops"].values())
    assert m["rows_in"] == m["rows_out"] + sum(m["drops"].values())
    assert m["rows_out"] >= 40
    docs = read_stage_table(store, cfg.partition, "ingest").to_pylist()
    images = read_stage_table(store, cfg.partition, "ingest", kind="images").to_pylist()
    assert len(docs) == m["rows_out"]
    assert not any(EOD_MARKER in t for d in docs for t in d["texts"] if t)
    # every referenced image is stored once, content-addressed, and listed
    listed = {i["image_id"]: i for i in images}
    for d in docs:
        assert len(d["texts"]) == len(d["image_ids"]) == len(d["image_urls"])
        for img in filter(None, d["image_ids"]):
            assert store.exists(listed[img]["path"])
            assert store.sha256(listed[img]["path"]) == img
    assert sum(d["n_images"] for d in docs) > 30


def test_parse_row_quirks_of_the_real_data():
    row = obelics_row(["Hello " + EOD_MARKER, None, EOD_MARKER], [None, "https://example.org/a.png", None],
                      general=[], metadata=[None, {"src": "x"}, None])
    doc = parse_row(row, "f#0")
    assert doc.texts == ["Hello", None] and doc.image_urls == [None, "https://example.org/a.png"]
    assert doc.general_metadata == {} and doc.url is None
    assert parse_row({"texts": ["a"], "images": [None, None]}, "f#1").reason == "length_mismatch"
    assert parse_row({"texts": ["a"], "images": ["u"]}, "f#2").reason == "slot_not_exactly_one"
    assert parse_row({"texts": None, "images": []}, "f#3").reason == "missing_fields"
    assert isinstance(parse_row(obelics_row([EOD_MARKER], [None]), "f#4"), Malformed)


def test_http_corpus_every_nth_and_drop_image_mode(tmp_path, make_cfg, image_server):
    good = image_server.add("/good.png", "ok", png_bytes(), "image/png")
    bad = image_server.url("/gone.png")  # 404
    rows = [obelics_row([long_text(i), None], [None, good if i % 3 else bad]) for i in range(9)]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    common = ["ingest.source.kind=files", f"ingest.source.paths=[{src}]", "ingest.fetch.retries=0"]

    m = run_stage(get_stage("ingest"), make_cfg(*common, "ingest.every_nth=2")).manifest
    assert m["extra"]["rows_read"] == 9 and m["rows_in"] == 5  # rows 0, 2, 4, 6, 8
    assert m["drops"] == {"image_http_404": 2}  # rows 0 and 6
    assert m["rows_out"] == 3

    cfg = make_cfg(*common, "ingest.on_image_failure=drop_image", root=tmp_path / "other")
    m = run_stage(get_stage("ingest"), cfg).manifest
    assert m["rows_out"] == 9 and m["drops"] == {}
    assert m["extra"]["images_dropped_from_kept_docs"] == 3
    docs = read_stage_table(ArtifactStore(cfg.artifact_root()), cfg.partition, "ingest").to_pylist()
    assert sorted(d["n_images"] for d in docs) == [0] * 3 + [1] * 6
    # the good image was fetched once per batch and stored once
    assert len(list((tmp_path / "other" / "images").rglob("*.png"))) == 1
    assert json.loads(docs[0]["general_metadata_json"]) == {"url": "https://example.org/doc"}


def test_loopback_refused_when_not_allowlisted_drops_docs_and_sends_nothing(tmp_path, make_cfg, image_server):
    url = image_server.add("/a.png", "ok", png_bytes(), "image/png")
    src = write_jsonl(tmp_path / "c.jsonl", [obelics_row([long_text(1), None], [None, url])])
    cfg = make_cfg("ingest.source.kind=files", f"ingest.source.paths=[{src}]",
                   "ingest.fetch.allowed_networks=[]")
    m = run_stage(get_stage("ingest"), cfg).manifest
    assert m["drops"] == {"image_blocked_address": 1}
    assert image_server.requests == []
