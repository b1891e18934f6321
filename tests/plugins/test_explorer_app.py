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
    from nyx_tasks.artifacts import ArtifactStore, read_stage_table
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages.evaluate import EvaluateStage
    from nyx_tasks.stages.feedback import FeedbackStage

    class Feedback(FeedbackStage):
        def input_fingerprint(self, ctx):
            return {"mine": ctx.input_manifest("mine")["output_hash"]}

        def plan_shards(self, ctx):
            return [{"shard": 0, "name": "all"}]

        def process(self, ctx, shard, out):
            mined = read_stage_table(ctx.store, ctx.partition, "mine").to_pylist()
            picked = [t for t in mined if t["source"] == "nyxqa"][:3] + [t for t in mined if t["source"] != "nyxqa"][:2]
            out.rows_in = len(picked)
            for q, t in enumerate(picked):
                docs = [*t["neg_chunk_ids"][:3], t["pos_chunk_id"]]
                helpful = q % 2 == 0  # every other query finds a helpful window (window 1)
                mc = t["source"] == "nyxqa"
                out.write([{"qa_id": t["qa_id"], "source": t["source"], "window": w, "doc_ids": [d], "ranks": [w],
                            "answer": None if w == 2 else (t["answer"] if helpful and w == 1 else "wrong"),
                            "score": 1.0 if helpful and w == 1 else 0.0,
                            "judge": "multiple_choice" if mc else "free_form"} for w, d in enumerate(docs)],
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
            out.rows_in = 7
            out.write(rows)
            self._report(ctx, rows)

    cfg = demo_cfg(root)
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
        shown = dict((k, int(v)) for k, v in re.findall(r"<tr><td><code>([^<]+)</code></td><td class=\"num\">(\d+)</td></tr>",
                                                        card.split("<details>")[0]))
        assert shown == m["drops"], stage  # every drop reason, by name, with its count
    assert manifest(explorer_root, "feedback")["drops"] == {"no_helpful_window": 2}


def test_unknown_partition_is_404(client):
    assert client.get("/p/nope").status_code == 404
    assert client.get("/p/..%2Fpartitions").status_code == 404


def test_qa_items_show_question_images_and_options_with_the_correct_one_marked(client, explorer_root):
    from nyx_tasks.artifacts import ArtifactStore, read_stage_table

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
    from nyx_tasks.artifacts import ArtifactStore, read_stage_table

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
    from nyx_tasks.artifacts import ArtifactStore, read_stage_table

    windows = read_stage_table(ArtifactStore(str(explorer_root)), PARTITION, "feedback", kind="windows").to_pylist()
    r = client.get(f"/p/{PARTITION}/feedback")
    assert r.status_code == 200
    queries = r.text.split('<div class="card feedback-query">')[1:]
    assert len(queries) == len({(w["source"], w["qa_id"]) for w in windows}) == 5
    assert sum("no helpful window</span>" in q for q in queries) == manifest(explorer_root, "feedback")["drops"]["no_helpful_window"]
    scores = re.findall(r'<span class="tag (?:ok)?">(\d\.\d\d)</span>', r.text)
    assert sorted(map(float, scores)) == sorted(w["score"] for w in windows)
    assert "(no valid answer)" in r.text and "multiple_choice" in r.text and "free_form" in r.text


def test_evaluation_shows_the_results_table_and_the_report_plots(client, explorer_root):
    m = manifest(explorer_root, "evaluate")
    r = client.get(f"/p/{PARTITION}/evaluation")
    assert r.status_code == 200
    dims = demo_cfg(explorer_root).evaluate.dims
    table = re.search(r'<table class="results" data-dataset="nyxqa" data-split="train">(.*?)</table>', r.text, re.S).group(1)
    assert table.count("<code>rag_accuracy</code>") == len(dims) and "+0.200" in table
    plots = re.findall(r'<img class="plot" src="(/p/[^"]+\.png)"', r.text)
    assert plots and "report.md" in r.text and m["report"] in r.text
    png = client.get(plots[0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    for bad in ("report.md", "..%2F..%2Ffilter%2F_MANIFEST.json", "missing.png"):
        assert client.get(f"/p/{PARTITION}/report/{bad}").status_code == 404


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
    from nyx_tasks.artifacts import ArtifactStore, image_paths

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


# ----------------------------------------------------------------------------------- auth


def test_no_token_gets_401_or_the_login_page_never_data(anonymous, explorer_root):
    from nyx_tasks.artifacts import ArtifactStore, image_paths

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
