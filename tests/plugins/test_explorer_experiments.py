"""The explorer links the experiment reports (reports/experiments/<name>/, nyx_experiments): a list
page, each report rendered with its plots served by the explorer, a link in every page's header."""

from __future__ import annotations

import sys

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
