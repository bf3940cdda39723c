"""What a run ran with: software, code commit, weights, chat template, datasets and judges, by hash.

Two results.json files are comparable only when this record says what differs between them
(`python -m harness compare`). Every hash is of what was actually used: the weights in memory, the template
as rendered, the dataset file that was read.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

import harness
from harness import REPO_ROOT
from harness.config import DatasetRef, Experiment, dataset_refs

EXCLUDED_FROM_DIRTY = ("reports",)  # a run writes its own report there; that does not make its code dirty


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software(device: str | torch.device) -> dict[str, Any]:
    """Library versions and the processor the model ran on."""
    on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "harness": harness.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "vllm": _package_version("vllm"),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(torch.device(device)) if on_gpu else f"CPU: {_cpu_model()}",
    }


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The checkout's commit, and whether tracked files outside reports/ differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){p}" for p in EXCLUDED_FROM_DIRTY))
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return {"commit": None, "dirty": None, "note": f"not a git checkout ({type(err).__name__})"}
    return {"commit": commit, "dirty": bool(changed)}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().tobytes()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer in memory (name, dtype, shape, bytes), in name order: the
    weights that were actually run, whatever file they came from or edit they went through."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def template_record(tokenizer) -> dict[str, Any]:
    """The chat template's source and a rendered probe conversation (with the pinned date and template
    variables), by SHA-256, and the post-instruction text the direction is read at."""
    from harness.judges.backends import text_sha256
    from harness.models.chat import SENTINEL, format_instructions, post_instruction_tokens

    source = tokenizer.chat_template
    rendered = format_instructions(tokenizer, [SENTINEL])[0]
    post = tokenizer.decode(post_instruction_tokens(tokenizer))
    return {"template_sha256": text_sha256(source if isinstance(source, str) else repr(source)),
            "rendered_sha256": text_sha256(rendered), "post_instruction": post}


def dataset_record(ref: DatasetRef) -> dict[str, Any]:
    """Registry name, pinned revision and the SHA-256 of the file that is read (absent here: None, and why)."""
    from harness.data.loading import expected_sha256, local_copy
    from harness.data.registry import DATASETS, resolve_name
    from harness.run.pins import sha256_file

    name = resolve_name(ref)
    source = DATASETS[name]
    revision = source.revision or f"{source.path} at this repository's commit (code.commit)"
    record = {"name": name, "revision": revision, "n": ref.n, "pinned_sha256": expected_sha256(name, ref)}
    path = local_copy(name, ref)
    if path is None:
        return {**record, "sha256": None, "note": "no local copy (a rehearsal uses a placeholder)"}
    return {**record, "sha256": sha256_file(path)}


def judge_record(identity: dict[str, Any], name: str) -> dict[str, Any]:
    """A judge's cache identity (model id, revision, code fingerprint, versions) plus, for the official
    SORRY-Bench judge, the SHA-256 of each vendored evaluator file it was verified against."""
    record = dict(identity)
    if name == "sorry-bench":
        from harness.run.pins import SORRY_BENCH_MANIFEST, read_manifest

        record["vendored_files"] = read_manifest(SORRY_BENCH_MANIFEST)
    return record


WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.json")


def weight_files(cfg: Any) -> list[Path] | None:
    """The files a model's weights are loaded from (weights, configs), or None where they cannot be named:
    a hub model not in the local cache. Hub snapshot files are links into the blob store; their stat
    follows the link to the blob."""
    if cfg.gguf_file is not None:
        from harness.models.loading import gguf_path

        return [gguf_path(cfg)]
    if cfg.path is not None:
        folder = Path(cfg.path)
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(cfg.id, revision=cfg.revision, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    files = sorted({f for pattern in WEIGHT_FILE_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    return files or None


def files_signature(files: list[Path]) -> list[list[Any]]:
    """(resolved path, size, mtime in ns) of each file: what a cached weights hash is keyed by."""
    out = []
    for f in files:
        stat = f.stat()
        out.append([str(f.resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def cached_weights_sha256(model: torch.nn.Module, files: list[Path], dtype: str) -> tuple[str, bool]:
    """(`state_dict_sha256(model)`, whether it came from the cache), cached by the files the weights were read
    from (path, size, mtime), the dtype they were loaded in and the torch/transformers versions that loaded
    them: hashing 16-40 GB of weights in memory takes 10-25 s on every pod run, the stat calls take none.
    A changed file, dtype or loader version recomputes it."""
    from harness.run.cache import cached_json, code_fingerprint, stage_key

    key = stage_key(files=files_signature(files), dtype=dtype, torch=torch.__version__,
                    transformers=_package_version("transformers"), code=code_fingerprint("report.environment"))
    computed = []

    def compute() -> str:
        computed.append(True)
        return state_dict_sha256(model)

    return cached_json("weights_sha256", key, compute), not computed


def weights_record(model: torch.nn.Module, exp: Experiment, rehearse: str | None) -> dict[str, Any]:
    cfg = exp.model
    record: dict[str, Any] = {"id": cfg.id, "revision": cfg.revision, "path": cfg.path, "dtype": cfg.dtype}
    if cfg.gguf_file is not None:
        record.update(gguf_file=cfg.gguf_file, gguf_sha256=cfg.sha256)
    if cfg.refusal_tune is not None:
        record["refusal_tune"] = cfg.refusal_tune.recipe
    if rehearse is not None:
        record["weights"] = f"random init of the pinned architecture (rehearsal {rehearse}, seed {exp.seed})"
    if rehearse == "full":  # a full rehearsal's tens of GB of random weights are not worth hashing
        return record
    files = weight_files(cfg) if rehearse is None and cfg.refusal_tune is None else None
    if files is None:  # random, fine-tuned or unnamed sources: hashed in memory on every run
        record["weights_sha256"] = state_dict_sha256(model)
        return record
    record["weights_sha256"], _ = cached_weights_sha256(model, files, cfg.dtype)
    return record


def environment_record(exp: Experiment, model: torch.nn.Module, tokenizer, judges: dict[str, dict[str, Any]], *,
                       device: str, limit: int | None, rehearse: str | None) -> dict[str, Any]:
    """The whole record for results.json; `judges` maps each judge's name to its cache identity."""
    return {
        "software": software(device),
        "code": git_state(),
        "experiment": {"name": exp.name, "file_sha256": _file_sha256(exp.source_file), "seed": exp.seed,
                       "limit": limit, "rehearsal": rehearse},
        "model": weights_record(model, exp, rehearse),
        "chat_template": template_record(tokenizer),
        "datasets": {path: dataset_record(ref) for path, ref in dataset_refs(exp)},
        "judges": {name: judge_record(ident, name) for name, ident in judges.items()},
    }


def _file_sha256(path: str | Path | None) -> str | None:
    from harness.run.pins import sha256_file

    return sha256_file(path) if path and Path(path).is_file() else None
