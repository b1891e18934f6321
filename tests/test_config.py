import pytest
from pydantic import ValidationError

from nyx_tasks.config import list_profiles, load_config, parse_override, stable_hash
from nyx_tasks.stages import STAGE_NAMES, get_stage


def test_profiles_load_and_paper_names_the_papers_settings():
    assert {"demo", "paper"} <= set(list_profiles())
    paper = load_config("paper")
    assert paper.ingest.every_nth == 5000
    assert paper.ingest.source.kind == "hf"
    assert paper.ingest.source.hf_dataset == "HuggingFaceM4/OBELICS"
    assert paper.chunk.tokenizer.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (paper.chunk.chunk_tokens, paper.chunk.max_images, paper.sample.size) == (200, 5, 10_000)
    assert paper.sample.text_only_frac == pytest.approx(0.6329)
    assert paper.sample.multi_image_frac == pytest.approx(1 - 0.6329 - 0.2985)


def test_overrides_are_typed_and_deep_merged():
    cfg = load_config("demo", ["ingest.every_nth=7", "ingest.fetch.timeout_s=1.5", "partition=p1"])
    assert cfg.ingest.every_nth == 7 and cfg.ingest.fetch.timeout_s == 1.5 and cfg.partition == "p1"
    assert cfg.ingest.fetch.concurrency == load_config("demo").ingest.fetch.concurrency  # untouched sibling
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}


@pytest.mark.parametrize("bad", ["ingest.every_nth=0", "ingest.evry_nth=3", "partition=../etc",
                                 "sample.text_only_frac=0.9", "ingest.fetch.allowed_networks=[nonsense]"])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValidationError):
        load_config("demo", [bad])


def test_missing_profile_names_the_available_ones():
    with pytest.raises(FileNotFoundError, match="available"):
        load_config("nope")


def test_stage_config_hash_tracks_only_that_stages_config():
    base, other = load_config("demo"), load_config("demo", ["sample.size=7"])
    def h(cfg, name):
        st = get_stage(name)
        return stable_hash({"stage": name, "version": st.version, "config": st.config_payload(cfg)})
    assert h(base, "sample") != h(other, "sample")
    assert all(h(base, s) == h(other, s) for s in STAGE_NAMES if s != "sample")


def test_execution_only_settings_do_not_change_the_hash():
    def h(cfg, name):
        st = get_stage(name)
        return stable_hash(st.config_payload(cfg))
    base = load_config("demo")
    tuned = load_config("demo", ["ingest.batch_docs=3", "ingest.fetch.concurrency=2", "chunk.batch_docs=5"])
    assert h(base, "ingest") == h(tuned, "ingest") and h(base, "chunk") == h(tuned, "chunk")
    assert h(base, "ingest") != h(load_config("demo", ["ingest.fetch.max_bytes=10"]), "ingest")
