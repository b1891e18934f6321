"""`nyx import`: MMEB-train and mmE5-synthetic layouts -> TRIPLETS + IMAGES under datasets/<name>/."""

import hashlib
import json

import pytest

from nyx_tasks.sources.importers import ImportFailed, as_list, import_dataset
from nyx_tasks.store.artifacts import ArtifactStore
from tests.conftest import png_bytes, write_jsonl

RED, BLUE, GREEN = png_bytes(color=(200, 30, 30)), png_bytes(color=(30, 30, 200)), png_bytes(20, 20, (30, 200, 30))


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    for rel, data in {"ImageNet_1K/Train/a.jpg": RED, "MSCOCO_t2i/Train/b.png": BLUE,
                      "VisDial/Train/c.png": GREEN, "broken/x.png": b"not an image"}.items():
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / rel).write_bytes(data)
    return root


# Rows as MMEB-train ships them: one image per side at most, "" for none, <|image_1|> in the text.
MMEB_ROWS = [
    {"qry": "<|image_1|>\nRepresent the given image for classification\n",
     "qry_image_path": "images/ImageNet_1K/Train/a.jpg", "pos_text": "plane", "pos_image_path": "",
     "neg_text": "", "neg_image_path": ""},
    {"qry": "Find me an everyday image that matches the given caption: a small dog.\n", "qry_image_path": "",
     "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image_path": "images/MSCOCO_t2i/Train/b.png",
     "neg_text": "", "neg_image_path": "images/VisDial/Train/c.png"},  # an image-only negative
    {"qry": "<|image_1|>\nRepresent the given image\n", "qry_image_path": "images/ImageNet_1K/Train/nope.jpg",
     "pos_text": "dog", "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
    {"qry": "", "qry_image_path": "", "pos_text": "cat", "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
    {"qry": "<|image_1|>\nWhat is it?", "qry_image_path": "images/broken/x.png", "pos_text": "x",
     "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
    {"qry": "a question", "qry_image_path": "", "pos_text": "", "pos_image_path": "", "neg_text": "",
     "neg_image_path": ""},
    # WebQA's quirk: a token in the query but no image path
    {"qry": "<|image_1|>\nFind a Wikipedia image that answers this question: Which body part?\n",
     "qry_image_path": "", "pos_text": "<|image_1|>\nRepresent the given Wikipedia image.\n",
     "pos_image_path": "images/MSCOCO_t2i/Train/b.png"},
]


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_dataset(store, name):
    m = store.read_json(f"datasets/{name}/_MANIFEST.json")
    rows = [r for o in m["outputs"]["part"] for b in store.read_parquet(o["path"]) for r in b.to_pylist()]
    imgs = [r for o in m["outputs"]["images"] for b in store.read_parquet(o["path"]) for r in b.to_pylist()]
    return m, rows, imgs


def test_mmeb_rows_placeholders_images_and_named_drops(tmp_path, image_root):
    (tmp_path / "ImageNet_1K").mkdir()
    src = write_parquet(tmp_path / "ImageNet_1K" / "original-00000-of-00001.parquet", MMEB_ROWS)
    store = ArtifactStore(str(tmp_path / "art"))
    m = import_dataset("mmeb", [str(src)], "mmeb_small", store, [str(image_root)])
    assert m["rows_in"] == 7 and m["rows_out"] == 3
    assert m["drops"] == {"missing_image_file": 1, "empty_query": 1, "unreadable_image": 1, "empty_positive": 1}
    assert m["extra"] == {"image_tokens_added": 1, "image_tokens_removed": 1}
    _, rows, imgs = read_dataset(store, "mmeb_small")
    cls, t2i, webqa = rows
    assert cls["query"] == "<image>\nRepresent the given image for classification"
    assert cls["query_image_ids"] == [sha(RED)] and cls["pos_text"] == "plane" and cls["pos_image_ids"] == []
    assert cls["neg_texts"] == [] and cls["modality"] == "single_image" and cls["split"] == "train"
    # `source` is the subset: the folder holding the file, as MMEB-train stores its subsets
    assert cls["qa_id"] == "mmeb_small-00000000" and cls["source"] == "ImageNet_1K"
    assert m["subsets"] == {"ImageNet_1K": 3}
    assert cls["miner_id"] == cls["miner_hash"] == "imported:mmeb" and cls["answers"] == [] and cls["answer"] == ""
    assert cls["pos_score"] == 0.0 and cls["pos_rank"] == -1
    assert t2i["pos_text"] == "<image>\nRepresent the given image." and t2i["pos_image_ids"] == [sha(BLUE)]
    assert t2i["neg_texts"] == ["<image>"] and t2i["neg_image_ids"] == [[sha(GREEN)]]
    assert t2i["neg_scores"] == [0.0] and t2i["neg_ranks"] == [-1]
    assert webqa["query"] == "Find a Wikipedia image that answers this question: Which body part?"
    assert webqa["query_image_ids"] == []
    assert not any("<|image" in r["query"] + r["pos_text"] + "".join(r["neg_texts"]) for r in rows)
    # each image stored once under its sha256, listed once in the images table
    assert sorted(i["image_id"] for i in imgs) == sorted({sha(RED), sha(BLUE), sha(GREEN)})
    for i in imgs:
        assert store.sha256(i["path"]) == i["image_id"] and i["width"] > 0 and i["mime"] == "image/png"
    assert len(m["output_hash"]) == 32 and m["outputs"]["part"][0]["path"] == "datasets/mmeb_small/part-00000.parquet"


def test_mme5_literal_lists_multi_image_and_jsonl(tmp_path, image_root):
    rows = [
        {"qry": "<|image_1|>\nRepresent the given image with the question: which colour?",
         "qry_image_path": "images/ImageNet_1K/Train/a.jpg", "pos_text": "red", "pos_image_path": "",
         "neg_text": "['blue', 'green', '']", "neg_image_path": "['', '', '']"},
        {"qry": "Compare <|image_1|> and <|image_2|>", "qry_image_path":
            "['images/ImageNet_1K/Train/a.jpg', 'images/MSCOCO_t2i/Train/b.png']",
         "pos_text": "they differ", "pos_image_path": "None",
         "neg_text": "['<|image_1|> a green one', 'missing']",
         "neg_image_path": "['images/VisDial/Train/c.png', 'images/nope.png']"},
    ]
    (tmp_path / "Retrieval").mkdir()
    src = write_jsonl(tmp_path / "Retrieval" / "train.jsonl", rows)
    store = ArtifactStore(str(tmp_path / "art"))
    m = import_dataset("mme5", [str(src)], "mme5_syn", store, [str(tmp_path / "elsewhere"), str(image_root)],
                       placeholder="<img>")
    assert m["rows_out"] == 2 and m["drops"] == {}
    assert m["extra"] == {"negatives_skipped_missing_image_file": 1}
    _, (a, b), _ = read_dataset(store, "mme5_syn")
    assert a["neg_texts"] == ["blue", "green"] and a["neg_image_ids"] == [[], []]  # "" is no negative
    assert b["query"] == "Compare <img> and <img>" and b["query_image_ids"] == [sha(RED), sha(BLUE)]
    assert b["modality"] == "multi_image" and b["miner_id"] == "imported:mme5"
    assert b["neg_texts"] == ["<img> a green one"] and b["neg_image_ids"] == [[sha(GREEN)]]
    assert len(set(a["neg_chunk_ids"])) == 2 and a["pos_chunk_id"].startswith("doc:")


def test_list_literals():
    assert as_list("") == [] and as_list(None) == [] and as_list("None") == []
    assert as_list("['a', 'b']") == ["a", "b"] and as_list(["x"]) == ["x"]
    assert as_list("a cat") == ["a cat"] and as_list("[not a list") == ["[not a list"]


def test_unusable_input_is_a_clear_error(tmp_path, image_root):
    store = ArtifactStore(str(tmp_path / "art"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ImportFailed, match="no rows"):
        import_dataset("mmeb", [str(empty)], "x", store, [str(image_root)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"qry": "", "pos_text": "a"}])
    with pytest.raises(ImportFailed, match="all dropped.*empty_query"):
        import_dataset("mmeb", [str(bad)], "x", store, [str(image_root)])
    assert not store.exists("datasets/x/_MANIFEST.json") and not store.exists("datasets/x/part-00000.parquet")
    with pytest.raises(FileNotFoundError):
        import_dataset("mmeb", [str(tmp_path / "nope-*.parquet")], "x", store)
    with pytest.raises(ValueError, match="dataset name"):
        import_dataset("mmeb", [str(empty)], "../evil", store)


def test_cli_import(tmp_path, image_root):
    from tests.test_cli import nyx

    src = write_parquet(tmp_path / "train.parquet", MMEB_ROWS[:2])
    root = tmp_path / "art"
    r = nyx("import", "mmeb", str(src), "--name", "mmeb_cli", "--image-root", str(image_root), "--root", str(root),
            "--placeholder", "<pic>")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["rows_out"] == 2 and out["dataset"] == "mmeb_cli"
    _, rows, _ = read_dataset(ArtifactStore(str(root)), "mmeb_cli")
    assert rows[0]["query"].startswith("<pic>\n")
    r = nyx("import", "mme5", str(tmp_path / "missing.parquet"), "--name", "y", "--root", str(root))
    assert r.returncode == 1 and "matches no file" in r.stderr and "Traceback" not in r.stderr


def test_imported_text_that_spells_special_tokens_stays_text(tmp_path, image_root):
    """The dataset's own image token (`<|image_N|>`, or the placeholder itself) becomes the placeholder;
    the text around it is text: a spelled `<|im_start|>`, `<|image_pad|>` or `<|vision_start|>` in it
    is escaped (`core.text.plain`), so it becomes neither a chat turn nor a special token id."""
    from nyx_tasks.core.text import JOINER

    (tmp_path / "ImageNet_1K").mkdir()
    rows = [{"qry": "<|image_1|>\nWhat does <|image_pad|> mean in <|im_start|>user prompts?\n",
             "qry_image_path": "images/ImageNet_1K/Train/a.jpg", "pos_text": "Qwen opens an image with <|vision_start|>.",
             "pos_image_path": "", "neg_text": "", "neg_image_path": ""}]
    src = write_parquet(tmp_path / "ImageNet_1K" / "original-00000-of-00001.parquet", rows)
    store = ArtifactStore(str(tmp_path / "art"))
    m = import_dataset("mmeb", [str(src)], "tokens", store, [str(image_root)])
    assert m["rows_out"] == 1
    (row,) = read_dataset(store, "tokens")[1]
    assert row["query"] == f"<image>\nWhat does <{JOINER}|image_pad|> mean in <{JOINER}|im_start|>user prompts?"
    assert row["query"].count("<image>") == len(row["query_image_ids"]) == 1  # the one real image slot
    assert row["pos_text"] == f"Qwen opens an image with <{JOINER}|vision_start|>." and row["pos_image_ids"] == []
