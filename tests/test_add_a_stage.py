"""DESIGN's "To add a stage" holds: a stage written as one new file in `nyx_tasks/stages/` plus
one line in the registry gets its `nyx` command, its task group in `nyxqa_to_model` (with the
executor facts it declares: here a GPU route), its backfill DAG, the
explorer's words for its counts, and runs under the runner, with no other file changed.

The test copies the package, adds a toy stage exactly that way, and asks a fresh process (the
DAG files and the explorer read the registry when they are imported)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

TOY = '''"""A toy stage: one greeting row per shard."""

from nyx_tasks.runner import ShardOutputs, Stage, StageContext


class HelloStage(Stage):
    """Write a greeting (tests/test_add_a_stage.py)."""

    name = "hello"
    config_key = "sample"  # shares the sample section's settings (a stage with its own adds one to core/config.py)
    doc = "Write one greeting per shard."
    gpu_routed = True
    flow = {"in": "greetings asked for", "out": "greetings written", "too_shy": "greetings left unsaid"}

    def gpus(self, cfg) -> int:
        return 1

    def plan_shards(self, ctx: StageContext) -> list:
        return [{"shard": 0, "name": "greetings"}]

    def process(self, ctx: StageContext, shard, out: ShardOutputs) -> None:
        out.rows_in = 2
        out.write([{"doc_id": "hello", "source": "toy#0", "url": None, "texts": ["hello"], "image_ids": [],
                    "image_urls": [], "n_images": 0, "metadata_json": "[]", "general_metadata_json": "{}"}])
        out.drops.drop("too_shy", "one greeting stayed unsaid")


STAGE = HelloStage()
'''

PROBE = r'''
import json, logging, sys
from pathlib import Path

dags, plugins, root = sys.argv[1:4]
sys.path[:0] = [dags, plugins]
from airflow.dag_processing.dagbag import DagBag
from typer.testing import CliRunner

from nyx_tasks.cli import app
from nyx_tasks.stages import STAGE_NAMES

bag = DagBag(dag_folder=dags)
if bag.import_errors:
    sys.exit("import errors: " + json.dumps(bag.import_errors)[-3000:])
dag = bag.dags["nyxqa_to_model"]
group = sorted(t.split(".", 1)[1] for t in dag.task_ids if t.startswith("hello."))
if "commit" not in group:
    sys.exit(f"no hello group: {sorted(dag.task_ids)}")
commit = dag.get_task("hello.commit")
from nyx_explorer.data import stage_flow

cli = CliRunner()
run = cli.invoke(app, ["hello", "--root", root, "--partition", "toy"])
print(json.dumps({
    "names": list(STAGE_NAMES), "import_errors": {k: v[-300:] for k, v in bag.import_errors.items()},
    "group": group, "after": sorted(dag.get_task("hello.plan").upstream_task_ids),
    "commit_outlets": [getattr(o, "name", str(o)) for o in commit.outlets],
    "backfill": "nyx_stage_hello" in bag.dags, "doc": dag.doc_md,
    "help": cli.invoke(app, ["--help"]).output, "flow": stage_flow("hello"),
    "run_code": run.exit_code, "run": run.output,
}))
'''


def test_a_stage_added_as_one_file_and_one_registry_line_reaches_every_builder(tmp_path):
    pkg = tmp_path / "nyx_tasks"
    shutil.copytree(REPO / "nyx_tasks", pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (pkg / "data").symlink_to(REPO / "nyx_tasks" / "data")
    (pkg / "stages" / "hello.py").write_text(TOY)
    registry = pkg / "stages" / "__init__.py"
    text = registry.read_text()
    anchor = '    "sample": "nyx_tasks.stages.sample",\n'
    assert anchor in text
    registry.write_text(text.replace(anchor, anchor + '    "hello": "nyx_tasks.stages.hello",\n'))

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_HOME": str(tmp_path / "airflow")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags"), str(REPO / "plugins"),
                          str(tmp_path / "root")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])

    assert not got["import_errors"], got["import_errors"]
    names = got["names"]
    assert names[names.index("sample") + 1] == "hello"  # the registry's order is the pipeline's
    # its task group, after sample's, with the GPU route its declaration asks for
    assert {"plan", "route", "shard", "commit"} <= set(got["group"]), got["group"]
    assert any(t.startswith("shard_gpu") for t in got["group"]), got["group"]
    assert got["after"] == ["sample.commit"], got["after"]
    assert got["commit_outlets"] == ["nyx_hello_commits"]  # its asset events go through its commit's alias
    assert got["backfill"]
    assert "| hello | Write one greeting per shard. |" in got["doc"]
    assert "hello" in got["help"]
    assert got["flow"]["in"] == "greetings asked for" and got["flow"]["too_shy"] == "greetings left unsaid"
    # and it runs: the runner writes its snapshot and the manifest counts the named drop
    assert got["run_code"] == 0, got["run"]
    manifest = json.loads((tmp_path / "root/partitions/toy/hello/_MANIFEST.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["drops"]) == (2, 1, {"too_shy": 1})
