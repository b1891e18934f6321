"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's code paths (torch search, the mmE5
embedder around an in-memory model, stage-1 training through the real trainer, eager and with
selective checkpointing and compiled layers) at tiny shapes,
so the script is known to run before a GPU session spends its minutes on it."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke_runs_every_path_and_prints_figures():
    subprocess.run(["bash", str(ROOT / "scripts" / "vllm_cpu_env.sh")], check=True, timeout=1200)  # the vllm path's venv
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\[gpu_check\] (\w+): (.*)$", out.stdout, re.M)}
    assert set(lines) >= {"search", "mme5", "vectors", "train", "vllm", "train_fast"}
    assert "6/6 checks passed" in out.stdout
    assert float(re.search(r"agreement with fp32: ([\d.]+)", lines["search"]).group(1)) == 1.0
    assert float(re.search(r"([\d.]+) items/s", lines["mme5"]).group(1)) > 0
    assert "vectors finite: True" in lines["mme5"]
    assert float(re.search(r"([\d,.]+) passages/s", lines["vectors"]).group(1).replace(",", "")) > 0
    assert "finite: True" in lines["vectors"]
    host = re.search(r"host preparation \(.*?\): ([\d,.]+) passages/s, ([\d.]+)x", lines["vectors"])
    assert host and float(host.group(1).replace(",", "")) > 0 and float(host.group(2)) > 0
    assert float(re.search(r"([\d.]+) samples/s", lines["train"]).group(1)) > 0
    assert float(re.search(r"([\d.]+) samples/s", lines["train_fast"]).group(1)) > 0  # compiled, 28 layers
    ratio = re.search(r"vLLM's own LLM.chat on the same requests .* ratio ([\d.]+) \(goal", out.stdout)
    assert ratio and float(ratio.group(1)) > 0
    assert "load_format=dummy" in lines["vllm"] and float(re.search(r"([\d.]+) req/s", lines["vllm"]).group(1)) > 0


def test_the_vllm_check_writes_real_shapes_that_transformers_reads(tmp_path):
    """The GPU-only half of the vllm path, checked here: the real-shape configs load, and each
    processor gives the image the token count its model expects (256 per InternVL tile)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import VLLM_SHAPES, real_shape_dir
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    image = Image.new("RGB", (448, 448), (200, 30, 30))
    for name in VLLM_SHAPES:
        path = real_shape_dir(name, tmp_path / name)
        assert not list(path.glob("*.safetensors"))  # config only: vLLM builds dummy weights
        conf = AutoConfig.from_pretrained(path)
        assert conf.text_config.hidden_size == 3584 and conf.text_config.num_hidden_layers == 28
        proc = AutoProcessor.from_pretrained(path)
        ids = proc(text=[f"look {proc.image_token} here"], images=[image], return_tensors="pt")["input_ids"][0]
        n_image = int((ids == conf.image_token_id).sum())
        expect = 256 if name == "internvl" else (448 // 28) ** 2  # one 448 px tile; 14 x 14 merged patches
        assert n_image == expect, (name, n_image)


def test_gpu_check_refuses_an_unknown_check_by_name():
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--only", "serch"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "serch" in out.stderr
