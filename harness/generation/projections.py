"""Sibling projections (q/k/v, gate/up) as one matrix product each, for the static backend's decode.

A batched decode step reads each weight once; the small products of a group (an MQA model's k and v: 1 MB each on
Gemma-2B) cost a kernel's launch and ramp-up more than their bytes. For the duration, a group's weights are rows of
one concatenated matrix (the modules' weights become views into it, so memory is not doubled); the first module the
block calls computes the whole product, and each other member returns its slice when called on the same input
(on another input it computes its own, so an unexpected call order is only slower). On exit every weight gets its
own storage back: exports and weight edits after a generation see separate parameters, as before it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.arch import sibling_projections


class _Group:
    """One group's concatenated weight `[sum(out), in]` (and bias), and the last product its leader made."""

    def __init__(self, mods: tuple[nn.Linear, ...]):
        self.mods = mods
        self.sizes = [m.out_features for m in mods]
        self.weight = torch.cat([m.weight for m in mods])
        self.bias = None if mods[0].bias is None else torch.cat([m.bias for m in mods])
        self.x: torch.Tensor | None = None
        self.parts: tuple[torch.Tensor, ...] = ()
        start = 0
        for m, n in zip(mods, self.sizes):
            m.weight.data = self.weight[start : start + n]
            if self.bias is not None:
                m.bias.data = self.bias[start : start + n]
            start += n

    def release(self) -> None:
        self.x, self.parts = None, ()
        for m in self.mods:
            m.weight.data = m.weight.data.clone()
            if m.bias is not None:
                m.bias.data = m.bias.data.clone()


def _lead(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    group = self._harness_group
    parts = F.linear(x, group.weight, group.bias).split(group.sizes, -1)
    group.x, group.parts = x, parts
    return parts[0]


def _follow(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    group, i = self._harness_group, self._harness_index
    if group.x is not x:
        return F.linear(x, self.weight, self.bias)
    part = group.parts[i]
    if i == len(group.sizes) - 1:  # the last member: the product's other slices are used, let it go
        group.x, group.parts = None, ()
    return part


def _fusable(mods: tuple[nn.Linear, ...]) -> bool:
    """Same input width, dtype and device, all or no biases, no pre-hook (it would change the input of the whole
    product, not of its own module's share) and no forward of its own already (accelerate's dispatch hooks)."""
    first = mods[0].weight
    return (
        all(m.in_features == mods[0].in_features for m in mods)
        and all(m.weight.dtype == first.dtype and m.weight.device == first.device for m in mods)
        and first.device.type != "meta"
        and len({m.bias is None for m in mods}) == 1
        and not any(m._forward_pre_hooks for m in mods)
        and not any("forward" in vars(m) for m in mods)
    )


@contextmanager
def fused_projections(model: nn.Module) -> Iterator[None]:
    """Each fusable sibling group of `model` (`harness.models.arch.sibling_projections`) computed as one product for
    the duration. The forwards are one function per role, so a compiled step traces them once for every call."""
    groups: list[_Group] = []
    try:
        with torch.inference_mode(False), torch.no_grad():
            for mods in sibling_projections(model):
                if not _fusable(mods):
                    continue
                group = _Group(mods)
                groups.append(group)
                for i, m in enumerate(mods):
                    m._harness_group, m._harness_index = group, i
                    m.forward = types.MethodType(_lead if i == 0 else _follow, m)
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for group in groups:
                for m in group.mods:
                    del m.forward, m._harness_group, m._harness_index
                group.release()
