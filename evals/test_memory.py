"""Idle models leave the GPU when a generation runs out of memory (harness.models.memory): the generation retries at
the same batch size before it halves, and a judge comes back to its device, with the same outputs, at its next batch."""

from __future__ import annotations

import pytest
import torch

from harness.generation import completions
from harness.models import memory
from harness.models.tiny import tiny_model
from harness.run.cache import in_memory_compute

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="moving a model off the GPU needs a CUDA device")


def _failing_above(limit: int, calls: list[list[str]]):
    def fn(batch):
        calls.append(list(batch))
        if len(batch) > limit:
            raise torch.OutOfMemoryError("simulated")
        return [f"out-{i}" for i in batch]

    return fn


def test_oom_retries_at_the_same_size_once_idle_models_left(monkeypatch):
    """An out-of-memory that freeing idle models cures costs no halving (a compiled step keeps its rows)."""
    freed = iter([5 * 2**30])
    fits = {"at": 2}
    monkeypatch.setattr(completions, "offload_idle", lambda: (fits.update(at=8), next(freed, 0))[1])
    calls: list[list[str]] = []
    halved: list[int] = []
    ids = [f"p{k}" for k in range(10)]
    with pytest.warns(UserWarning, match="moved idle models"):
        values = completions.compute_halving_on_oom(
            in_memory_compute(), ids, lambda b: _failing_above(fits["at"], calls)(b), batch_size=8,
            on_halve=halved.append)
    assert values == [f"out-{i}" for i in ids]
    assert halved == [] and [len(c) for c in calls] == [8, 8, 2]


def test_oom_halves_when_nothing_idle_is_left(monkeypatch):
    """Offloading runs once per out-of-memory; with nothing left to move the batch halves as before."""
    freed = iter([2**30])
    monkeypatch.setattr(completions, "offload_idle", lambda: next(freed, 0))
    calls: list[list[str]] = []
    halved: list[int] = []
    ids = [f"p{k}" for k in range(6)]
    with pytest.warns(UserWarning, match="moved idle models"):
        values = completions.compute_halving_on_oom(in_memory_compute(), ids, _failing_above(2, calls), batch_size=8,
                                                    on_halve=halved.append)
    assert values == [f"out-{i}" for i in ids]
    assert halved == [4, 2] and [len(c) for c in calls][:3] == [6, 6, 4]


def test_a_model_on_the_cpu_is_never_registered():
    model, _ = tiny_model("llama")
    assert memory.register_idle(model) is False
    assert memory.offload_idle() == 0
    assert memory.resident(model) is model


def test_a_judge_model_is_registered_when_made(monkeypatch):
    from harness.judges import backends

    registered: list[object] = []
    monkeypatch.setattr(backends, "register_idle", registered.append)
    model, tok = tiny_model("llama")
    assert backends.hf_model("x", None, lambda: model, tok) == (model, tok)
    assert registered == [model]


@pytest.mark.skipif(not hasattr(torch._C, "_accelerator_getAllocatorSettings"), reason="torch < 2.12 cannot read it")
def test_cuda_runs_get_expandable_segments_unless_the_experiment_or_the_environment_chooses(monkeypatch):
    getter, setter = torch._C._accelerator_getAllocatorSettings, torch._C._accelerator_setAllocatorSettings
    for name in memory.ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = getter()
    try:
        setter("expandable_segments:False")
        monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:False")
        assert memory.environment_allocator() == "PYTORCH_ALLOC_CONF=expandable_segments:False"
        assert memory.configure_cuda_allocator() is None and "True" not in getter()
        assert memory.allocator_in_use(None) == "PYTORCH_ALLOC_CONF=expandable_segments:False"
        monkeypatch.delenv("PYTORCH_ALLOC_CONF")
        assert memory.configure_cuda_allocator(expandable=False) is None and "True" not in getter()
        assert memory.allocator_in_use(None) == memory.FIXED
        assert memory.configure_cuda_allocator() == memory.EXPANDABLE and "expandable_segments:True" in getter()
        assert memory.allocator_in_use(memory.EXPANDABLE) == memory.EXPANDABLE
    finally:
        setter(before or "expandable_segments:False")


@cuda
def test_a_parked_judge_returns_to_its_device_with_the_same_outputs():
    from harness.judges.backends import hf_greedy

    model, tok = tiny_model("llama")
    model = model.to("cuda")
    texts = ["a b c", "d e"]
    before = hf_greedy(model, tok, texts, 4, 2, True)
    assert memory.register_idle(model)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory.offload_idle() >= size
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert memory.offload_idle() == 0  # parked already
    assert hf_greedy(model, tok, texts, 4, 2, True) == before
    assert {p.device.type for p in model.parameters()} == {"cuda"}
