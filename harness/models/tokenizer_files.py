"""Offline copies of pinned tokenizers and configs (the Hugging Face hub is unreachable in tests).

A root folder (`$HARNESS_TOKENIZERS_DIR`) holds one folder per model, named like the last part of the
hub id, with large files stored xz-compressed and a `SHA256SUMS` of the decompressed files (in the
folder or the root). `local_model_files` returns a directory `from_pretrained` can read: the folder
itself, or a cache copy with every `*.xz` decompressed and verified. The cache is keyed by the SHA-256
of the source files, so a changed source makes a new copy instead of trusting one that exists.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from harness.run.cache import cache_root
from harness.run.pins import read_manifest, sha256_file

TOKENIZERS_ENV = "HARNESS_TOKENIZERS_DIR"
SUMS_NAME = "SHA256SUMS"
MANIFEST_NAME = ".harness-files.json"
CACHE_STAGE = "tokenizer_files"


class TokenizerFilesError(RuntimeError):
    """A local model folder whose files cannot be used; the message names the file at fault."""


def local_model_files(model_id: str, root: Path | str | None = None) -> Path | None:
    """The readable directory of `model_id`'s files under `root` (default $HARNESS_TOKENIZERS_DIR),
    or None when no root is set, the root is absent, or it has no folder for the id.

    The folder is matched by the id's last path component, case-insensitively ("Qwen/Qwen3-8B" ->
    Qwen3-8B). Folders with `*.xz` files are served from a verified, decompressed cache copy.
    """
    root = _root(root)
    if root is None:
        return None
    folder = _model_folder(root, model_id)
    if folder is None:
        return None
    sums = _expected_sums(root, folder)
    if not any(p.name.endswith(".xz") for p in _source_files(folder)):
        _verify_plain(folder, sums)
        return folder
    return _decompressed_copy(folder, sums)


def has_tokenizer(path: Path | str) -> bool:
    """A directory with a fast-tokenizer file (the gemma-2b-it copy has only config and template)."""
    return (Path(path) / "tokenizer.json").is_file()


def has_config(path: Path | str) -> bool:
    return (Path(path) / "config.json").is_file()


def _root(root: Path | str | None) -> Path | None:
    if root is None:
        root = os.environ.get(TOKENIZERS_ENV) or None
    if root is None:
        return None
    path = Path(root)
    return path if path.is_dir() else None


def _model_folder(root: Path, model_id: str) -> Path | None:
    name = model_id.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if not name:
        raise ValueError(f"model id {model_id!r} has no name component")
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() == name)
    if len(matches) > 1:
        raise TokenizerFilesError(f"{root}: several folders match model id {model_id!r}: {[p.name for p in matches]}")
    return matches[0] if matches else None


def _source_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != SUMS_NAME)


def _expected_sums(root: Path, folder: Path) -> dict[str, str]:
    """{file name: sha256 of its decompressed content} from the folder's and the root's SHA256SUMS."""
    sums: dict[str, str] = {}
    sources: dict[str, Path] = {}
    for path, prefix in ((folder / SUMS_NAME, ""), (root / SUMS_NAME, f"{folder.name}/")):
        if not path.is_file():
            continue
        for rel, digest in read_manifest(path).items():
            if not rel.startswith(prefix) or "/" in rel[len(prefix):]:
                continue
            name = rel[len(prefix):]
            if name in sums and sums[name] != digest:
                raise TokenizerFilesError(
                    f"{folder / name}: {sources[name]} lists sha256 {sums[name]} but {path} lists {digest}"
                )
            sums[name], sources[name] = digest, path
    return sums


def _check(path: Path, name: str, actual: str, sums: dict[str, str]) -> None:
    expected = sums.get(name)
    if expected is not None and actual != expected:
        raise TokenizerFilesError(f"{path}: {name} has sha256 {actual}, SHA256SUMS expects {expected}")


def _verify_plain(folder: Path, sums: dict[str, str]) -> None:
    for path in _source_files(folder):
        if path.name in sums:
            _check(path, path.name, sha256_file(path), sums)


def _cache_key(folder: Path, sources: dict[str, str], sums: dict[str, str]) -> str:
    """From the source files' content and the expected sums, so a changed pin is re-verified."""
    blob = json.dumps({"folder": folder.name, "files": sources, "sums": sums}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _decompressed_copy(folder: Path, sums: dict[str, str]) -> Path:
    """The cache directory for `folder`'s current content, built (atomically, under a lock) if it is
    missing or damaged."""
    files = _source_files(folder)
    sources = {p.name: sha256_file(p) for p in files}
    target = cache_root() / CACHE_STAGE / f"{folder.name}-{_cache_key(folder, sources, sums)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if _intact(target):
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            _build(folder, files, sums, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every clone
            shutil.rmtree(target, ignore_errors=True)  # a damaged copy
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _build(folder: Path, files: list[Path], sums: dict[str, str], out: Path) -> None:
    """Decompress every `*.xz` (verified against `sums`) and copy the rest into `out`, then write a
    manifest of what was written so a later call can check the copy instead of trusting it."""
    written: dict[str, str] = {}
    for path in files:
        name = path.name[: -len(".xz")] if path.name.endswith(".xz") else path.name
        if name in written:
            raise TokenizerFilesError(f"{folder}: both {name} and {name}.xz are present; keep one")
        if path.name.endswith(".xz"):
            actual = _decompress(path, out / name)
        else:
            shutil.copyfile(path, out / name)
            actual = sha256_file(out / name)
        _check(path, name, actual, sums)
        written[name] = actual
    (out / MANIFEST_NAME).write_text(json.dumps(written, indent=1, sort_keys=True))


def _decompress(src: Path, dest: Path) -> str:
    """Stream-decompress `src` into `dest`; the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with lzma.open(src, "rb") as fin, open(dest, "wb") as fout:
            for block in iter(lambda: fin.read(1 << 20), b""):
                digest.update(block)
                fout.write(block)
    except lzma.LZMAError as exc:
        raise TokenizerFilesError(f"{src}: not a valid xz file ({exc})") from exc
    return digest.hexdigest()


def _intact(target: Path) -> bool:
    """A cache copy whose files all still match the manifest written when it was built."""
    manifest = target / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        written = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return all((target / name).is_file() and sha256_file(target / name) == digest for name, digest in written.items())
