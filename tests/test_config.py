import json

import pytest

from nyx_tasks.core.config import ConfigError, list_profiles, load_config, parse_override
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.sources.importers import NAME_RE
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


def test_file_roots_per_profile_and_the_removed_allow_file_urls():
    from nyx_tasks.core.paths import SAMPLE_CORPUS_DIR, resolve_pkgdata

    paper = load_config("paper")
    assert paper.ingest.fetch.file_roots == [] and paper.ingest.fetch.allowed_networks == []  # no local reads
    assert paper.ingest.fetch.deadline_s > paper.ingest.fetch.timeout_s
    (demo_root,) = load_config("demo").ingest.fetch.file_roots  # the bundled sample's images, nothing else
    assert resolve_pkgdata(demo_root) == str(SAMPLE_CORPUS_DIR / "images")
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["ingest.fetch.allow_file_urls=true"])
    assert "allow_file_urls was removed" in str(err.value) and "file_roots" in str(err.value)
    assert "\n" not in str(err.value)
    for bad in ("ingest.fetch.file_roots=[relative/dir]", "ingest.source.image_root=/data"):  # sample: no image_root
        with pytest.raises(ConfigError, match="file root 'relative/dir' must be an absolute|image_root is for kind=files"):
            load_config("demo", [bad])


def test_overrides_are_typed_and_deep_merged():
    cfg = load_config("demo", ["ingest.every_nth=7", "ingest.fetch.timeout_s=1.5", "partition=p1"])
    assert cfg.ingest.every_nth == 7 and cfg.ingest.fetch.timeout_s == 1.5 and cfg.partition == "p1"
    assert cfg.ingest.fetch.concurrency == load_config("demo").ingest.fetch.concurrency  # untouched sibling
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}


def test_a_key_ending_in_plus_appends_to_the_list(tmp_path):
    """`key+: [...]` appends to the list under `key` (a profile that extends another, or an override);
    without a list under the key it starts one; a non-list on either side is refused by name."""
    demo = load_config("demo")
    extra = "{name: extra, questions: [/q.jsonl], corpus: [/c.jsonl]}"
    cfg = load_config("demo", [f"mine.text_sets+=[{extra}]", "evaluate.report_notes+=[one more]"])
    assert cfg.mine.text_sets[:-1] == demo.mine.text_sets and cfg.mine.text_sets[-1].name == "extra"
    assert cfg.evaluate.report_notes == [*demo.evaluate.report_notes, "one more"]
    (tmp_path / "base.yaml").write_text("partition: b\nfeedback: {sources: [a]}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nfeedback: {sources+: [b]}\nevaluate: {report_notes+: [n]}\n")
    child = load_config(str(tmp_path / "child.yaml"))
    assert (child.profile, child.feedback.sources, child.evaluate.report_notes) == ("child", ["a", "b"], ["n"])
    (tmp_path / "alone.yaml").write_text("feedback: {sources+: [c]}\n")  # extends nothing: a plain list
    assert load_config(str(tmp_path / "alone.yaml")).feedback.sources == ["c"]
    with pytest.raises(ConfigError, match=r"partition\+: appends a list to a list, got list onto str"):
        load_config("demo", ["partition+=[x]"])
    with pytest.raises(ConfigError, match=r"sources\+: appends a list to a list, got str onto list"):
        load_config("demo", ["feedback.sources+=x"])


@pytest.mark.parametrize("bad", ["ingest.every_nth=0", "ingest.evry_nth=3", "partition=../etc",
                                 "sample.text_only_frac=0.9", "ingest.fetch.allowed_networks=[nonsense]"])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [bad])
    assert bad.split("=")[0].split(".")[-1] in str(err.value) or "frac" in str(err.value)


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


READERS = ("mine.embedder", "mine.text_embedder", "train_stage1", "train_stage2", "feedback.embedder",
           "evaluate.embedder")


def _at(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_every_reader_takes_the_chunk_stages_image_placeholder(profile):
    cfg = load_config(profile)
    assert {_at(cfg, r).image_placeholder for r in READERS} == {cfg.chunk.image_placeholder}
    moved = load_config(profile, ["chunk.image_placeholder=<img>"])  # one field moves every reader
    assert {_at(moved, r).image_placeholder for r in READERS} == {"<img>"}
    same = load_config(profile, [f"feedback.embedder.image_placeholder={cfg.chunk.image_placeholder}"])
    assert same.feedback.embedder.image_placeholder == cfg.chunk.image_placeholder  # agreeing is not an error
    instr = load_config(profile, ["train_stage1.query_instruction=Find it."])
    assert {instr.train_stage2.query_instruction, instr.feedback.embedder.query_instruction,
            instr.evaluate.embedder.query_instruction} == {"Find it."}


@pytest.mark.parametrize(("overrides", "fields"), [
    (["feedback.embedder.image_placeholder=<image>"], ("feedback.embedder.image_placeholder",
                                                        "chunk.image_placeholder")),
    (["evaluate.embedder.query_instruction=Other."], ("evaluate.embedder.query_instruction",
                                                      "train_stage1.query_instruction")),
    (["mine.range_min=18"], ("mine.num_negatives", "mine.range_max", "mine.range_min")),
    (["feedback.window_size=40"], ("feedback.window_size", "feedback.top_k")),
    (["train_stage1.negatives.per_query=6"], ("train_stage1.negatives.per_query", "mine.num_negatives")),
    (["train_stage2.negatives.per_query=4"], ("train_stage2.negatives.per_query", "feedback.num_negatives")),
    (["evaluate.dims=[4096, 2048]"], ("evaluate.dims", "train_stage1.loss.dims")),
    (["feedback.embedder.dim=300"], ("feedback.embedder.dim", "train_stage1.loss.dims")),
])
def test_a_contradiction_is_refused_in_one_line_naming_the_fields(overrides, fields):
    with pytest.raises(ValueError) as err:
        load_config("paper", overrides)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fields), message


# paper-shape = paper + exactly these overrides (configs/paper-shape.yaml says why, line by line):
# weights -> tiny models of the same families, GPU engines -> hf on the CPU, sizes, and inputs.
PAPER_SHAPE_OVERRIDES = {
    "ingest.source.kind", "ingest.source.paths", "ingest.source.image_root", "ingest.every_nth",
    "ingest.fetch.file_roots", "chunk.tokenizer.name_or_path", "sample.size",
    "synthesize.generation.backend", "synthesize.generation.model", "synthesize.generation.temperature",
    "synthesize.generation.compact_json", "filter.max_answer_words", "filter.eval_per_group",
    "mine.embedder.model", "mine.text_embedder.model", "mine.text_sets",
    "train_stage1.base_model", "train_stage1.sources", "train_stage1.max_steps", "train_stage1.logging_steps", "train_stage1.num_gpus",
    "train_stage1.per_device_batch_size", "train_stage1.global_batch_size",
    "feedback.generation.backend", "feedback.generation.model", "feedback.generation.temperature",
    "feedback.generation.top_p", "evaluate.generation.max_tokens",
    "feedback.generation.compact_json", "feedback.top_k", "feedback.max_queries_per_source",
    "train_stage2.base_model", "train_stage2.sources", "train_stage2.max_steps", "train_stage2.logging_steps", "train_stage2.num_gpus",
    "train_stage2.per_device_batch_size", "train_stage2.global_batch_size",
    "evaluate.generation.backend", "evaluate.generation.model", "evaluate.generation.compact_json",
    "evaluate.text_sets",
}


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_paper_shape_is_the_paper_profile_plus_exactly_the_documented_overrides():
    import yaml

    from tests.conftest import REPO

    text = (REPO / "configs/paper-shape.yaml").read_text()
    raw = yaml.safe_load(text)
    assert raw.pop("extends") == "paper"
    assert {path for path, _ in _leaves(raw)} == PAPER_SHAPE_OVERRIDES
    for line in text.splitlines():  # every override line gives its reason
        if line.strip() and not line.lstrip().startswith(("#", "-")) and not line.rstrip().endswith(":") \
                and not line.startswith("extends"):
            assert "#" in line, f"no reason given: {line!r}"
    shape, paper = load_config("paper-shape"), load_config("paper")
    flat_shape = dict(_leaves(shape.model_dump(mode="json")))
    flat_paper = dict(_leaves(paper.model_dump(mode="json")))
    differ = {k for k in flat_paper if flat_shape.get(k) != flat_paper[k]} - {"profile"}
    assert differ == PAPER_SHAPE_OVERRIDES  # nothing else moved (placeholders, prompts, rules, loss, LoRA, ...)


BAD_DATASETS = ["../../elsewhere", "..", "/etc/passwd", "a/b", "a\\b", "~/x", ".hidden", "s3://bucket/x", ""]
GOOD_DATASETS = ["mmeb", "mme5-synthetic", "mmeb_v1.2", "A0"]


def dataset_source(name: str) -> str:
    return f"train_stage1.sources=[{{name: imported, kind: dataset, dataset: {json.dumps(name)}}}]"


@pytest.mark.parametrize("bad", BAD_DATASETS)
def test_a_train_sources_dataset_must_be_a_plain_name(bad):
    """`dataset` names <root>/datasets/<name>: a path (`../../elsewhere`) would read a manifest
    outside the root, so it is refused when the config loads, naming the field and the value."""
    with pytest.raises(ConfigError) as err:
        load_config("demo", [dataset_source(bad)])
    assert "train_stage1.sources.0.dataset" in str(err.value) and "not a plain dataset name" in str(err.value)
    assert repr(bad) in str(err.value)


def test_plain_dataset_names_load_and_match_what_nyx_import_accepts():
    for name in GOOD_DATASETS:
        assert load_config("demo", [dataset_source(name)]).train_stage1.sources[0].dataset == name
    assert all(NAME_RE.match(n) for n in GOOD_DATASETS) and not any(NAME_RE.match(n) for n in BAD_DATASETS)
