"""Activation-space interventions as context managers over forward hooks (removed on exit).

Ablation, nullspace projection and reflection act on the residual stream: on the input of each
chosen block and on every module output that is added to the residual stream (the attention and
MLP writers named in harness.models.arch: the projection itself, or the post-norm that follows it).
Inside `shared_hooks`, the one-direction ones write their edit into persistent hooks instead.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from harness.models.arch import d_model, layer_modules
from harness.models.hooks import add_hooks, block_input, with_block_input

Scope = Literal["all", "top_k", "one"]


class DirectionShapeError(ValueError):
    """A direction or basis whose width is not the model's d_model."""


def check_width(model, vectors: torch.Tensor, what: str = "direction") -> torch.Tensor:
    expected = d_model(model)
    if vectors.ndim not in (1, 2) or vectors.shape[-1] != expected:
        raise DirectionShapeError(
            f"{what} has shape {tuple(vectors.shape)} (width {vectors.shape[-1] if vectors.ndim else 0}); "
            f"expected width d_model={expected} for {type(model).__name__}"
        )
    return vectors


def unit(direction: torch.Tensor) -> torch.Tensor:
    """float32 unit vector; a zero vector is an error, not a silent no-op."""
    r = direction.detach().float()
    norm = r.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"direction has norm {float(norm)}; cannot normalise")
    return r / norm


def select_layers(
    n: int, scope: Scope = "all", layers: Sequence[int] | None = None, ranked: Sequence[int] | None = None,
    fraction: float = 0.5,
) -> list[int]:
    """Which blocks an intervention touches, as the INLP study scopes it.

    `ranked` is the layer of each (layer, position) component in rank order (a layer appears once per
    position; harness.steering.components.rank_components). `layers` (explicit) wins; else "all" = every block,
    "one" = the top-ranked component's block, "top_k" = the blocks of the first ceil(fraction * len(ranked))
    components (the study's `top_percentage` over its component pool).
    """
    if layers is not None:
        chosen = sorted(set(int(i) for i in layers))
    elif scope == "all":
        chosen = list(range(n))
    elif scope in ("one", "top_k"):
        if not ranked:
            raise ValueError(f"scope={scope!r} needs `ranked` (component layers in rank order) or explicit `layers`")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = 1 if scope == "one" else max(1, math.ceil(fraction * len(ranked)))
        chosen = sorted(set(int(i) for i in ranked[:k]))
    else:
        raise ValueError(f"unknown scope {scope!r}; expected one of 'all', 'top_k', 'one'")
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise IndexError(f"layers {bad} out of range for a model with {n} blocks")
    return chosen


def matched_vector(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`direction` at `reference`'s norm and on its side (positive dot product): the study's INLP ActAdd, whose
    first classifier direction is oriented harmful > harmless and scaled to the diff-in-means norm."""
    r = unit(direction.reshape(-1))
    ref = reference.detach().float().reshape(-1)
    if r.shape != ref.shape:
        raise DirectionShapeError(f"direction has shape {tuple(r.shape)}, reference {tuple(ref.shape)}")
    sign = 1.0 if float(r @ ref) >= 0 else -1.0
    return sign * ref.norm() * r


def orthonormal(model, basis: torch.Tensor, what: str = "basis") -> torch.Tensor:
    """`[k, d_model]` (or one `[d_model]` vector) -> float32 rows spanning the same space, orthonormal."""
    rows = check_width(model, basis.reshape(-1, basis.shape[-1]) if basis.ndim else basis, what)
    q, _ = torch.linalg.qr(rows.detach().float().T)  # [d_model, k], orthonormal columns
    return q.T.contiguous()


class _PerDevice:
    """A float32 tensor copied once to each device it is needed on (no copy per hook call)."""

    def __init__(self, tensor: torch.Tensor):
        self._copies = {tensor.device: tensor.detach().float()}

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self._copies:
            self._copies[device] = next(iter(self._copies.values())).to(device)
        return self._copies[device]


def _removed32(x32: torch.Tensor, r: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return x32 - (scale * (x32 * r).sum(-1, keepdim=True)) * r


def _remove_component(x: torch.Tensor, r: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """x - scale * (x.r) r for a float32 unit `r: [d_model]` (or one per row, `[batch, 1, d_model]`), as one row
    reduction in float32."""
    return _removed32(x.float(), r, scale).to(x.dtype)


def _shift(x: torch.Tensor, r: torch.Tensor, scale: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """`_remove_component` then + add (`[d_model]`, float32): a shared hook's edit of a block input. With add zero
    it equals `_remove_component`, with r and scale zero ActAdd's x + add, bit for bit."""
    return (_removed32(x.float(), r, scale) + add).to(x.dtype)


FUSED_MAX_ROWS = 256
"""Rows up to which an eager hook on CUDA may run the compiled copy of its one-direction arithmetic at a decode step
(batches of up to 232 rows): one kernel instead of five (2.2 us against 13.6 us a hook a step in a CUDA graph, H100).
A prefill's hooks stay eager: over [tokens, d_model] the extra passes cost about 1% of its forward."""


@functools.cache
def _fused_shift() -> Callable:
    """`_shift` under torch.compile, made on first use (dynamo is not imported where no hook runs fused), for a
    dynamic row count: one compile serves every hook, own or shared, with or without a shift, at every decode batch
    size (each compile cost ~3 s of a cold H100 run)."""
    return torch.compile(_shift, dynamic=True)


@functools.cache
def _constant(value: float, width: int | None, device: torch.device) -> torch.Tensor:
    """A float32 constant on `device`, made once: a scale (`width` None, 0-d) or a zero shift (`[width]`). A decode
    step's eager warm-up makes it before any CUDA graph capture."""
    return torch.full(() if width is None else (width,), value, dtype=torch.float32, device=device)


def _decode_sized(x: torch.Tensor) -> bool:
    """A decode step's input: one position per row (`[batch, 1, d]`, or `[tokens, d]` from a flattened MoE writer),
    at most FUSED_MAX_ROWS rows. Prefill shapes would each need their own compile."""
    one_position = x.dim() == 2 or (x.dim() == 3 and x.shape[1] == 1)
    return one_position and x.numel() <= FUSED_MAX_ROWS * x.shape[-1]


FUSE_DECODE_HOOKS = False
"""Whether eager hooks on CUDA run the compiled copy at decode sizes. Off: a process's first compile (inductor and
Triton warm-up) costs more than the kernel saves in the one or two hooked generations a run makes. Cold, one H100,
232 rows x 256 tokens as an uncompiled CUDA graph (evals/test_bench_hooks.py, reports/bench/hook_arithmetic.json):
the first hooked generation took 6.8 s fused against 2.0 s eager (gemma-2b-it) and 9.7 against 6.0 s (qwen3-8b);
warm, fused saved 0.17 and 0.45 s."""


def _fused(x: torch.Tensor) -> bool:
    """Whether an eager hook runs the compiled copy of its one-direction arithmetic (one kernel instead of five)."""
    return FUSE_DECODE_HOOKS and x.is_cuda and _decode_sized(x)


def _edit(x: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor,
          add: torch.Tensor | None = None) -> torch.Tensor:
    """x - scale * (x B^T) B (+ add) over the last axis for orthonormal float32 rows `b: [k, d_model]`, computed in
    float32, returned in x's dtype. One direction is a row reduction: traced as is inside a compiled step (inductor
    fuses it with its neighbours), or its compiled copy when run eagerly on CUDA at decode sizes with
    `FUSE_DECODE_HOOKS` on (`_fused`); elsewhere, and for several directions, two matrix products."""
    if b.shape[0] == 1 and torch.compiler.is_compiling():
        return _remove_component(x, b[0], scale) if add is None else _shift(x, b[0], scale, add)
    if b.shape[0] == 1 and _fused(x):
        if not isinstance(scale, torch.Tensor):
            scale = _constant(float(scale), None, x.device)
        if add is None:  # a zero shift: `_shift` then equals `_remove_component` bit for bit
            add = _constant(0.0, x.shape[-1], x.device)
        return _fused_shift()(x, b[0], scale, add)
    x32 = x.float()
    out = x32 - scale * (x32 @ b.T) @ b
    return (out if add is None else out + add).to(x.dtype)


def _project_out(x: torch.Tensor, basis: _PerDevice, scale: float) -> torch.Tensor:
    return _edit(x, basis.on(x.device), scale)


def _map_output(output, fn: Callable[[torch.Tensor], torch.Tensor]):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    raise TypeError(f"cannot intervene on a module output of type {type(output).__name__}")


@contextmanager
def _applying(
    model, fn: Callable[[torch.Tensor], torch.Tensor], chosen: list[int], inputs: list[int]
) -> Iterator[None]:
    """`fn` applied to the residual stream at the inputs of blocks `inputs` and at every residual write of blocks
    `chosen`, for the duration."""

    def pre_hook(module, args, kwargs):
        return with_block_input(args, kwargs, fn(block_input(args, kwargs)))

    def hook(module, inputs_, output):
        return _map_output(output, fn)

    mods = layer_modules(model)
    pre_hooks = [(mods[i].block, pre_hook) for i in inputs]
    hooks = [(m, hook) for i in chosen for m in mods[i].residual_outputs]
    with add_hooks(pre_hooks=pre_hooks, hooks=hooks):
        yield


@dataclass(frozen=True)
class _Slots:
    """One block's share of the shared hooks, float32 tensors on the block's device: its input gets
    x - s_in (x.r_in) r_in + add, each of its residual writes x - s_out (x.r_out) r_out. All zero: no edit."""

    r_in: torch.Tensor  # [1, d_model]
    s_in: torch.Tensor  # []
    add: torch.Tensor  # [d_model]
    r_out: torch.Tensor  # [1, d_model]
    s_out: torch.Tensor  # []

    def hooks(self, block: torch.nn.Module, writers: Sequence[torch.nn.Module]) -> tuple[list, list]:
        def pre_hook(module, args, kwargs):
            x = block_input(args, kwargs)
            return with_block_input(args, kwargs, _edit(x, self.r_in, self.s_in, self.add))

        def hook(module, inputs_, output):
            return _map_output(output, lambda x: _edit(x, self.r_out, self.s_out))

        return [(block, pre_hook)], [(m, hook) for m in writers]


@dataclass
class _Shared:
    slots: list[_Slots]  # one per block
    busy: bool = False

    @contextmanager
    def writing(self, edits: Callable[[list[_Slots]], None]) -> Iterator[None]:
        """`edits` written into the slots for the duration, then every slot back to zero."""
        self.busy = True
        try:
            edits(self.slots)
            yield
        finally:
            for slot in self.slots:
                for t in (slot.r_in, slot.s_in, slot.add, slot.r_out, slot.s_out):
                    t.zero_()
            self.busy = False


_SHARED: weakref.WeakKeyDictionary[torch.nn.Module, _Shared] = weakref.WeakKeyDictionary()


@contextmanager
def shared_hooks(model) -> Iterator[None]:
    """Hooks at every block input and residual write whose edits are tensors, all zero (no edit) until `ablate`,
    `actadd`, or a one-vector `nullspace` / `reflect` entered inside writes its edit into them instead of adding
    hooks of its own (other interventions, or a second one at a time, add their own as usual).

    A compiled decode step traces the hooks it finds: per-condition hooks cost a compile per condition (~44 s cold
    on gpt-oss-20b). These are the same code for every condition and their tensors are graph inputs, so the
    baseline, a weight-edited copy of the model and every such intervention replay one compiled step.
    """
    if model in _SHARED:
        raise RuntimeError(f"shared_hooks is already active on this {type(model).__name__}")
    pre_hooks, hooks, slots = [], [], []
    d = d_model(model)
    for mods in layer_modules(model):
        device = next(mods.block.parameters()).device
        slot = _Slots(*(torch.zeros(shape, device=device) for shape in ((1, d), (), (d,), (1, d), ())))
        pre, post = slot.hooks(mods.block, mods.residual_outputs)
        pre_hooks += pre
        hooks += post
        slots.append(slot)
    _SHARED[model] = _Shared(slots)
    try:
        with add_hooks(pre_hooks=pre_hooks, hooks=hooks):
            yield
    finally:
        del _SHARED[model]


def _free_shared(model) -> _Shared | None:
    shared = _SHARED.get(model)
    return shared if shared is not None and not shared.busy else None


def _residual_projection(model, basis: torch.Tensor, scale: float, chosen: list[int], inputs: list[int]):
    shared = _free_shared(model)
    if shared is not None and basis.shape[0] == 1:
        def edits(slots: list[_Slots]) -> None:
            for i in inputs:
                slots[i].r_in.copy_(basis[0])
                slots[i].s_in.fill_(scale)
            for i in chosen:
                slots[i].r_out.copy_(basis[0])
                slots[i].s_out.fill_(scale)

        return shared.writing(edits)
    copies = _PerDevice(basis)
    return _applying(model, lambda x: _project_out(x, copies, scale), chosen, inputs)


@contextmanager
def ablate(
    model,
    direction: torch.Tensor,
    *,
    scope: Scope = "all",
    layers: Sequence[int] | None = None,
    ranked: Sequence[int] | None = None,
    fraction: float = 0.5,
) -> Iterator[None]:
    """Directional ablation x <- x - (x.r)r at block inputs and residual writes, every position."""
    r = unit(check_width(model, direction).reshape(-1))
    chosen = select_layers(len(layer_modules(model)), scope, layers, ranked, fraction)
    with _residual_projection(model, r[None], 1.0, chosen, chosen):
        yield


@contextmanager
def ablate_rows(model, directions: torch.Tensor) -> Iterator[None]:
    """`ablate` at every layer with one direction per batch row (`directions: [batch, d_model]`, each normalised
    here): several selection candidates scored in one forward over as many copies of the prompts. Per row the
    arithmetic is `ablate`'s (x - (x.r) r in float32)."""
    rows = check_width(model, directions, "directions")
    if rows.ndim != 2:
        raise DirectionShapeError(f"directions must be [batch, d_model], got {tuple(rows.shape)}")
    copies = _PerDevice(torch.stack([unit(r) for r in rows]))  # [batch, d_model]

    def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, seq, d_model], or [batch * seq, d_model] from an MoE writer
        r = copies.on(x.device)
        batch = r.shape[0]
        if x.ndim == 2 and x.shape[0] % batch == 0:
            return _remove_component(x.view(batch, -1, x.shape[-1]), r[:, None, :], 1.0).view_as(x)
        if x.shape[0] != batch:
            raise DirectionShapeError(f"ablate_rows has {batch} directions for a batch of {x.shape[0]} rows")
        return _remove_component(x, r[:, None, :], 1.0)

    every = list(range(len(layer_modules(model))))
    with _applying(model, fn, every, every):
        yield


@contextmanager
def nullspace(
    model,
    basis: torch.Tensor,
    layers: Sequence[int] | None = None,
    *,
    scope: Scope = "all",
    ranked: Sequence[int] | None = None,
    fraction: float = 0.5,
) -> Iterator[None]:
    """Project out span(basis) (`[k, d_model]`; orthonormalised here) like `ablate`."""
    q = orthonormal(model, basis)
    chosen = select_layers(len(layer_modules(model)), scope, layers, ranked, fraction)
    with _residual_projection(model, q, 1.0, chosen, chosen):
        yield


@contextmanager
def reflect(
    model,
    direction: torch.Tensor,
    strength: float = 1.0,
    layers: Sequence[int] | None = None,
    *,
    scope: Scope = "all",
    ranked: Sequence[int] | None = None,
    fraction: float = 0.5,
) -> Iterator[None]:
    """Counterfactual reflection x <- x - (1 + strength) P x, P the projection onto span(direction) (one
    `[d_model]` vector or a `[k, d_model]` basis, e.g. INLP's); strength 1 flips the component's sign. The study
    writes it as x <- (alpha (I - P) + (1 - alpha) I) x with alpha = 1 + strength.

    Reflection is not idempotent, so it is applied once to the stream: at the input of the first chosen block
    and to every residual write of the chosen blocks. (The study's hooks reflect every chosen block's input
    too, which at consecutive blocks undoes the previous reflection of the stream.)
    """
    q = orthonormal(model, direction, "direction")
    chosen = select_layers(len(layer_modules(model)), scope, layers, ranked, fraction)
    with _residual_projection(model, q, 1.0 + strength, chosen, chosen[:1]):
        yield


@contextmanager
def actadd(model, direction: torch.Tensor, layer: int, coeff: float) -> Iterator[None]:
    """Activation addition: x <- x + coeff * direction at the input of block `layer`, every
    position (the direction is used as given, not normalised, as in Arditi et al.)."""
    vec = _PerDevice(check_width(model, direction).reshape(-1))
    mods = layer_modules(model)
    (layer,) = select_layers(len(mods), "one", ranked=[layer])
    shared = _free_shared(model)
    if shared is not None:
        def edits(slots: list[_Slots]) -> None:
            slots[layer].add.copy_(coeff * vec.on(slots[layer].add.device))

        with shared.writing(edits):
            yield
        return

    def pre_hook(module, args, kwargs):
        x = block_input(args, kwargs)
        return with_block_input(args, kwargs, (x.float() + coeff * vec.on(x.device)).to(x.dtype))

    with add_hooks(pre_hooks=[(mods[layer].block, pre_hook)]):
        yield
