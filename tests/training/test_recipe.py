"""The recipe's knobs: per-subset caps and subset lists, hardest-first negatives,
per-source query instructions, the global batch from accumulation, DoRA with gaussian init."""

import pytest

from nyx_tasks.core.config import LoraSettings, TrainConfig, TrainSource
from nyx_tasks.inference import resolve_model
from nyx_tasks.training.collator import TripletCollator
from nyx_tasks.training.data import TrainingMix, select_rows, source_instruction
from nyx_tasks.training.deepspeed_config import zero2_config

INSTR = "Please retrieve the most relevant document to answer the question."


def row(qa_id, source, n_negs=5):
    return {"source": source, "qa_id": qa_id, "query": f"q {qa_id}", "query_image_ids": [], "pos_text": f"p {qa_id}",
            "pos_image_ids": [], "neg_texts": [f"{qa_id} n{i}" for i in range(n_negs)],
            "neg_image_ids": [[] for _ in range(n_negs)], "split": "train"}


def subsets(counts: dict[str, int]) -> list[dict]:
    rows = []
    for name, n in counts.items():
        rows += [row(f"{name}-{i}", name) for i in range(n)]
    return rows


def test_caps_apply_per_subset_first_or_seeded_and_select_exclude_pick_subsets():
    rows = subsets({"ImageNet_1K": 10, "MSCOCO": 3, "Classification": 4, "VQA": 7})
    first = select_rows(rows, TrainSource(name="m", max_rows_per_subset=5, cap_order="first"), seed=0)
    assert [r["qa_id"] for r in first] == [f"ImageNet_1K-{i}" for i in range(5)] + [f"MSCOCO-{i}" for i in range(3)] \
        + [f"Classification-{i}" for i in range(4)] + [f"VQA-{i}" for i in range(5)]
    sampled = select_rows(rows, TrainSource(name="m", max_rows_per_subset=5), seed=0)
    by = {}
    for r in sampled:
        by.setdefault(r["source"], []).append(r["qa_id"])
    assert {k: len(v) for k, v in by.items()} == {"ImageNet_1K": 5, "MSCOCO": 3, "Classification": 4, "VQA": 5}
    assert by["ImageNet_1K"] != [f"ImageNet_1K-{i}" for i in range(5)]  # a sample, not the head
    assert by["ImageNet_1K"] == sorted(by["ImageNet_1K"], key=lambda q: int(q.rsplit("-", 1)[1]))  # input order
    assert select_rows(rows, TrainSource(name="m", max_rows_per_subset=5), seed=0) == sampled  # seeded
    # the released code's synthetic mix: Retrieval and VQA only; exclude drops by subset too
    assert {r["source"] for r in select_rows(rows, TrainSource(name="s", select=["VQA", "MSCOCO"]), 0)} == \
        {"VQA", "MSCOCO"}
    assert {r["source"] for r in select_rows(rows, TrainSource(name="s", exclude=["Classification"]), 0)} == \
        {"ImageNet_1K", "MSCOCO", "VQA"}
    # per-subset caps come before the source's own cap
    both = select_rows(rows, TrainSource(name="m", max_rows_per_subset=2, max_rows=5, cap_order="first"), 0)
    assert [r["qa_id"] for r in both] == ["ImageNet_1K-0", "ImageNet_1K-1", "MSCOCO-0", "MSCOCO-1", "Classification-0"]
    with pytest.raises(ValueError, match="exclude=\\['Classification'\\]"):
        select_rows(subsets({"Classification": 2}), TrainSource(name="s", exclude=["Classification"]), 0)


def test_first_choice_takes_the_hardest_negatives_every_epoch():
    rows = {"s": [row(f"q{i}", "s") for i in range(10)]}
    first = TrainingMix(rows, TrainConfig(sources=[TrainSource(name="s")], negatives={"per_query": 2, "choice": "first"}), {})
    for e in range(3):
        for x in first.epoch(e):
            assert [n.text for n in x.negatives] == [f"{x.qa_id} n0", f"{x.qa_id} n1"]
    rnd = TrainingMix(rows, TrainConfig(sources=[TrainSource(name="s")], negatives={"per_query": 2}), {})
    assert any([n.text for n in x.negatives] != [f"{x.qa_id} n0", f"{x.qa_id} n1"] for x in rnd.epoch(0))


def test_each_source_gets_its_own_instruction_and_the_collator_uses_it():
    cfg = TrainConfig(sources=[TrainSource(name="nyxqa", kind="negatives"), TrainSource(name="text", kind="mine"),
                               TrainSource(name="mmeb", kind="dataset", dataset="mmeb-train"),
                               TrainSource(name="own", kind="dataset", dataset="x", query_instruction="Find it.")])
    got = {s.name: source_instruction(s, cfg) for s in cfg.sources}
    assert got == {"nyxqa": INSTR, "text": INSTR, "mmeb": "", "own": "Find it."}
    mix = TrainingMix({"nyxqa": [row("a", "nyxqa")], "mmeb": [row("b", "ImageNet_1K")]}, cfg, {})
    by_id = {x.qa_id: x for x in mix.epoch(0)}
    assert by_id["a"].instruction == INSTR and by_id["b"].instruction == ""

    class Processor:  # records the prompts the collator builds; tokenising is not under test here
        tokenizer = type("T", (), {"pad_token": "<eos>"})()

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "|".join(f"{m['role']}:{m['content'] if isinstance(m['content'], str) else 'user'}"
                            for m in messages)

        def __call__(self, text, **kw):
            self.seen = getattr(self, "seen", []) + [text]
            return {}

    proc = Processor()
    TripletCollator(proc, cfg, store=None)([by_id["a"], by_id["b"]])
    queries = proc.seen[0]
    assert queries[0].startswith(f"system:{INSTR}|") and not queries[1].startswith("system:")


def test_global_batch_sets_accumulation_for_the_gpus_the_run_has():
    cfg = TrainConfig(per_device_batch_size=16, num_gpus=4, global_batch_size=512)
    assert cfg.accumulation == 8
    assert zero2_config(cfg, 100, world_size=4)["train_batch_size"] == 512
    assert zero2_config(cfg, 100, world_size=4)["gradient_accumulation_steps"] == 8
    assert TrainConfig(per_device_batch_size=16, num_gpus=8, global_batch_size=512).accumulation == 4
    assert TrainConfig(per_device_batch_size=28, num_gpus=6, global_batch_size=1344).accumulation == 8
    assert TrainConfig(**cfg.model_dump(mode="json")).accumulation == 8  # the run spec round-trips
    with pytest.raises(ValueError, match="global_batch_size \\(512\\) is not a multiple"):
        TrainConfig(per_device_batch_size=16, num_gpus=6, global_batch_size=512)
    with pytest.raises(ValueError, match="gradient_accumulation_steps \\(4\\) contradicts"):
        TrainConfig(per_device_batch_size=16, num_gpus=4, global_batch_size=512, gradient_accumulation_steps=4)
    assert TrainConfig(gradient_accumulation_steps=3).accumulation == 3 and TrainConfig().accumulation == 1


def test_old_negatives_key_still_loads():
    assert TrainConfig(negatives_per_query=3).negatives.per_query == 3


def test_dora_with_gaussian_init_wraps_the_projections():
    import torch
    from transformers import AutoModelForImageTextToText

    from nyx_tasks.training.model import apply_lora

    def lora_a(model):
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])

    base = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    torch.manual_seed(0)
    dora = apply_lora(base, LoraSettings(r=8, alpha=64, dropout=0.1, use_dora=True, init="gaussian",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]))
    magnitudes = [n for n, p in dora.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert magnitudes  # DoRA's learned magnitude per output feature
    a = lora_a(dora)
    assert abs(a.std().item() - 1 / 8) < 0.02  # peft's gaussian init: N(0, 1/r)
    dora.unload()
    base = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    torch.manual_seed(0)
    plain = apply_lora(base, LoraSettings(r=8, alpha=64))
    assert not any("lora_magnitude_vector" in n for n, _ in plain.named_parameters())
    assert abs(lora_a(plain).std().item() - 1 / 8) > 0.02  # Kaiming-uniform is another spread


def test_vision_targets_wrap_the_vision_blocks_named_and_nothing_else():
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForImageTextToText

    from nyx_tasks.training.model import apply_lora

    base = AutoModelForImageTextToText.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    layers, blocks = base.config.get_text_config().num_hidden_layers, base.config.vision_config.depth
    model = apply_lora(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "down_proj"],
                                          vision_target_modules=["down_proj"]))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    vision = [n for n in wrapped if ".visual." in n]
    assert len(wrapped) == 2 * layers + blocks and len(vision) == blocks
    assert all(n.endswith("mlp.down_proj") for n in vision)  # not gate/up, not attention
    assert any(p.requires_grad for n, p in model.named_parameters() if ".visual." in n and "lora_" in n)
    model.unload()
    with pytest.raises(ValueError, match="vision_target_modules"):
        apply_lora(base, LoraSettings(vision_target_modules=["o_proj"]))  # a language-model name


def test_plain_prompts_are_the_released_codes_input_with_the_end_of_text_token():
    from transformers import AutoProcessor

    from nyx_tasks.core.config import load_config
    from nyx_tasks.embedding.nyx import VISION, nyx_prompt

    proc = AutoProcessor.from_pretrained(resolve_model("tiny:qwen2_5_vl"))
    eos = proc.tokenizer.pad_token
    q = nyx_prompt(proc, "What is <image> showing?", "query", INSTR, "<image>", "plain")
    assert q == f"{INSTR}\nWhat is {VISION} showing?{eos}"
    d = nyx_prompt(proc, "<image> a red square", "document", INSTR, "<image>", "plain")
    assert d == f"{VISION} a red square{eos}"  # documents carry no instruction
    assert nyx_prompt(proc, "q", "query", "", "<image>", "plain") == f"q{eos}"
    chat = nyx_prompt(proc, "What is <image> showing?", "query", INSTR, "<image>")
    assert chat != q and "<|im_start|>" in chat and chat.endswith(eos)
    # the embedders of feedback and evaluation read what training wrote
    cfg = load_config("paper")
    assert cfg.train_stage1.prompt_format == cfg.train_stage2.prompt_format == "plain"
    assert cfg.feedback.embedder.prompt_format == cfg.evaluate.embedder.prompt_format == "plain"
    with pytest.raises(ValueError, match="evaluate.embedder.prompt_format"):
        load_config("paper", ["evaluate.embedder.prompt_format=chat"])


def test_the_embedders_model_id_names_its_prompt_format():
    from nyx_tasks.core.config import EmbedderConfig
    from nyx_tasks.embedding.nyx import PROMPT_FORMAT, NyxEmbedder

    chat, plain = NyxEmbedder.__new__(NyxEmbedder), NyxEmbedder.__new__(NyxEmbedder)
    chat.cfg, plain.cfg = EmbedderConfig(kind="nyx"), EmbedderConfig(kind="nyx", prompt_format="plain")
    assert chat.prompt_format == PROMPT_FORMAT == "chat-v1"  # unchanged: cached chat embeddings stay valid
    assert plain.prompt_format == "plain-v1"
