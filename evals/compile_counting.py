"""Counting what torch.compile compiles, for the tests that promise one compile for many layers, shapes or
conditions (not collected: no test here)."""

from __future__ import annotations

import pytest
import torch


def counted_compiles(monkeypatch: pytest.MonkeyPatch, backend: str | None = None):
    """From here to the test's end every `torch.compile` goes through one dynamo counter, which it returns:
    `CompileCounter` (graphs counted, run eagerly) or, with `backend`, `CompileCounterWithBackend(backend)` (counted
    and compiled, e.g. "inductor" on a GPU). Its `frame_count` is the number of compiled frames."""
    from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

    counter = CompileCounterWithBackend(backend) if backend else CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=counter, **kw))
    return counter
