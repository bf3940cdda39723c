"""Per-stage activity (`harness.run.cache.timed`): seconds, and the peak GPU memory of each stage, nested stages
included, read from an allocator whose peak counter the stages reset (a fake one here: CI has no GPU)."""

from __future__ import annotations

import time

import pytest
import torch

from harness.run import cache


class FakeAllocator:
    """torch.cuda's allocated-memory counters: `use(n)` allocates n bytes (and frees them), raising the peak."""

    def __init__(self):
        self.now, self.peak = 0, 0

    def use(self, n: int) -> None:
        self.peak = max(self.peak, self.now + n)

    def reset(self) -> None:
        self.peak = self.now


@pytest.fixture
def gpu(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset)
    monkeypatch.setattr(cache, "ACTIVITY", {kind: {} for kind in cache.ACTIVITY})
    monkeypatch.setattr(cache, "_PROCESS_PEAK", [0])
    return fake


def test_each_stage_records_its_own_peak_and_nested_peaks_reach_the_enclosing_one(gpu):
    gib = 2**30
    gpu.use(50 * gib)  # before any stage: the process's peak only
    with cache.timed("outer"):
        gpu.use(3 * gib)
        with cache.timed("inner"):
            gpu.use(5 * gib)
            with cache.timed("innermost"):
                gpu.use(7 * gib)
            gpu.use(1 * gib)
        gpu.use(2 * gib)
    with cache.timed("later"):
        gpu.use(1 * gib)
    with cache.timed("later"):
        gpu.use(4 * gib)
    peaks = cache.ACTIVITY["peak_gpu_memory_gib_by_stage"]
    assert peaks == {"outer": 7.0, "inner": 7.0, "innermost": 7.0, "later": 4.0}
    assert cache.process_peak_gpu_bytes() == 50 * gib


def test_without_a_gpu_no_peak_is_recorded(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cache, "ACTIVITY", {kind: {} for kind in cache.ACTIVITY})
    with cache.timed("cpu"):
        time.sleep(0.01)
    assert cache.ACTIVITY["peak_gpu_memory_gib_by_stage"] == {} and "cpu" in cache.ACTIVITY["seconds"]


def test_timeline_places_the_untimed_time_between_outermost_stages(monkeypatch):
    """Outermost stages count once (a nested one is inside its parent); the time outside every stage is split into
    gaps named by their neighbours, the largest first."""
    clock = [100.0]
    monkeypatch.setattr(cache.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cache, "ACTIVITY", {kind: {} for kind in cache.ACTIVITY})
    monkeypatch.setattr(cache, "_TIMELINE", [])
    monkeypatch.setattr(cache, "_STARTED", 90.0)
    with cache.timed("model"):
        clock[0] += 4
    clock[0] += 12  # untimed: e.g. a judge loaded outside any stage
    with cache.timed("judge"):
        clock[0] += 3
        with cache.timed("judge/inner"):
            clock[0] += 2
    clock[0] += 1
    wall = cache.timeline()
    assert wall["since_import_s"] == 32 and wall["in_stages_s"] == 9 and wall["untimed_s"] == 23
    assert wall["largest_untimed_gaps"] == [{"s": 12, "after": "model", "before": "judge"},
                                           {"s": 10, "after": "start", "before": "model"},
                                           {"s": 1, "after": "judge", "before": "end"}]
