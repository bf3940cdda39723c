"""Direction selection as in Arditi et al. (2024), appendix "Direction selection".

Every (layer, post-instruction position) diff-in-means candidate is scored three ways on validation
prompts, without generating: how far ablating it lowers refusal on harmful prompts (bypass), how far
adding it raises refusal on harmless prompts (induce), and how much ablating it perturbs the
next-token distribution on harmless prompts (KL). Candidates from late layers, with high KL, or that
do not induce refusal are filtered; the lowest bypass score among the rest wins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from harness.models.arch import NotAttentionOnly, layer_windows, n_layers
from harness.models.chat import format_instructions
from harness.models.logits import (
    forward_kwargs,
    forward_logits,
    last_position_logits,
    next_token_kl,
    pad_token_id,
    prompt_batches,
)
from harness.models.packing import pack, pack_kwargs, packed_last_logits
from harness.run.cache import ItemStore, in_memory_compute
from harness.steering.activations import block_inputs, can_resume, resume_at
from harness.steering.directions import EPS_NORM, unit
from harness.steering.interventions import ablate, ablate_rows, actadd

REFUSAL_OPENINGS: tuple[str, ...] = ("I", "As")
"""Openings of typical refusals ("I cannot...", "As an AI..."); their first token after the
post-instruction prefix is what the refusal score counts."""


class SelectionError(RuntimeError):
    """No candidate survives the filters, or the candidates do not fit the model."""


class RefusalTokenError(ValueError):
    """A refusal opening that does not tokenize cleanly after the chat prefix."""


def refusal_token_ids(tokenizer, openings: Sequence[str] = REFUSAL_OPENINGS) -> list[int]:
    """First token of each opening as the model would generate it right after the chat template's
    post-instruction prefix. Located by character offsets in `prompt + opening`, because a byte-level
    BPE may tokenize the prompt's tail differently once text follows it ("\\n\\n" vs "\\n", "\\n", "I").
    Pass other `openings` to override."""
    if not openings:
        raise RefusalTokenError("refusal_token_ids needs at least one opening")
    if not getattr(tokenizer, "is_fast", False):
        raise RefusalTokenError(f"{type(tokenizer).__name__} is not a fast tokenizer (needed for offsets); pass refusal ids")
    prompt = format_instructions(tokenizer, ["Hello"])[0]
    ids: list[int] = []
    for opening in openings:
        enc = tokenizer(prompt + opening, add_special_tokens=False, return_offsets_mapping=True)
        token = None
        for tok_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            if start < len(prompt) < end:
                raise RefusalTokenError(
                    f"opening {opening!r} merges with the end of the chat prompt for {type(tokenizer).__name__} "
                    f"(prompt tail {prompt[-20:]!r}); pass refusal ids explicitly"
                )
            if start >= len(prompt) and end > start:
                token = int(tok_id)
                break
        if token is None:
            raise RefusalTokenError(f"opening {opening!r} produced no token after the chat prompt")
        if token not in ids:
            ids.append(token)
    return ids


REFERENCE_EPSILON = 1e-8
SCORE_FORMS: tuple[str, ...] = ("reference", "exact")


def scores_from_logits(logits: Tensor, refusal_ids: Sequence[int], form: str = "reference") -> Tensor:
    """Refusal score of next-token logits `[n, vocab]` -> `[n]` float64, where p is the refusal tokens' total
    probability. `reference`: log(p + 1e-8) - log(1 - p + 1e-8), the reference implementation's formula (Arditi et
    al., `select_direction.refusal_score`); the epsilon bounds each score by +-log(1e8) ~ 18.42, so a mean over
    prompts ranks candidates as the reference ranks them. `exact`: log p - log(1 - p) via log-sum-exp, unbounded
    and finite for p near 0 or 1; its means can rank two candidates in the opposite order where some prompts'
    refusal probability is far below 1e-8."""
    if not refusal_ids:
        raise ValueError("refusal_ids is empty")
    if form not in SCORE_FORMS:
        raise ValueError(f"refusal score form must be one of {', '.join(SCORE_FORMS)}, got {form!r}")
    logits = logits.double()
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    mask[list(refusal_ids)] = True
    log_p = torch.logsumexp(logits[:, mask], dim=-1)
    if form == "reference":
        p = torch.exp(log_p - torch.logsumexp(logits, dim=-1))
        return torch.log(p + REFERENCE_EPSILON) - torch.log(1 - p + REFERENCE_EPSILON)
    log_not_p = torch.logsumexp(logits[:, ~mask], dim=-1)
    return log_p - log_not_p


def refusal_score(
    model, tokenizer, instructions: list[str], refusal_ids: Sequence[int], *, batch_size: int = 32,
    system: str | None = None, form: str = "reference",
) -> Tensor:
    """Refusal score `[n]` (`scores_from_logits`, `form`) at the first generated position of each chat-formatted
    instruction. Run it inside an intervention context to score the intervened model."""
    logits = last_position_logits(model, tokenizer, instructions, system=system, batch_size=batch_size)
    return scores_from_logits(logits, refusal_ids, form)


@dataclass(frozen=True)
class SelectionResult:
    table: pd.DataFrame  # one row per swept candidate
    layer: int
    pos: int  # negative, from the end of the prompt
    direction: Tensor  # [d_model] unit
    vector: Tensor  # [d_model] the unnormalized candidate (what ActAdd adds)
    bypass_score: float
    induce_score: float
    kl: float
    baseline_harmful: float  # mean refusal score on harmful_val, no intervention
    baseline_harmless: float
    refusal_ids: list[int] = field(default_factory=list)


def candidate_id(layer: int, pos: int) -> str:
    return f"L{layer}_P{pos}"


def _layer_limit(max_layer_fraction: float, total: int) -> int:
    """Layers `>= floor(fraction * total)` are pruned, as in the reference implementation."""
    return math.floor(max_layer_fraction * total + 1e-9)


def _resolve_positions(positions: Sequence[int] | None, n_pos: int) -> list[int]:
    if positions is None:
        return list(range(-n_pos, 0))
    bad = [p for p in positions if not -n_pos <= p <= -1]
    if bad:
        raise SelectionError(f"positions {bad} outside the candidates' range [-{n_pos}, -1] (negative, from the end)")
    return list(positions)


def _resolve_layers(layers: Sequence[int] | None, total: int) -> list[int]:
    if layers is None:
        return list(range(total))
    bad = [layer for layer in layers if not 0 <= layer < total]
    if bad:
        raise SelectionError(f"layers {bad} outside [0, {total}) for this model")
    return list(layers)


def _filter_reasons(
    row: dict, zero_norm: bool, limit: int, total: int, kl_max: float, induce_min: float
) -> list[str]:
    reasons = []
    if row["layer"] >= limit:
        reasons.append(f"layer {row['layer']} >= {limit} (max_layer_fraction of {total} layers)")
    if zero_norm:
        reasons.append("zero-norm candidate (identical activations in both sets)")
    scores = (row["bypass_score"], row["induce_score"], row["kl"])
    if any(isinstance(s, float) and math.isnan(s) for s in scores):
        if not reasons:
            reasons.append("NaN score")
        return reasons
    if row["kl"] > kl_max:
        reasons.append(f"kl {row['kl']:.4g} > kl_max {kl_max:g}")
    if not row["induce_score"] > induce_min:
        reasons.append(f"induce {row['induce_score']:.4g} <= induce_min {induce_min:g}")
    return reasons


@dataclass(frozen=True)
class _Pass:
    """One forward over some of the prompts: its model kwargs (for `block_inputs`), its rows, and
    `logits(copies=1)` -> last-position logits `[copies * prompts, vocab]` on the model's device, copy-major, from
    one forward over `copies` copies of its rows (where `ablate_rows` or a resumed input can tell them apart)."""

    kwargs: dict
    rows: int
    logits: Callable[..., Tensor]


def _padded_logits(model, ids: Tensor, mask: Tensor, copies: int = 1) -> Tensor:
    return forward_logits(model, ids.repeat(copies, 1), mask.repeat(copies, 1), last_only=True, on_cpu=False)


def _passes(model, tokenizer, prompts: list[str], *, system: str | None, batch_size: int, packed: bool) -> list[_Pass]:
    """`prompts` as forwards: left-padded batches of `batch_size`, or packed rows (`harness.models.packing`); their
    logits in prompt order, pass after pass."""
    batches = prompt_batches(tokenizer, prompts, system=system, batch_size=batch_size)
    if not packed:
        return [_Pass(forward_kwargs(model, ids, mask), ids.shape[0],
                      functools.partial(_padded_logits, model, ids, mask)) for ids, mask in batches]
    packs = pack(_token_rows(batches), pad_token_id(tokenizer))
    kwargs = [pack_kwargs(model, p) for p in packs]
    return [_Pass(kw, p.input_ids.shape[0], functools.partial(packed_last_logits, model, [p], [kw]))
            for p, kw in zip(packs, kwargs)]


def _actadd_logits(model, tokenizer, prompts: list[str], layers: Sequence[int], *, system: str | None,
                   batch_size: int, packed: bool = False):
    """`logits(vectors, layer)`: last-position logits `[k, n, vocab]` of `prompts` with each of `vectors: [k, d_model]`
    added at block `layer` (one of `layers`). Blocks below `layer` are unchanged by ActAdd, so where the model allows
    it each batch starts at `layer` from its baseline block input, captured once, with the vector already added (what
    ActAdd's hook computes there), and the k vectors go through one forward over k copies of the batch (identical
    results, fewer FLOPs and forwards: the induce pass of a sweep costs about half a forward per candidate on
    average). `packed`: the prompts go through packed rows (`harness.models.packing`) instead of left-padded batches."""
    passes = _passes(model, tokenizer, prompts, system=system, batch_size=batch_size, packed=packed)
    resumable = can_resume(model) and len(layers) > 0
    inputs = [block_inputs(model, layers, **p.kwargs) if resumable else None for p in passes]

    @torch.inference_mode()
    def logits(vectors: Tensor, layer: int) -> Tensor:
        k = vectors.shape[0]
        if not resumable:
            every = []
            for vector in vectors:
                with actadd(model, vector, layer, 1.0):
                    every.append(torch.cat([p.logits() for p in passes]))
            return torch.stack(every)
        out = []  # per pass: [k, prompts, vocab]
        for p, hidden in zip(passes, inputs):
            h = hidden[layer]  # [rows, seq, d_model]
            added = vectors.float().to(h.device).repeat_interleave(p.rows, dim=0)[:, None]  # [k * rows, 1, d_model]
            with resume_at(model, layer, (h.float().repeat(k, 1, 1) + added).to(h.dtype)):
                out.append(p.logits(copies=k).unflatten(0, (k, -1)))
        return torch.cat(out, dim=1)

    return logits


def _token_rows(batches: list[tuple[Tensor, Tensor]]) -> list[list[int]]:
    """Each prompt's real tokens, from left-padded batches."""
    return [row[m.bool()].tolist() for ids, mask in batches for row, m in zip(ids, mask)]


def select_direction(
    model,
    tokenizer,
    candidates: Tensor,
    harmful_val: list[str],
    harmless_val: list[str],
    *,
    max_layer_fraction: float = 0.8,
    kl_max: float = 0.1,
    induce_min: float = 0.0,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    store: ItemStore | None = None,
    refusal_ids: Sequence[int] | None = None,
    system: str | None = None,
    score_pruned_layers: bool = False,
    score_form: str = "reference",
    candidates_per_forward: int = 1,
    packed: bool = False,
) -> SelectionResult:
    """Score candidates `[layer, pos, d_model]` (pos indexed from the end) and pick the refusal direction.

    bypass: mean refusal score on `harmful_val` with the unit candidate ablated at every layer;
    induce: mean refusal score on `harmless_val` with the raw candidate added (coeff 1) at its layer;
    kl: mean KL(baseline || ablated) of the last-position next-token distribution on `harmless_val`.
    Candidates in pruned layers are not scored (NaN) unless `score_pruned_layers`; zero candidates
    (e.g. layer 0 at template positions) never are. With `store`, each candidate's scores are persisted
    as it finishes, so a killed sweep resumes where it stopped; its key must cover the candidates,
    prompts and refusal ids. `score_form`: the refusal score's formula (`scores_from_logits`).
    `candidates_per_forward` > 1 ablates that many candidates in one forward over as many copies of the validation
    prompts (`ablate_rows`), and its induce pass adds those of one layer to as many copies of their block input,
    where a sweep is bound by per-forward overhead; the arithmetic per row is the same,
    the batch shape is not, so on a GPU the scores can differ in their last bits from one candidate per forward.
    `packed`: every pass packs its prompts into rows (`harness.models.packing`): no padding, and the prefix every
    prompt shares (a chat template's system turn) computed once per row; the scores equal the padded pass's to float
    tolerance. Attention-only models. With both, each forward holds `candidates_per_forward` copies of the packed rows.
    """
    if candidates_per_forward < 1:
        raise SelectionError(f"candidates_per_forward must be >= 1, got {candidates_per_forward}")
    if packed:
        try:
            layer_windows(model)
        except NotAttentionOnly as err:
            raise SelectionError(f"packed selection needs attention-only layers: {err}; set packed = false") from err
    total = n_layers(model)
    if candidates.ndim != 3 or candidates.shape[0] != total:
        raise SelectionError(
            f"candidates must be [layer={total}, pos, d_model] for this model, got {tuple(candidates.shape)}"
        )
    if not harmful_val or not harmless_val:
        raise SelectionError(f"need validation prompts, got {len(harmful_val)} harmful / {len(harmless_val)} harmless")
    ids = list(refusal_ids) if refusal_ids is not None else refusal_token_ids(tokenizer)
    limit = _layer_limit(max_layer_fraction, total)
    pos_list = _resolve_positions(positions, candidates.shape[1])
    sweep = [(layer, pos) for layer in _resolve_layers(layers, total) for pos in pos_list]

    # Harmful and harmless validation prompts go through one tokenization and one forward per batch (or packed rows),
    # and the logits are reduced where they are.
    n_harmful = len(harmful_val)
    val = _passes(model, tokenizer, harmful_val + harmless_val, system=system, batch_size=batch_size, packed=packed)

    @torch.inference_mode()
    def val_logits() -> tuple[Tensor, Tensor]:  # ([n_harmful, vocab], [n_harmless, vocab]) on the model's device
        logits = torch.cat([p.logits() for p in val])
        return logits[:n_harmful], logits[n_harmful:]

    @functools.cache
    def base_logits() -> tuple[Tensor, Tensor]:  # only needed to score a candidate not yet stored
        return val_logits()

    def baseline(_: list[str]) -> list[dict[str, float]]:
        harmful, harmless = base_logits()
        return [{"harmful": float(scores_from_logits(harmful, ids, score_form).mean()),
                 "harmless": float(scores_from_logits(harmless, ids, score_form).mean())}]

    # Stored like a candidate, so a resumed sweep reports the same baseline it scored against.
    compute = store.compute if store is not None else in_memory_compute()
    base = compute(["baseline"], baseline, 1)[0]

    def score(layer: int, pos: int, ablated: tuple[Tensor, Tensor] | None = None,
              induced: Tensor | None = None) -> dict[str, float]:
        vector = candidates[layer, pos].float()
        if ablated is None:
            with ablate(model, unit(vector)):
                ablated = val_logits()
        if induced is None:
            induced = induced_logits(vector[None], layer)[0]
        harmful, harmless = ablated
        bypass = scores_from_logits(harmful, ids, score_form).mean()
        kl = next_token_kl(base_logits()[1], harmless).mean()
        induce = scores_from_logits(induced, ids, score_form).mean()
        return {"bypass_score": float(bypass), "induce_score": float(induce), "kl": float(kl)}

    @torch.inference_mode()
    def ablated_together(chosen: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """Each candidate's (harmful, harmless) ablated logits from one forward per validation batch."""
        k = len(chosen)
        directions = torch.stack([candidates[layer, pos].float() for layer, pos in chosen])  # [k, d_model]
        parts = []  # per pass: [k, prompts, vocab]
        for p in val:
            with ablate_rows(model, directions.repeat_interleave(p.rows, dim=0)):
                parts.append(p.logits(copies=k).unflatten(0, (k, -1)))
        every = torch.cat(parts, dim=1)  # [k, n_harmful + n_harmless, vocab]
        return [(every[c, :n_harmful], every[c, n_harmful:]) for c in range(k)]

    def induced_together(chosen: list[tuple[int, int]]) -> list[Tensor]:
        """Each candidate's induce-pass logits `[n_harmless, vocab]`: one pass for the candidates at each layer."""
        out = {}
        for layer in sorted({layer for layer, _ in chosen}):
            at = [candidate for candidate in chosen if candidate[0] == layer]
            out.update(zip(at, induced_logits(torch.stack([candidates[c].float() for c in at]), layer)))
        return [out[c] for c in chosen]

    zero = {(layer, pos) for layer, pos in sweep if float(candidates[layer, pos].norm()) <= EPS_NORM}
    todo = {
        candidate_id(layer, pos): (layer, pos)
        for layer, pos in sweep
        if (layer, pos) not in zero and (layer < limit or score_pruned_layers)
    }

    induced_logits = _actadd_logits(model, tokenizer, harmless_val, sorted({layer for layer, _ in todo.values()}),
                                    system=system, batch_size=batch_size, packed=packed)

    def run(batch: list[str]) -> list[dict[str, float]]:
        if len(batch) == 1:
            return [score(*todo[batch[0]])]
        chosen = [todo[c] for c in batch]
        return [score(*candidate, ablated, induced)
                for candidate, ablated, induced in zip(chosen, ablated_together(chosen), induced_together(chosen))]

    unit_ = "candidate" if candidates_per_forward == 1 else f"{candidates_per_forward} candidates"
    bar = functools.partial(tqdm, desc="direction selection", unit=unit_) if progress else None
    scored = dict(zip(todo, compute(list(todo), run, candidates_per_forward, bar)))

    unscored = {"bypass_score": math.nan, "induce_score": math.nan, "kl": math.nan}
    rows = []
    for layer, pos in sweep:
        row = {"layer": layer, "pos": pos, **scored.get(candidate_id(layer, pos), unscored)}
        reasons = _filter_reasons(row, (layer, pos) in zero, limit, total, kl_max, induce_min)
        rows.append({**row, "filtered": bool(reasons), "filter_reason": "; ".join(reasons)})
    table = pd.DataFrame(rows, columns=["layer", "pos", "bypass_score", "induce_score", "kl", "filtered", "filter_reason"])
    kept = table[~table["filtered"]].sort_values("bypass_score", kind="stable")
    table["rank"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    table.loc[kept.index, "rank"] = range(1, len(kept) + 1)

    if kept.empty:
        best = table.sort_values("bypass_score", kind="stable", na_position="last").head(5)
        lines = "\n".join(
            f"  L{r.layer} P{r.pos}: bypass={r.bypass_score:.3f} induce={r.induce_score:.3f} kl={r.kl:.4f} "
            f"-> {r.filter_reason}"
            for r in best.itertuples()
        )
        raise SelectionError(
            f"all {len(table)} candidates were filtered (max_layer_fraction={max_layer_fraction}, kl_max={kl_max}, "
            f"induce_min={induce_min}); lowest bypass scores:\n{lines}"
        )
    top = kept.iloc[0]
    layer, pos = int(top["layer"]), int(top["pos"])
    vector = candidates[layer, pos].float()
    return SelectionResult(
        table=table,
        layer=layer,
        pos=pos,
        direction=unit(vector),
        vector=vector,
        bypass_score=float(top["bypass_score"]),
        induce_score=float(top["induce_score"]),
        kl=float(top["kl"]),
        baseline_harmful=base["harmful"],
        baseline_harmless=base["harmless"],
        refusal_ids=ids,
    )
