"""Resumable on-disk caches for expensive stages.

A stage is keyed by a hash of everything that determines its output (experiment, model revision,
dataset revision, stage version, parameters), never by "a file exists". Item stages (completions,
judgments, per-candidate scores) are written one batch at a time, each batch an atomically renamed
file, so a run killed with SIGKILL loses at most the batch in flight and recomputes nothing that
finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

import harness

CACHE_ENV = "HARNESS_CACHE_DIR"

ACTIVITY: dict[str, dict[str, float]] = {
    "computed": {}, "reused": {}, "seconds": {}, "peak_gpu_memory_gib_by_stage": {}}
"""Per stage, items computed and reused from the cache in this process, wall seconds spent computing and the peak
GPU memory allocated while computing: what a rehearsal asserts (a second run must compute nothing) and a benchmark
reports."""
_OPEN_PEAKS: list[int] = []  # bytes: the peak so far of each open `timed` block, innermost last
_PROCESS_PEAK = [0]  # bytes: the most allocated at once before the allocator's last reset
_STARTED = time.perf_counter()  # this module's import: pytest imports the harness while it loads its plugins
_TIMELINE: list[tuple[float, float, str]] = []  # (start, end, stage) of each outermost `timed` block


def _count(kind: str, stage: str, n: float = 1) -> None:
    if n:
        ACTIVITY[kind][stage] = ACTIVITY[kind].get(stage, 0) + n


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's wall time to `stage`'s seconds (CUDA work is synchronised first, so it is counted) and record
    the peak GPU memory allocated within it. The allocator's peak counter is reset at each block's start, so an
    enclosing block takes its inner blocks' peaks into its own, and `process_peak_gpu_bytes` into the process's."""
    if _cuda_started():
        torch.cuda.synchronize()
        _close_peak_window()
    outermost = not _OPEN_PEAKS
    _OPEN_PEAKS.append(0)
    start = time.perf_counter()
    try:
        yield
    finally:
        if outermost:
            _TIMELINE.append((start, time.perf_counter(), stage))
        peak = _OPEN_PEAKS.pop()
        if _cuda_started():
            torch.cuda.synchronize()
            peak = max(peak, torch.cuda.max_memory_allocated())
            _close_peak_window()
            by_stage = ACTIVITY["peak_gpu_memory_gib_by_stage"]
            by_stage[stage] = max(by_stage.get(stage, 0.0), round(peak / 2**30, 2))
            if _OPEN_PEAKS:
                _OPEN_PEAKS[-1] = max(_OPEN_PEAKS[-1], peak)
        _count("seconds", stage, round(time.perf_counter() - start, 3))


def timeline(largest: int = 8) -> dict:
    """Where this process's wall time went since the harness was imported: seconds inside outermost `timed` stages,
    seconds outside all of them (imports, CUDA start, model and judge set-up nobody timed, pytest), and the largest
    untimed gaps by the stages on either side, so a run's unattributed time can be placed."""
    now = time.perf_counter()
    blocks = sorted(_TIMELINE)
    gaps, end, after = [], _STARTED, "start"
    for start, stop, stage in blocks:
        gaps.append((start - end, after, stage))
        end, after = max(end, stop), stage
    gaps.append((now - end, after, "end"))
    return {"since_import_s": round(now - _STARTED, 2),
            "in_stages_s": round(sum(stop - start for start, stop, _ in blocks), 2),
            "untimed_s": round(sum(g for g, *_ in gaps if g > 0), 2),
            "largest_untimed_gaps": [{"s": round(g, 2), "after": a, "before": b}
                                     for g, a, b in sorted(gaps, reverse=True)[:largest] if g > 0]}


def _cuda_started() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _close_peak_window() -> None:
    """Fold the allocator's peak since its last reset into the process's and the open blocks', then reset it."""
    peak = torch.cuda.max_memory_allocated()
    _PROCESS_PEAK[0] = max(_PROCESS_PEAK[0], peak)
    if _OPEN_PEAKS:
        _OPEN_PEAKS[-1] = max(_OPEN_PEAKS[-1], peak)
    torch.cuda.reset_peak_memory_stats()


def process_peak_gpu_bytes() -> int:
    """The most GPU memory allocated at once in this process, across the resets `timed` makes."""
    return max(_PROCESS_PEAK[0], torch.cuda.max_memory_allocated()) if _cuda_started() else _PROCESS_PEAK[0]


def cache_root() -> Path:
    """$HARNESS_CACHE_DIR, else the user cache directory: outside the repository, so raw completions
    to harmful prompts can never be committed, and shared by every clone on the machine."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "refusal-harness"
    root.mkdir(parents=True, exist_ok=True)
    return root


def code_fingerprint(*modules: str) -> str:
    """Hash of the named harness modules' source (a package: every module in it), so a cached stage is recomputed
    when its code changes. Names are dotted below `harness` (`steering.selection`, `generation`)."""
    root = Path(harness.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode())
        path = root / name.replace(".", "/")
        package = path.is_dir()
        for file in sorted(path.rglob("*.py")) if package else [path.with_suffix(".py")]:
            if package:
                digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def stage_key(**parts: Any) -> str:
    """A stable hash of the parts that determine a stage's output."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def stage_dir(stage: str, key: str) -> Path:
    return cache_root() / stage / key


class ItemStore:
    """Per-item results of one stage, persisted batch by batch.

    State is real here (the directory and what is already done), hence a class.
    """

    def __init__(self, stage: str, key: str):
        self.stage, self.name = stage.split("/")[0], stage
        self.dir = stage_dir(stage, key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.dir / ".lock"))
        self.recomputed = 0

    def load(self) -> dict[str, Any]:
        done: dict[str, Any] = {}
        for part in sorted(self.dir.glob("part-*.json")):
            done.update(json.loads(part.read_text()))
        return done

    def save(self, batch: dict[str, Any]) -> None:
        if not batch:
            return
        name = f"part-{stage_key(ids=sorted(batch))}.json"
        with self._lock:
            atomic_write_json(self.dir / name, batch)

    def compute(
        self,
        ids: Sequence[str],
        fn: Callable[[list[str]], list[Any]],
        batch_size: int,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> list[Any]:
        """Results for `ids`, calling `fn` only on the ones not yet stored, one batch at a time."""
        return SplitStore([(self, ids)]).compute(ids, fn, batch_size, progress)

    def record(self, batch: dict[str, Any]) -> None:
        """Save a freshly computed batch and count it as computed."""
        self.save(batch)
        self.recomputed += len(batch)
        _count("computed", self.stage, len(batch))


class SplitStore:
    """One computation whose items live in several `ItemStore`s, each item in its owner's: two prompt sets
    generated together keep each set's completions where a run of that set alone keeps them."""

    def __init__(self, parts: Sequence[tuple[ItemStore, Sequence[str]]]):
        self.parts = list(parts)
        self._owner = {i: store for store, ids in self.parts for i in ids}

    def load(self) -> dict[str, Any]:
        done: dict[str, Any] = {}
        for store, _ in self.parts:
            done.update(store.load())
        return done

    def save(self, batch: dict[str, Any]) -> None:
        for store, part in self._split(batch):
            store.save(part)

    def _split(self, batch: dict[str, Any]) -> list[tuple[ItemStore, dict[str, Any]]]:
        return [(store, {i: v for i, v in batch.items() if self._owner[i] is store}) for store, _ in self.parts]

    def compute(self, ids: Sequence[str], fn: Callable[[list[str]], list[Any]], batch_size: int,
                progress: Callable[[Iterable], Iterable] | None = None) -> list[Any]:
        unknown = [i for i in ids if i not in self._owner]
        if unknown:
            raise KeyError(f"SplitStore has no owner for {len(unknown)} ids, e.g. {unknown[0]!r}")

        def saved(batch: dict[str, Any]) -> None:
            for store, part in self._split(batch):
                store.record(part)

        done = self.load()
        for store, own in self.parts:
            _count("reused", store.stage, len(set(own) & set(done)))
        first, *rest = [store.name for store, _ in self.parts]
        with timed("+".join([first, *(name.rsplit("/", 1)[-1] for name in rest)])):
            return compute_missing(done, ids, fn, batch_size, progress, on_batch=saved)


def compute_missing(
    done: dict[str, Any],
    ids: Sequence[str],
    fn: Callable[[list[str]], list[Any]],
    batch_size: int,
    progress: Callable[[Iterable], Iterable] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> list[Any]:
    """Fill `done` with fn's results for the ids it lacks, batch by batch (each handed to `on_batch`
    as soon as it is finished), and return the results for `ids` in order."""
    todo = [i for i in dict.fromkeys(ids) if i not in done]
    batches = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
    for batch in progress(batches) if progress and batches else batches:
        values = fn(batch)
        if len(values) != len(batch):
            raise RuntimeError(f"stage returned {len(values)} results for {len(batch)} items")
        finished = dict(zip(batch, values))
        if on_batch is not None:
            on_batch(finished)
        done.update(finished)
    return [done[i] for i in ids]


def in_memory_compute(done: dict[str, Any] | None = None) -> Callable[..., list[Any]]:
    """An `ItemStore.compute` stand-in over a dict that outlives retries (items in `done` are skipped)."""
    done = {} if done is None else done

    def compute(ids, fn, batch_size, progress=None):
        return compute_missing(done, ids, fn, batch_size, progress)

    return compute


def cached_tensor(stage: str, key: str, fn: Callable[[], torch.Tensor | dict]) -> Any:
    """Compute-once for a whole-stage tensor (or a dict of tensors); loaded with weights_only=True,
    so the cache can never execute pickled code."""
    path = stage_dir(stage, key) / "value.pt"
    if path.is_file():
        _count("reused", stage.split("/")[0])
        return torch.load(path, weights_only=True)
    _count("computed", stage.split("/")[0])
    with timed(stage):
        value = fn()
    buffer = io.BytesIO()
    torch.save(value, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        atomic_write_bytes(path, buffer.getvalue())
    return value


def cached_json(stage: str, key: str, fn: Callable[[], Any]) -> Any:
    path = stage_dir(stage, key) / "value.json"
    if path.is_file():
        _count("reused", stage.split("/")[0])
        return json.loads(path.read_text())
    _count("computed", stage.split("/")[0])
    with timed(stage):
        value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        atomic_write_json(path, value)
    return json.loads(json.dumps(value, sort_keys=True))
