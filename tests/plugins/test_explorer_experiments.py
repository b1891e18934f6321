"""The explorer links the experiment reports (reports/experiments/<name>/, nyx_experiments): a list
page, each report rendered with its plots served by the explorer, a link in every page's header.
Planted or broken records (a symlinked experiment.json or folder, a record without variants, an
oversized report) are shown as broken or refused, never read from outside the root, never a 500."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.plugins.test_explorer_app import airflow_db, auth_manager, token  # noqa: F401 (fixtures)

if str(REPO / "plugins") not in sys.path:  # Airflow puts the plugins folder on sys.path in its processes
    sys.path.insert(0, str(REPO / "plugins"))
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
def client(make_cfg, auth_manager):  # noqa: F811
    from fastapi.testclient import TestClient
    from nyx_explorer.app import create_app

    from nyx_tasks import experiments as ex
    from nyx_tasks.store.artifacts import ArtifactStore
    from tests.test_experiments import STAGES

    base = make_cfg("partition=exp")
    store = ArtifactStore(base.artifact_root())
    variants = ex.expand({"evaluate.bootstrap": [100, 300]})
    ex.run_base(base, ex.check_variants(base, variants, STAGES), store, stages=STAGES)
    records = [ex.run_variant(base, "cmp", v, store, stages=STAGES) for v in variants]
    ex.write_report(store, "cmp", "exp", records, stage="late")
    c = TestClient(create_app(base.artifact_root()))
    c.cookies.set("_token", token(auth_manager))
    return c


def test_experiment_reports_are_listed_linked_and_rendered_with_their_plots(client):
    home = client.get("/")
    assert home.status_code == 200 and 'href="/experiments"' in home.text  # the header links the list
    listing = client.get("/experiments")
    assert listing.status_code == 200
    assert 'href="/experiments/cmp"' in listing.text and 'href="/p/exp"' in listing.text
    assert 'href="/p/exp--bootstrap%3D100"' in listing.text  # each variant's partition
    page = client.get("/experiments/cmp")
    assert page.status_code == 200 and "Experiment cmp" in page.text
    assert "bootstrap=300" in page.text and "<table>" in page.text
    assert 'src="/experiments/cmp/recall_1.png"' in page.text
    png = client.get("/experiments/cmp/recall_1.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/experiments/nope").status_code == 404
    assert client.get("/experiments/cmp/results.csv").status_code == 404  # only the report's plots are served
    assert client.get("/experiments/..%2Fcmp").status_code == 404
    from fastapi.testclient import TestClient

    anonymous = TestClient(client.app)  # the same app without the login cookie: nothing of it is shown
    for url in ("/experiments", "/experiments/cmp", "/experiments/cmp/recall_1.png"):
        r = anonymous.get(url, follow_redirects=False)
        assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}, url


SECRET = "SECRET-OUTSIDE-THE-ROOT"


def root_of(client) -> Path:
    return Path(client.app.state.root)


def row(page: str, name: str) -> str:
    import re

    return re.search(rf'<tr data-experiment="{name}"[^>]*>(.*?)</tr>', page, re.S).group(1)


def test_a_symlinked_experiment_record_or_folder_is_never_read(client, tmp_path):
    """An experiment.json that is a symlink, or an experiment folder that is one, is not read: the
    list shows each as broken with the reason (a symlink), the outside record's base and variants
    never appear, and the symlinked folder's report answers 404."""
    reports = root_of(client) / "reports" / "experiments"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "experiment.json").write_text(json.dumps({"base": SECRET, "variants": [{"name": SECRET + "-v"}]}))
    (outside / "report.md").write_text(f"# {SECRET}\n")
    own = reports / "cmp" / "experiment.json"
    own.unlink()
    own.symlink_to(outside / "experiment.json")
    (reports / "evil").symlink_to(outside, target_is_directory=True)

    listing = client.get("/experiments")
    assert listing.status_code == 200 and SECRET not in listing.text
    assert "reports/experiments/cmp/experiment.json: a symlink" in row(listing.text, "cmp")
    assert 'href="/experiments/cmp"' in listing.text  # its report.md is still a file of the root
    evil = row(listing.text, "evil")
    assert "under a symlink (reports/experiments/evil)" in evil and 'href="/experiments/evil"' not in listing.text
    r = client.get("/experiments/evil")
    assert r.status_code == 404 and SECRET not in r.text


def test_an_experiment_record_without_variants_is_shown_broken(client):
    """A record without `variants` (or not JSON at all) used to fail the whole list with a 500: it
    is listed as broken with the reason, the other experiments as before; `experiments()` itself
    marks it instead of raising."""
    from nyx_tasks import experiments as ex
    from nyx_tasks.store.artifacts import ArtifactStore

    reports = root_of(client) / "reports" / "experiments"
    for name, record in (("novariants", json.dumps({"experiment": "novariants", "base": "exp"})),
                         ("truncated", '{"experiment": "trunc')):
        shutil.copytree(reports / "cmp", reports / name)
        (reports / name / "experiment.json").write_text(record)

    listing = client.get("/experiments")
    assert listing.status_code == 200
    assert "reports/experiments/novariants/experiment.json: no list of named `variants`" in row(listing.text,
                                                                                                 "novariants")
    assert "reports/experiments/truncated/experiment.json: not valid JSON" in row(listing.text, "truncated")
    assert 'href="/p/exp--bootstrap%3D100"' in row(listing.text, "cmp")  # the good one as before
    listed = {e["name"]: e for e in ex.experiments(ArtifactStore(str(root_of(client))))}
    assert listed["novariants"]["broken"] == "reports/experiments/novariants/experiment.json: no list of named `variants`"
    assert listed["truncated"]["broken"].startswith("reports/experiments/truncated/experiment.json: ")
    assert listed["cmp"]["variants"] == ["bootstrap=100", "bootstrap=300"] and "broken" not in listed["cmp"]


def test_an_oversized_experiment_report_is_named_not_rendered(client, monkeypatch):
    """A report.md over `REPORT_CAP` (small here) is neither read nor rendered: its page (200) says
    which file and why."""
    from nyx_explorer import data

    monkeypatch.setattr(data, "REPORT_CAP", 64)
    size = (root_of(client) / "reports" / "experiments" / "cmp" / "report.md").stat().st_size
    page = client.get("/experiments/cmp")
    assert page.status_code == 200 and 'id="report"' not in page.text and "<table>" not in page.text
    assert f"reports/experiments/cmp/report.md: {size:,} bytes, over the explorer&#39;s cap of 64 bytes" in page.text
