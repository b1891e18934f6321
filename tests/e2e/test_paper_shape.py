"""The paper profile in shape: `airflow dags test nyxqa_to_model` on `paper-shape` (paper.yaml
with tiny random-weight models of the paper's families and CPU sizes), after importing small
MMEB-train and mmE5-synthetic sets with `nyx import` as a paper user would. From the manifests:
images flow through every stage, and no stage drops rows for a placeholder mismatch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nyx_tasks.core.config import load_config
from nyx_tasks.stages import STAGE_NAMES
from tests.conftest import REPO, png_bytes, write_jsonl

pytestmark = pytest.mark.airflow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
NYX = str(Path(sys.executable).with_name("nyx"))


def public_mix(src: Path) -> dict[str, tuple[str, list[str]]]:
    """Small sets in MMEB-train's and mmE5-synthetic's own layouts (their `<|image_1|>` tokens,
    image paths under an image root), for `nyx import`."""
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30), (120, 30, 160), (30, 160, 160)]
    for i, c in enumerate(colours):
        (src / "images" / "train").mkdir(parents=True, exist_ok=True)
        (src / "images" / "train" / f"{i}.png").write_bytes(png_bytes(40 + 8 * i, 32, c))
    mmeb = [{"qry": "<|image_1|>\nRepresent the given image for classification\n",
             "qry_image_path": f"images/train/{i}.png", "pos_text": f"colour {i}", "pos_image_path": "",
             "neg_text": f"colour {(i + 1) % 6}", "neg_image_path": ""} for i in range(6)]
    mmeb += [{"qry": f"Find an image of colour {i}.", "qry_image_path": "",
              "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image_path": f"images/train/{i}.png",
              "neg_text": "<|image_1|>\nRepresent the given image.\n",
              "neg_image_path": f"images/train/{(i + 2) % 6}.png"} for i in range(6)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    # each subset in its own folder, as the public releases store them (the folder names the subset)
    files = {"mmeb": [], "mme5": []}
    for subset, rows in (("ImageNet_1K", mmeb[:6]), ("MSCOCO_t2i", mmeb[6:]), ("NotInThePaperMix", mmeb[:2])):
        (src / "mmeb" / subset).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), src / "mmeb" / subset / "original-00000-of-00001.parquet")
        files["mmeb"].append(str(src / "mmeb" / subset / "original-00000-of-00001.parquet"))
    mme5 = [{"qry": f"Compare <|image_1|> and <|image_2|>: which is colour {i}?",
             "qry_image_path": f"['images/train/{i}.png', 'images/train/{(i + 1) % 6}.png']",
             "pos_text": f"the first, colour {i}", "pos_image_path": "None",
             "neg_text": "['<|image_1|> another one']", "neg_image_path": f"['images/train/{(i + 3) % 6}.png']"}
            for i in range(6)]
    for subset, rows in (("Retrieval", mme5), ("Classification", mme5[:3])):  # the paper leaves Classification out
        (src / "mme5" / subset).mkdir(parents=True)
        write_jsonl(src / "mme5" / subset / "train.jsonl", rows)
        files["mme5"].append(str(src / "mme5" / subset / "train.jsonl"))
    return {"mmeb": ("mmeb-train", files["mmeb"]), "mme5": ("mme5-synthetic", files["mme5"])}


def test_paper_shape_runs_end_to_end_with_images_through_every_stage(tmp_path):
    home, root = tmp_path / "airflow", tmp_path / "artifacts"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "NYX_ARTIFACTS_ROOT": str(root), "NYX_CONFIG_DIR": str(REPO / "configs")}
    for kind, (name, files) in public_mix(tmp_path / "public").items():
        out = subprocess.run([NYX, "import", kind, *files, "--name", name, "--image-root", str(tmp_path / "public"),
                              "--profile", "paper-shape"], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = subprocess.run([AIRFLOW, "dags", "test", "nyxqa_to_model", "-c",
                          json.dumps({"profile": "paper-shape", "partition": "shape"})],
                         env=env, capture_output=True, text=True, timeout=1800)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    m = {s: json.loads((root / "partitions/shape" / s / "_MANIFEST.json").read_text()) for s in STAGE_NAMES}

    cfg = load_config("paper-shape")
    assert cfg.chunk.image_placeholder == "<|image_pad|>" == load_config("paper").chunk.image_placeholder
    # images reach mining, and the mmE5 miner (Mllama) embeds them
    assert m["mine"]["config"]["embedder"]["kind"] == "mme5"
    assert m["mine"]["extra"]["documents_with_images"] > 0 and m["mine"]["extra"]["images_embedded"] > 0
    # image-bearing triplets reach both training stages (NyxQA, MMEB, mmE5 and feedback rows)
    for stage in ("train_stage1", "train_stage2"):
        assert m[stage]["extra"]["rows_with_images"] > 0, (stage, m[stage]["extra"])
        assert m[stage]["extra"]["steps"] == m[stage]["rows_out"] == 2  # a finite loss logged per step
        assert m[stage]["checkpoint"]
        # the paper's subsets only (MMEB's list, mmE5's Retrieval and VQA), every row of them under the caps
        mix = {k: n for k, n in m[stage]["extra"].items() if k.startswith("rows:")}
        assert mix["rows:mmeb:ImageNet_1K"] == mix["rows:mmeb:MSCOCO_t2i"] == 6, mix
        assert mix["rows:mme5_synthetic:Retrieval"] == 6, mix
        assert not any("NotInThePaperMix" in k or "Classification" in k for k in mix), mix
    # feedback judged windows with the paper's rule (a random VLM may find none helpful: its rows may be 0)
    assert m["feedback"]["rows_in"] > 0 and m["feedback"]["config"]["mode"] == "paper"
    # no stage dropped a row for a placeholder (or any other) mismatch
    mismatches = {s: {r: n for r, n in x["drops"].items() if "mismatch" in r} for s, x in m.items()}
    assert not any(mismatches.values()), mismatches
    # the evaluation ran the paper's protocol at the paper's Matryoshka dims
    assert m["evaluate"]["config"]["dims"] == [2048, 1024, 512, 256]
    assert m["evaluate"]["rows_out"] > 0
