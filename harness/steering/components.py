"""Components ranked as the INLP study ranks them, for an intervention's scope
(harness.steering.interventions.select_layers).

A component is one (layer, post-instruction position) diff-in-means candidate. Each is scored "locally": its
own unit direction ablated at its own layer only (block input and that block's residual writes), and the mean
refusal log-odds on harmful validation prompts taken (lower = the component carries more of the refusal). The
ranking covers every layer, late ones too, as the study's unfiltered pool does; a zero candidate (layer 0 at
a template position) ranks last. Scope `one` takes the first component's layer, `top_k` the layers of the
first share of components, `all` every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from harness.models.arch import n_layers
from harness.run.cache import ItemStore
from harness.steering.directions import EPS_NORM, unit
from harness.steering.interventions import ablate
from harness.steering.selection import candidate_id, refusal_score


def rank_components(
    model,
    tokenizer,
    candidates: Tensor,
    harmful_val: list[str],
    refusal_ids: Sequence[int],
    *,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    system: str | None = None,
    store: ItemStore | None = None,
) -> pd.DataFrame:
    """Rows (layer, pos, local_score, rank) for candidates `[layer, pos, d_model]`, best first; `positions`
    (negative, from the end) limits the pool. With `store` each component's score is kept as it finishes."""
    total = n_layers(model)
    if candidates.ndim != 3 or candidates.shape[0] != total:
        raise ValueError(f"candidates must be [layer={total}, pos, d_model], got {tuple(candidates.shape)}")
    if not harmful_val:
        raise ValueError("rank_components needs harmful validation prompts")
    n_pos = candidates.shape[1]
    pos_list = list(positions) if positions is not None else list(range(-n_pos, 0))
    bad = [p for p in pos_list if not -n_pos <= p < 0]
    if bad:
        raise ValueError(f"positions {bad} outside the {n_pos} post-instruction positions (-{n_pos}..-1)")
    pool = [(layer, pos) for pos in pos_list for layer in range(total)]
    todo = {candidate_id(layer, pos): (layer, pos) for layer, pos in pool
            if float(candidates[layer, pos].norm()) > EPS_NORM}

    @torch.inference_mode()
    def score(layer: int, pos: int) -> float:
        with ablate(model, unit(candidates[layer, pos].float()), layers=[layer]):
            scores = refusal_score(model, tokenizer, harmful_val, refusal_ids, batch_size=batch_size, system=system)
        return float(scores.mean())

    def run(batch: list[str]) -> list[float]:
        return [score(*todo[c]) for c in batch]

    scored = dict(zip(todo, store.compute(list(todo), run, batch_size=1) if store is not None else run(list(todo))))
    rows = [{"layer": layer, "pos": pos, "local_score": scored.get(candidate_id(layer, pos), math.nan)}
            for layer, pos in pool]
    table = pd.DataFrame(rows, columns=["layer", "pos", "local_score"])
    # NaN last, ties by position then layer: the study's sort key.
    table = table.sort_values(["local_score", "pos", "layer"], kind="stable", na_position="last").reset_index(drop=True)
    table["rank"] = range(1, len(table) + 1)
    return table


def ranked_layers(table: pd.DataFrame) -> list[int]:
    """The layer of each component in rank order (one entry per component, so a layer repeats per position)."""
    return [int(v) for v in table.sort_values("rank")["layer"]]
