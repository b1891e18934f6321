"""`ingest` on the bundled corpus (file URLs) and on a loopback HTTP corpus."""

import json

from nyx_tasks.runner import run_stage
from nyx_tasks.sources.files import Malformed
from nyx_tasks.sources.obelics import EOD_MARKER, parse_row
from nyx_tasks.stages import get_stage
from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table
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


def test_one_address_policy_for_every_scheme(tmp_path, make_cfg, image_server):
    """With the paper's policy (no private networks, no file roots) a loopback URL, a file:// URL
    and a relative path (with the file next to the corpus) are each refused by name, and the
    loopback server sees no request; with a file root and an image root, both local ones are read."""
    url = image_server.add("/a.png", "ok", png_bytes(), "image/png")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "r.png").write_bytes(png_bytes(20, 20))
    (tmp_path / "images" / "f.png").write_bytes(png_bytes(30, 30))
    images = [url, (tmp_path / "images" / "f.png").as_uri(), "images/r.png"]
    rows = [obelics_row([long_text(i), None], [None, u]) for i, u in enumerate(images)]
    src = write_jsonl(tmp_path / "c.jsonl", [*rows, obelics_row([long_text(9)], [None])])  # + a text-only one
    common = ["ingest.source.kind=files", f"ingest.source.paths=[{src}]", "ingest.fetch.allowed_networks=[]"]
    m = run_stage(get_stage("ingest"), make_cfg(*common, "ingest.fetch.file_roots=[]")).manifest
    assert m["drops"] == {"image_blocked_address": 1, "image_file_not_allowed": 1, "image_bad_url": 1}
    assert m["rows_out"] == 1 and image_server.requests == []

    cfg = make_cfg(*common, f"ingest.fetch.file_roots=[{tmp_path / 'images'}]",
                   f"ingest.source.image_root={tmp_path}", root=tmp_path / "rooted")
    m = run_stage(get_stage("ingest"), cfg).manifest
    assert m["drops"] == {"image_blocked_address": 1} and m["rows_out"] == 3
    docs = read_stage_table(ArtifactStore(cfg.artifact_root()), cfg.partition, "ingest").to_pylist()
    assert sorted(u for d in docs for u in d["image_urls"] if u) == sorted(
        (tmp_path / "images" / n).as_uri() for n in ("f.png", "r.png"))
    assert image_server.requests == []


def test_relative_image_paths_resolve_only_under_a_configured_root():
    row = obelics_row([long_text(1), None, None], [None, "images/a b.png", "https://example.org/x.png"])
    plain, rooted = parse_row(row, "f#0"), parse_row(row, "f#0", "/data/corpus")
    assert plain.image_urls[1:] == ["images/a b.png", "https://example.org/x.png"]  # the fetcher calls it a bad URL
    assert rooted.image_urls[1:] == ["file:///data/corpus/images/a%20b.png", "https://example.org/x.png"]
    assert plain.doc_id == rooted.doc_id == parse_row(row, "f#0", "/elsewhere").doc_id  # not machine-dependent


def test_a_trickling_server_cannot_stall_the_stage(tmp_path, make_cfg, image_server):
    """Three images sent one byte per 0.5 s (60 s each uncut), four good: the stage ends within
    about one deadline (they are fetched concurrently, no retries), dropping the three by name."""
    import time

    urls = [image_server.add(f"/t{i}.png", "trickle", b"x" * 120, 0.5) for i in range(3)]
    urls += [image_server.add(f"/good{i}.png", "ok", png_bytes(10 + i), "image/png") for i in range(4)]
    src = write_jsonl(tmp_path / "c.jsonl", [obelics_row([long_text(i), None], [None, u]) for i, u in enumerate(urls)])
    cfg = make_cfg("ingest.source.kind=files", f"ingest.source.paths=[{src}]", "ingest.fetch.retries=0",
                   "ingest.fetch.timeout_s=2", "ingest.fetch.deadline_s=1.5")
    t0 = time.monotonic()
    m = run_stage(get_stage("ingest"), cfg).manifest
    elapsed = time.monotonic() - t0
    assert m["drops"] == {"image_deadline": 3} and m["rows_out"] == 4
    assert m["extra"]["image_failed_deadline"] == 3
    assert elapsed < 3 * (1.5 + 1.0), elapsed  # one deadline plus the stage's own work; a generous bound
