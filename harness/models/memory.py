"""GPU memory of a run: the allocator's settings, and idle models that step off the GPU when another computation runs
out of its memory and come back at their next use.

The allocator: a run allocates the model, then a weight-edited copy of its residual writers, static KV caches and
CUDA graph pools of every size in turn. PyTorch's default segments are fixed in size once made, so freed memory can
sit in pieces no large request fits; expandable segments map physical pages into one growing range instead
(`configure_cuda_allocator`, as vLLM does by default), unless the experiment (`[model] expandable_segments`) or the
user's own allocator settings say otherwise.

Idle models: a judge stays on the GPU between its batches (loading it again would cost more than holding it). On an
80 GB card it fits beside the model under test, but not always beside a weight-edited copy and a large generation
batch as well. Rather than halve that batch (and, for a compiled step, compile anew), generation first asks the idle
models to leave (`offload_idle`); a judge returns to its device at its next batch (`resident`).
"""

from __future__ import annotations

import os
import weakref

import torch
from torch import nn

ALLOCATOR_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
EXPANDABLE = "expandable_segments:True"
FIXED = "PyTorch's default (fixed-size segments)"


def environment_allocator() -> str | None:
    """The environment's allocator setting as "NAME=value" (the first of `ALLOCATOR_ENV` set), or None."""
    return next((f"{name}={os.environ[name]}" for name in ALLOCATOR_ENV if os.environ.get(name)), None)


def configure_cuda_allocator(expandable: bool = True) -> str | None:
    """Expandable segments for this process's CUDA allocations from now on (`expandable`; else PyTorch's default
    stays), unless an allocator variable of the environment (`environment_allocator`) is set: the user's choice
    stands. The setting applied, or None."""
    if not expandable or environment_allocator() is not None or not torch.cuda.is_available():
        return None
    # torch >= 2.12 names it per accelerator (the cuda one warns there); older releases have the cuda one only
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(EXPANDABLE)
    return EXPANDABLE


def allocator_in_use(applied: str | None) -> str:
    """What a run allocates with, for its record: the setting `configure_cuda_allocator` applied, else the
    environment's, else PyTorch's default."""
    return applied or environment_allocator() or FIXED


# id(model) -> (the model, the device it returns to); a registered model on the CPU is parked there
_IDLE: dict[int, tuple[weakref.ref, torch.device]] = {}


def _single_device(model: nn.Module) -> torch.device | None:
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(devices) != 1 or len(set(device_map.values())) > 1:
        return None  # a model spread over devices (accelerate's dispatch) is not moved as one piece
    return devices.pop()


def _parked(model: nn.Module) -> bool:
    return next(model.parameters()).device.type == "cpu"


def register_idle(model: nn.Module) -> bool:
    """Let `offload_idle` move `model` to the CPU between its uses; the caller wraps each use in `resident`.
    Only a model wholly on one accelerator qualifies (True if registered)."""
    device = _single_device(model)
    if device is None or device.type == "cpu":
        return False
    key = id(model)
    _IDLE[key] = (weakref.ref(model, lambda _ref: _IDLE.pop(key, None)), device)
    return True


def offload_idle() -> int:
    """Move every registered model that is on its accelerator now to the CPU; the bytes moved (0: nothing to free).
    The caller empties the allocator's cache once the failed computation's tensors are gone too."""
    moved = 0
    for ref, _ in list(_IDLE.values()):
        model = ref()
        if model is None or _parked(model):
            continue
        moved += sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        model.to("cpu")
    return moved


def resident(model: nn.Module) -> nn.Module:
    """`model`, moved back to its device if `offload_idle` parked it (a no-op for a model never registered)."""
    entry = _IDLE.get(id(model))
    if entry is not None and _parked(model):
        model.to(entry[1])
    return model
