"""The conditions a run compares: the baseline, each intervention and each grid cell, as a model and the hooks entered
around its forward passes, with the note the report prints for it.

What a condition needs that is expensive (the component ranking, the INLP basis, the edited model) is passed as a
zero-argument callable and asked for only when the condition uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from harness.config import GRID_METHOD, InterventionConfig, parse_cell
from harness.models.arch import embeddings, n_layers, unembedding
from harness.steering import interventions as iv
from harness.steering.weights import changed_parameters


@dataclass(frozen=True)
class Condition:
    name: str
    model: Any
    intervention: Callable[[], contextlib.AbstractContextManager] | None
    note: str


class Steer(Protocol):
    """The direction a condition applies (the `direction` fixture's): `unit` and `raw` (`[d_model]`, or
    `[layer, d_model]` per layer), the layer and position it was read at, whether it is one direction per layer."""

    unit: torch.Tensor
    raw: torch.Tensor
    layer: int | None
    pos: int

    @property
    def per_layer(self) -> bool: ...


def edit_note(cfg: InterventionConfig, model, edited, per_layer: bool) -> str:
    """What the weight edit did, read from the parameters it changed, for the report."""
    kind = "norm-preserving " if cfg.norm_preserving else ""
    if cfg.edit_modules is None:
        return f"{kind}weight orthogonalization against r-hat"
    changed = changed_parameters(model, edited)
    against = "each layer's own direction" if per_layer else "r-hat"
    parts = [f"{path} ({len(layers)} layers)" if layers != [-1] else path for path, layers in sorted(changed.items())]
    same = all(torch.equal(get(edited).weight, get(model).weight.to(get(edited).weight.device))
               for get in (embeddings, unembedding))
    untouched = "; embeddings and read-out unchanged" if same else ""
    return f"{kind}weight orthogonalization against {against}; changed: {', '.join(parts)}{untouched}"


def grid_condition(name: str, model, cfg: InterventionConfig, steer: Steer, *, ranked: Callable[[], list[int]],
                   basis: Callable[[], torch.Tensor]) -> Condition:
    """One cell of the method x intervention x scope grid (`INTERVENTION@SCOPE`), its hooks built when entered."""
    kind, scope = parse_cell(name)
    grid = cfg.grid
    if grid is None or name not in grid.cells():
        raise KeyError(f"unknown condition {name!r}: intervention.grid runs {grid.cells() if grid else 'no grid'}")
    order = ranked() if scope != "all" else None
    scoped = dict(scope=scope, ranked=order, fraction=grid.top_fraction)
    layers = iv.select_layers(n_layers(model), scope, None, order, grid.top_fraction)
    where = f"layers {layers}" if scope != "all" else "every layer"
    q = basis() if GRID_METHOD[kind] == "inlp" else None
    if q is not None and len(q) == 0:
        raise RuntimeError(f"{name}: INLP found no direction above chance at layer {steer.layer}, position "
                           f"{steer.pos} (direction.inlp_chance_margin); the INLP cells have nothing to apply")
    if kind == "ablation":
        run, note = lambda: iv.ablate(model, steer.unit, **scoped), "directional ablation of r-hat"
    elif kind == "nullspace":
        run = lambda: iv.nullspace(model, q, **scoped)  # noqa: E731
        note = f"nullspace projection of a {len(q)}-vector INLP basis"
    elif kind == "reflection":
        run = lambda: iv.reflect(model, q, grid.reflect_strength, **scoped)  # noqa: E731
        note = f"reflection (strength {grid.reflect_strength:g}) across a {len(q)}-vector INLP basis"
    else:
        vector = steer.raw if kind == "actadd" else iv.matched_vector(q[0], steer.raw)
        run = lambda: iv.actadd(model, vector, steer.layer, cfg.actadd_coeff)  # noqa: E731
        what = "diff-in-means" if kind == "actadd" else "first INLP direction at the diff-in-means norm"
        note, where = f"ActAdd of {cfg.actadd_coeff:+g} x {what}", f"layer {steer.layer}"
    return Condition(name, model, run, f"{note} at {where} (scope {scope})")


def build_condition(name: str, model, cfg: InterventionConfig, steer: Steer, *, ranked: Callable[[], list[int]],
                    basis: Callable[[], torch.Tensor], edited: Callable[[], Any]) -> Condition:
    """Condition `name`: baseline, ablation, actadd, weight_edit, inlp, or a grid cell `INTERVENTION@SCOPE`."""
    if name == "baseline":
        return Condition(name, model, None, "no intervention")
    if name == "ablation":
        def ablation():
            return iv.ablate(model, steer.unit, scope=cfg.scope, ranked=ranked() if cfg.scope != "all" else None)

        return Condition(
            name, model, ablation,
            f"directional ablation of r-hat at every layer and position (scope {cfg.scope})" if cfg.scope == "all"
            else f"directional ablation of r-hat at the ranked components' layers (scope {cfg.scope})",
        )
    if name == "actadd":
        return Condition(name, model, lambda: iv.actadd(model, steer.raw, steer.layer, cfg.actadd_coeff),
                         f"ActAdd of {cfg.actadd_coeff:+g} x diff-in-means at layer {steer.layer}")
    if name == "weight_edit":
        model_edited = edited()
        return Condition(name, model_edited, None, edit_note(cfg, model, model_edited, steer.per_layer))
    if name == "inlp":
        q = basis()
        return Condition(name, model, lambda: iv.nullspace(model, q),
                         f"nullspace projection of a {q.shape[0]}-vector INLP basis at every layer")
    if "@" in name:
        return grid_condition(name, model, cfg, steer, ranked=ranked, basis=basis)
    raise KeyError(f"unknown condition {name!r}")
