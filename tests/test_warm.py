"""nyx_tasks.warm: what the WarmLocalExecutor imports before it forks its workers. A forked
child must find the modules loaded and still run torch and the tokenizers (nothing in the
preload may start a thread or fix OpenMP's settings before the task's environment is set)."""

import json
import subprocess
import sys

from tests.conftest import REPO

CHILD = r"""
import json, os, sys, threading
from nyx_tasks.warm import MODULES, preload
failed = preload(MODULES + ("no_such_module_for_the_test",))
report = {"failed": sorted(failed), "threads": threading.active_count(), "omp": os.environ.get("OMP_WAIT_POLICY")}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    loaded = [m for m in ("torch", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "nyx_tasks.runner")
              if m in sys.modules]
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401
    from tokenizers import Tokenizer, models, pre_tokenizers
    x = torch.randn(256, 256)
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    ids = [e.ids for e in tok.encode_batch(["a b"] * 64)]
    os.write(w, json.dumps({"loaded": loaded, "matmul": float((x @ x.T).trace()) > 0,
                            "ids": ids[0], "threads": torch.get_num_threads()}).encode())
    os._exit(0)
os.close(w)
_, status = os.waitpid(pid, 0)
report["child"] = json.loads(os.read(r, 4096) or b"{}")
report["status"] = status
print(json.dumps(report))
"""


def test_preload_then_fork_gives_a_child_that_runs_torch_and_tokenizers_without_importing():
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}  # no OMP_* set: preload sets it before torch loads
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == ["no_such_module_for_the_test"]  # a missing module is reported, not raised
    assert report["threads"] == 1  # importing started no thread, so forking is safe
    assert report["omp"] == "PASSIVE"
    child = report["child"]
    assert report["status"] == 0 and child["matmul"] and child["ids"] == [0, 1]
    assert len(child["loaded"]) == 3, child  # the child found them loaded
