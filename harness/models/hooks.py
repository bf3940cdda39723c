"""Forward-hook registration that cannot leak hooks into later forward passes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

PreHook = tuple[torch.nn.Module, Callable]
Hook = tuple[torch.nn.Module, Callable]


def _n_params(fn: Callable) -> int:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


@contextmanager
def add_hooks(pre_hooks: Sequence[PreHook] = (), hooks: Sequence[Hook] = ()) -> Iterator[None]:
    """Register forward pre-hooks and forward hooks for the duration of the block.

    Pre-hooks with three parameters, `fn(module, args, kwargs)`, are registered `with_kwargs=True`
    (decoder layers may receive the residual stream as a keyword; see `block_input`); two-parameter
    ones, `fn(module, args)`, the plain way. Forward hooks are `fn(module, inputs, output)`.
    Every handle is removed on exit, also when the block raises.
    """
    handles = []
    try:
        for module, fn in pre_hooks:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=_n_params(fn) >= 3))
        for module, fn in hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a decoder block receives (positional or `hidden_states=` keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_block_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The (args, kwargs) a pre-hook returns to replace the block's residual-stream input."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
