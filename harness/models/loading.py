"""Model loading: by HF id at a pinned revision, from a local directory, or from a GGUF file
shipped inside an installed Python package (verified by SHA-256 before loading)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from harness.config import ModelConfig
from harness.models.arch import family_of
from harness.models.kernels import configure_model_kernels
from harness.run.pins import sha256_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model source that cannot be used as configured; the message names the file or field."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def gguf_path(cfg: ModelConfig) -> Path:
    """The GGUF file inside the installed package `cfg.gguf_package`, found without importing it."""
    if cfg.gguf_package is None:
        path = Path(cfg.gguf_file)
        if not path.is_file():
            raise ModelLoadError(f"model.gguf_file {cfg.gguf_file!r} does not exist and no model.gguf_package is set")
        return path
    spec = importlib.util.find_spec(cfg.gguf_package)
    if spec is None:
        raise ModelLoadError(f"model.gguf_package {cfg.gguf_package!r} is not installed (pip install it)")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        for candidate in (Path(root) / cfg.gguf_file, *Path(root).rglob(Path(cfg.gguf_file).name)):
            if candidate.is_file():
                return candidate
    raise ModelLoadError(f"model.gguf_file {cfg.gguf_file!r} not found in package {cfg.gguf_package!r} at {roots}")


def verify_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        raise ModelLoadError(f"{path}: no sha256 configured; refusing to load an unpinned file")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ModelLoadError(f"{path}: sha256 mismatch: expected {expected}, actual {actual}")


def _source(cfg: ModelConfig) -> tuple[str, dict]:
    """(name_or_path, from_pretrained kwargs) shared by config, tokenizer and model loading."""
    if cfg.gguf_file is not None:
        path = gguf_path(cfg)
        verify_sha256(path, cfg.sha256)
        return str(path.parent), {"gguf_file": path.name}
    if cfg.path is not None:
        if not Path(cfg.path).is_dir():
            raise ModelLoadError(f"model.path {cfg.path!r} is not a directory")
        return cfg.path, {}
    return cfg.id, {"revision": cfg.revision, "local_files_only": _offline()}


def _device(requested: str | None, cfg: ModelConfig) -> str:
    device = requested or cfg.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer(cfg: ModelConfig):
    name, kwargs = _source(cfg)
    return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **kwargs)


def load_model(cfg: ModelConfig, device: str | None = None):
    """(model, tokenizer), eval mode, gradients off. The architecture is checked against the
    arch table before any weights are read."""
    name, kwargs = _source(cfg)
    config = AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **kwargs)
    family_of(config, cfg.family)
    load_kwargs = dict(kwargs, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
    if "gguf_file" not in kwargs:
        load_kwargs["use_safetensors"] = True
    if cfg.device_map is not None:
        load_kwargs["device_map"] = cfg.device_map
    model = AutoModelForCausalLM.from_pretrained(name, **load_kwargs)
    if cfg.family is not None:
        model.config.harness_family = cfg.family
    if cfg.device_map is None:
        model.to(_device(device, cfg))
    configure_model_kernels(model, grouped_experts_compiled=cfg.compile_grouped_experts)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, **kwargs)
    return model, tokenizer
