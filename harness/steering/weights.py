"""Weight orthogonalization (the permanent form of directional ablation), saving, and a
measurement of how faithfully the edit reproduces activation ablation."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from harness.models.arch import (
    FAMILIES,
    WeightRef,
    family_of,
    final_norm,
    input_device,
    is_tied,
    layers,
    n_layers,
    residual_writers,
    unembedding,
)
from harness.models.chat import tokenize_instructions
from harness.models.hooks import add_hooks, block_input
from harness.steering.interventions import ablate, check_width, unit

_CHUNK = 8192  # d_model vectors edited at a time, bounding the float32 working copy

# Families whose vLLM model classes tie the read-out to the embedding matrix unconditionally (they have no
# separate lm_head weight to load), so an edited checkpoint saved untied cannot run there.
TIED_ONLY_FAMILIES: tuple[str, ...] = ("gemma", "gemma2", "gemma3", "gemma4")


class EditError(ValueError):
    """A weight edit that cannot be made as asked (per-layer directions that do not fit the model or its modules)."""


class CheckpointError(ValueError):
    """An edited model that cannot be saved for the engine that is to load it; the message says what to change."""


@torch.no_grad()
def _orthogonalize_vectors(w: torch.Tensor, r: torch.Tensor, norm_preserving: bool) -> None:
    """In place on a `[n, d_model]` view (any strides): w <- w - (w.r) r, optionally rescaled."""
    for start in range(0, w.shape[0], _CHUNK):
        part = w[start : start + _CHUNK]
        p32 = part.float()
        edited = p32 - (p32 @ r)[:, None] * r
        if norm_preserving:
            edited *= p32.norm(dim=-1, keepdim=True) / edited.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        part.copy_(edited.to(part.dtype))


@torch.no_grad()
def _orthogonalize_ref(ref: WeightRef, r: torch.Tensor, norm_preserving: bool) -> None:
    """Remove r from every d_model vector of the parameter (along `out_dim`) and from its bias."""
    w = ref.weight.data.movedim(ref.out_dim, -1)  # [..., d_model], a view
    r = r.to(w.device)
    for matrix in w.unbind(0) if w.ndim == 3 else (w,):
        _orthogonalize_vectors(matrix, r, norm_preserving)
    if ref.bias is not None:
        b = ref.bias.data
        _orthogonalize_vectors(b.reshape(-1, b.shape[-1]), r, norm_preserving=False)


def untie_embeddings(model: nn.Module) -> None:
    """Give the unembedding its own copy of the (tied) embedding matrix, so editing the
    embeddings leaves the read-out untouched, as activation ablation does."""
    head = unembedding(model)
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None:
            cfg.tie_word_embeddings = False


def _edit_directions(model: nn.Module, direction: torch.Tensor) -> torch.Tensor:
    """`[d_model]` (one direction) or `[n_layer, d_model]` (one per layer), unit rows."""
    if direction.ndim == 2:
        if direction.shape[0] != n_layers(model):
            raise EditError(f"per-layer directions {tuple(direction.shape)}: {direction.shape[0]} rows for a model "
                             f"with {n_layers(model)} layers")
        return torch.stack([unit(check_width(model, row)) for row in direction])
    return unit(check_width(model, direction).reshape(-1))


def edited_writers(model: nn.Module, modules: Sequence[str] | None = None) -> list[WeightRef]:
    """The parameters `orthogonalize` edits: every residual writer, or the kinds in `modules`
    (harness.models.arch.EDIT_MODULE_KINDS), each shared parameter once."""
    refs, seen = [], set()
    for ref in residual_writers(model, modules):
        if id(ref.weight) not in seen:  # a parameter shared by two writers is edited once
            seen.add(id(ref.weight))
            refs.append(ref)
    return refs


def _copy_sharing_unedited(model: nn.Module, refs: Sequence[WeightRef]) -> nn.Module:
    """Deep copy whose parameters outside `refs` are `model`'s own tensors, not copies: an edit changes only
    the residual writers, and the rest (attention's q/k/v, MLP up and gate projections, a MoE's expert up
    projections: ~2/3 of gpt-oss-20b's 42 GB) need not be held twice on the GPU."""
    edited = {id(t) for ref in refs for t in (ref.weight, ref.bias) if t is not None}
    shared = {id(p): p for p in model.parameters() if id(p) not in edited}
    return copy.deepcopy(model, memo=shared)


def orthogonalize(
    model: nn.Module,
    direction: torch.Tensor,
    norm_preserving: bool = False,
    untie: bool = True,
    inplace: bool = False,
    modules: Sequence[str] | None = None,
) -> nn.Module:
    """Edited deep copy whose residual-writing weights (embeddings, attention outputs, MLP and
    expert down projections with their biases, per-layer-input projections; or only the kinds in
    `modules`, see harness.models.arch.EDIT_MODULE_KINDS) have no component along r_hat.
    `direction` is `[d_model]`, or `[n_layer, d_model]` to give each block's writers its own direction
    (the embeddings then cannot be among `modules`). `norm_preserving` rescales each written vector
    (each column of a Linear weight, over its d_model output axis) back to its original norm.
    Tied embeddings are untied first where the embeddings are edited (`untie`), because editing a tied
    matrix would also edit the read-out, which activation ablation leaves alone. `untie=False` (the
    experiment's `intervention.keep_tie`) edits the shared matrix once, so embedding and read-out both
    lose r_hat and the checkpoint stays tied, as engines that require tied embeddings (vLLM's Gemma
    classes) need. The input model is not modified unless `inplace` (for models too large to hold twice);
    the copy shares every parameter the edit leaves alone with it (read-only tensors: neither model changes them)."""
    r = _edit_directions(model, direction)
    edited = model if inplace else _copy_sharing_unedited(model, edited_writers(model, modules))
    refs = edited_writers(edited, modules)
    if r.ndim == 2 and any(ref.layer is None for ref in refs):
        raise EditError("per-layer directions cannot edit the embeddings (they belong to no layer); leave "
                         "\"embed\" out of the edited modules")
    if untie and is_tied(edited) and any(ref.kind == "embed" for ref in refs):
        untie_embeddings(edited)
        refs = edited_writers(edited, modules)
    for ref in refs:
        _orthogonalize_ref(ref, r if r.ndim == 1 else r[ref.layer], norm_preserving)
    edited.eval().requires_grad_(False)
    return edited


@torch.no_grad()
def changed_parameters(original: nn.Module, edited: nn.Module) -> dict[str, list[int]]:
    """What an edit changed, read from the weights: parameter path (inside its block, or the full name outside
    the blocks) -> the layers where it differs from the original."""
    before = dict(original.named_parameters())
    changed: dict[str, list[int]] = {}
    for name, p in edited.named_parameters():
        if name in before and torch.equal(p, before[name].to(p.device)):
            continue
        match = re.search(r"layers\.(\d+)\.(.+)$", name)
        path, layer = (match.group(2), int(match.group(1))) if match else (name, -1)
        changed.setdefault(path, []).append(layer)
    return changed


def edit_equals_ablation(model: nn.Module, *, norm_preserving: bool, scope: str, keep_tie: bool = False,
                         modules: Sequence[str] | None = None) -> bool:
    """Whether the weight edit computes exactly what directional ablation at every layer and position
    does, so an ablation condition may run as the edited checkpoint on an engine without hooks (vLLM):
    the family's edit must be exact by construction, not norm-preserving, the ablation unscoped, every
    residual writer edited (`modules` None), and the read-out untouched (a kept tie edits it too)."""
    if (keep_tie and is_tied(model)) or modules is not None:
        return False
    return FAMILIES[family_of(model)].exact_edit and not norm_preserving and scope == "all"


def check_saveable_for_vllm(original: nn.Module, edited: nn.Module) -> None:
    """Raise CheckpointError where vLLM could not load the edited checkpoint: the original ties its
    embeddings, the edit untied them, and the family's vLLM classes require the tie."""
    family = family_of(original)
    if family in TIED_ONLY_FAMILIES and is_tied(original) and not is_tied(edited):
        raise CheckpointError(
            f"the edited {family} model has untied embeddings (the edit gave the read-out its own copy), but "
            f"vLLM's {family} model classes require tied embeddings, so the saved checkpoint would fail when "
            "vLLM starts generating; set intervention.keep_tie = true to edit the tied matrix, or use a "
            "generation backend other than vllm"
        )


def save_model(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Safetensors weights + config + generation config + tokenizer that `from_pretrained` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _stream_components(model, batch, r: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Logits and, per block input plus the final residual, max |x.r| over real tokens."""
    blocks = layers(model)
    comps: list[float] = [0.0] * (len(blocks) + 1)

    def record(i: int, x: torch.Tensor) -> None:
        c = (x.float() @ r.to(x.device)).abs()[mask.to(x.device)]
        comps[i] = max(comps[i], float(c.max()))

    def make_pre(i):
        return lambda module, args, kwargs: record(i, block_input(args, kwargs))

    def final_pre(module, args, kwargs):
        record(len(blocks), block_input(args, kwargs))

    pre = [(b, make_pre(i)) for i, b in enumerate(blocks)] + [(final_norm(model), final_pre)]
    with add_hooks(pre_hooks=pre):
        logits = model(**batch, use_cache=False).logits.float()
    return logits, comps


_KEPT_TIE_LEAK = (
    "tied embeddings kept: the edit also removed r_hat from the read-out (lm_head shares the embedding "
    "matrix), which activation ablation leaves alone"
)


def _edit_exactness(model: nn.Module, edited: nn.Module) -> tuple[bool, str]:
    """(exact, why not): the family's claim, withdrawn where the edit kept a tie and so changed the read-out."""
    spec = FAMILIES[family_of(model)]
    if is_tied(model) and is_tied(edited):
        return False, "; ".join(r for r in (spec.leak_reason, _KEPT_TIE_LEAK) if r)
    return spec.exact_edit, spec.leak_reason


@torch.no_grad()
def edit_fidelity(
    model: nn.Module,
    edited: nn.Module,
    direction: torch.Tensor,
    prompts: Sequence[str],
    tokenizer,
    *,
    system: str | None = None,
    batch_size: int = 8,
) -> dict:
    """How well the weight edit reproduces activation ablation on the original model.

    Returns `residual_component` (per block input, then the final residual: max |x.r_hat| in the
    edited model over real tokens), `ablation_component` (same for the ablated original, the floor),
    `baseline_component` (the unedited original, the scale), `max_logit_gap` (max |logit difference|
    edited vs ablated), `exact` (whether the edit is exact by construction: the family's claim, false
    where a kept tie also edited the read-out) and `leak_reason`.
    """
    r = unit(check_width(model, direction).reshape(-1))
    if len(prompts) == 0:
        raise ValueError("edit_fidelity needs at least one prompt")
    family = family_of(model)
    n = n_layers(model) + 1
    comps = {key: [0.0] * n for key in ("edited", "ablated", "baseline")}
    gap_max, gap_sum, gap_count, logit_scale = 0.0, 0.0, 0, 0.0
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_instructions(tokenizer, list(prompts[start : start + batch_size]), system)
        on_model = {k: v.to(input_device(model)) for k, v in batch.items()}
        on_edited = {k: v.to(input_device(edited)) for k, v in batch.items()}
        mask = batch["attention_mask"].bool()
        base_logits, base_comp = _stream_components(model, on_model, r, mask)
        with ablate(model, r):
            abl_logits, abl_comp = _stream_components(model, on_model, r, mask)
        edit_logits, edit_comp = _stream_components(edited, on_edited, r, mask)
        for key, vals in (("edited", edit_comp), ("ablated", abl_comp), ("baseline", base_comp)):
            comps[key] = [max(a, b) for a, b in zip(comps[key], vals)]
        m = mask.to(abl_logits.device)
        gap = (edit_logits.to(abl_logits.device) - abl_logits).abs()[m]  # [tokens, vocab]
        gap_max = max(gap_max, float(gap.max()))
        gap_sum, gap_count = gap_sum + float(gap.sum()), gap_count + gap.numel()
        logit_scale = max(logit_scale, float(base_logits.abs()[m].max()))
    exact, leak_reason = _edit_exactness(model, edited)
    return {
        "family": family,
        "exact": exact,
        "leak_reason": leak_reason,
        "residual_component": comps["edited"],
        "ablation_component": comps["ablated"],
        "baseline_component": comps["baseline"],
        "max_logit_gap": gap_max,
        "mean_logit_gap": gap_sum / gap_count,
        "baseline_logit_scale": logit_scale,
        "n_prompts": len(prompts),
    }
