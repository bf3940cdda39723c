"""Pinned, SHA-verified, offline-capable dataset loading by registry name.

A dataset is read from $HARNESS_DATA_DIR (or an entry's local path), else from the harness cache, else
downloaded from its pinned revision (pods only) and verified against its SHA-256 before use.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from harness import REPO_ROOT
from harness.config import DatasetRef
from harness.data.parsers import DatasetError
from harness.data.registry import DATASETS, Source, resolve_name
from harness.run.cache import atomic_write_bytes, cache_root
from harness.run.pins import sha256_file

DATA_ENV = "HARNESS_DATA_DIR"


def verify_file(path: Path, expected: str | None) -> str:
    """The file's SHA-256; raises DatasetError naming file, expected and actual when it differs from the pin."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise DatasetError(f"{path}: sha256 mismatch, expected {expected}, actual {actual}")
    return actual


def _download(source: Source, dest: Path) -> None:
    if source.host == "hf" and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DatasetError(f"HF_HUB_OFFLINE is set and there is no local copy of {source.repo}/{source.path}")
    request = urllib.request.Request(source.url)
    token = os.environ.get("HF_TOKEN")
    if source.host == "hf" and token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            atomic_write_bytes(dest, response.read())
    except (urllib.error.URLError, TimeoutError) as err:
        raise DatasetError(f"cannot fetch {source.url}: {err}") from err


def _cache_path(source: Source) -> Path:
    return cache_root() / "datasets" / source.revision / source.local


def _candidates(name: str, ref: DatasetRef | None, data_dir: Path | str | None) -> list[Path]:
    """Where a copy may be, in order: ref.path, then the repository file (project entries) or data_dir,
    $HARNESS_DATA_DIR and the download cache."""
    source = DATASETS[name]
    candidates: list[Path] = []
    if ref is not None and ref.path:
        explicit = Path(ref.path) if Path(ref.path).is_absolute() else REPO_ROOT / ref.path
        candidates.append(explicit / source.local if explicit.is_dir() else explicit)
    if source.host == "project":
        return candidates + [REPO_ROOT / source.path]
    for root in (data_dir, os.environ.get(DATA_ENV)):
        if root:
            candidates.append(Path(root) / source.local)
    return candidates + [_cache_path(source)]


def _first_file(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def how_to_provide(name: str) -> str:
    """What a missing dataset file is called and how to put it where the loader looks."""
    source = DATASETS[name]
    if source.host == "project":
        return (
            f"{source.path} is part of this repository ({source.note}); restore it with "
            f"`git checkout -- {source.path}` from the repository root {REPO_ROOT}"
        )
    hint = (
        f"put the file {Path(source.local).name} at <folder>/{source.local} and set {DATA_ENV}=<folder> "
        f"(e.g. {DATA_ENV}=../shared/data), or name the file in the experiment's dataset `path`; "
        f"the pinned upstream file is {source.url}"
    )
    if source.gated:
        hint += (
            f". The dataset is gated on the Hugging Face hub: sign in, request access and accept the terms at "
            f"https://huggingface.co/datasets/{source.repo}, then set HF_TOKEN to a token of that account so "
            f"the pinned download is allowed"
        )
    return hint + (f" ({source.note})" if source.note else "")


def expected_sha256(name: str, ref: DatasetRef | None = None) -> str | None:
    """The SHA-256 a file of `name` must have: the registry's pin, else the experiment's (`ref.sha256`); both
    given must agree."""
    pinned, given = DATASETS[name].sha256, ref.sha256 if ref is not None else None
    if pinned is not None and given is not None and given != pinned:
        raise DatasetError(f"dataset {name!r}: the experiment pins sha256 {given} but harness/data/loading.py pins "
                           f"{pinned}; they must agree")
    return pinned or given


def _download_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _pin_of(name: str, ref: DatasetRef | None, path: Path) -> str | None:
    """The pin a found file is checked against; for a download of an unpinned entry, the SHA-256 recorded when it
    was fetched from the pinned revision."""
    expected = expected_sha256(name, ref)
    if expected is None and path == _cache_path(DATASETS[name]) and _download_record(path).is_file():
        return _download_record(path).read_text().strip()
    return expected


def unpinned_error(name: str, path: Path) -> DatasetError:
    """An unpinned local copy is not loaded: the message gives its SHA-256 and how to pin it."""
    actual = sha256_file(path)
    return DatasetError(
        f"{path}: dataset {name!r} has no pinned SHA-256, so this local copy is not loaded (its sha256 is {actual}). "
        f"Check the file against {DATASETS[name].url}, then pin it: add sha256 = \"{actual}\" to the experiment's "
        f"dataset entry (e.g. {{ name = \"{name}\", sha256 = \"{actual}\" }}), or to its registry entry in "
        f"harness/data/loading.py"
    )


def locate(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> Path:
    """The verified local file for a registry entry: ref.path, the repository (project entries), data_dir,
    $HARNESS_DATA_DIR, the cache, or a download. Every file is checked against its pin (`expected_sha256`); an
    unpinned local copy is an error, a download from the pinned revision records its SHA-256 beside it."""
    source = DATASETS[name]
    candidates = _candidates(name, ref, data_dir)
    path = _first_file(candidates)
    if path is not None:
        expected = _pin_of(name, ref, path)
        if expected is None:
            raise unpinned_error(name, path)
        verify_file(path, expected)
        return path
    if ref is not None and ref.path:
        raise DatasetError(
            f"dataset {name!r}: `path` {ref.path!r} has no file {source.local!r}; {how_to_provide(name)}"
        )
    if source.host == "project":
        raise DatasetError(f"dataset {name!r}: missing file {candidates[-1]}; {how_to_provide(name)}")
    cached = candidates[-1]
    try:
        _download(source, cached)
    except DatasetError as err:
        where = ", ".join(str(p) for p in candidates)
        raise DatasetError(
            f"dataset {name!r}: no local copy of {source.local} (looked in {where}) and the pinned download "
            f"failed: {err}. To provide it: {how_to_provide(name)}."
        ) from err
    expected = expected_sha256(name, ref)
    try:
        actual = verify_file(cached, expected)
    except DatasetError:
        cached.unlink(missing_ok=True)
        raise
    if expected is None:
        atomic_write_bytes(_download_record(cached), f"{actual}\n".encode())
    return cached


def shots_ref(ref: DatasetRef) -> DatasetRef:
    """The registry entry a multiple-choice set's few-shot examples come from (MMLU: dev, ARC: train)."""
    name = resolve_name(ref)
    shots = DATASETS[name].shots
    if shots is None:
        raise DatasetError(f"dataset {name!r} names no split to draw few-shot examples from (registry `shots`); "
                           "name one in the experiment's [capability] (e.g. mmlu_shots = { name = ... })")
    return DatasetRef(name=shots)


def local_copy(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> Path | None:
    """The first local file the loader would read for `name` (unverified), or None; never downloads."""
    return _first_file(_candidates(resolve_name(ref if ref is not None else DatasetRef(name=name)), ref, data_dir))


def is_available(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> bool:
    """Whether a local copy exists that matches its pin (an unpinned copy is not loadable); never downloads."""
    name = resolve_name(ref if ref is not None else DatasetRef(name=name))
    path = local_copy(name, ref, data_dir)
    if path is None:
        return False
    try:
        expected = _pin_of(name, ref, path)
        if expected is None:
            return False
        verify_file(path, expected)
    except DatasetError:
        return False
    return True


def seeded_subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """The first n rows of a seeded permutation; the same (n, seed) always picks the same prompts."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(frame))[:n]
    return frame.iloc[np.sort(order)].reset_index(drop=True)


def load_dataset(ref: DatasetRef | str, data_dir: Path | str | None = None, seed: int = 0) -> pd.DataFrame:
    """Rows of a registered dataset (id, prompt, category[, label]); `ref.n` takes a seeded subset."""
    ref = DatasetRef(name=ref) if isinstance(ref, str) else ref
    name = resolve_name(ref)
    source = DATASETS[name]
    if ref.revision is not None and source.host == "project":
        raise DatasetError(
            f"dataset {name!r} is the project file {source.path}, pinned by sha256 {source.sha256}; "
            f"it has no revision to override (got {ref.revision})"
        )
    if ref.revision is not None and ref.revision != source.revision:
        raise DatasetError(
            f"dataset {name!r}: revision {ref.revision} requested but the registry pins {source.revision}; "
            "change the pin (and its sha256) in harness/data/loading.py"
        )
    path = locate(name, ref, data_dir)
    frame = source.parse(path)
    if ref.n is not None and ref.n > len(frame):
        raise DatasetError(f"dataset {name!r}: n={ref.n} but {path} has {len(frame)} rows")
    frame = seeded_subset(frame, ref.n, seed)
    origin = f"project:{source.path}" if source.host == "project" else f"{source.repo}@{source.revision}:{source.path}"
    frame.attrs.update({"dataset": name, "source": origin, "file": str(path), "sha256": _pin_of(name, ref, path)})
    return frame
