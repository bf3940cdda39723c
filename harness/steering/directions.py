"""Candidate refusal directions and diagnostics of how well they separate harmful from harmless.

Diff-in-means is the paper's estimator; INLP (iterative nullspace projection) is the comparison
method that finds *every* linearly decodable harmfulness direction, not just the mean difference.
`layer_auc` and the stability helpers say whether a direction is real or an artefact of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS_NORM = 1e-8


class DirectionError(ValueError):
    """Inputs that cannot give a direction (shape mismatch, empty class, zero vector)."""


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise DirectionError(f"{what}: harmful shape {tuple(a.shape)} != harmless shape {tuple(b.shape)}")


def diff_in_means(harmful_means: Tensor, harmless_means: Tensor) -> Tensor:
    """Candidates `[layer, pos, d]` = mean harmful minus mean harmless activation (unnormalized, as the
    magnitude is what ActAdd adds)."""
    _check_same_shape(harmful_means, harmless_means, "diff_in_means")
    return harmful_means.float() - harmless_means.float()


def unit(v: Tensor) -> Tensor:
    """`v / ||v||` along the last dim; a zero vector is an error, not a silent NaN."""
    v = v.float()
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm <= EPS_NORM).any()):
        raise DirectionError(f"cannot normalize a zero-norm direction (shape {tuple(v.shape)})")
    return v / norm


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity along the last dim, broadcasting over leading dims."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=EPS_NORM)


def project_out(x: Tensor, basis: Tensor) -> Tensor:
    """Remove the span of the orthonormal rows of `basis` `[k, d]` from `x` `[..., d]`."""
    if basis.numel() == 0:
        return x
    basis = basis.to(x.dtype)
    return x - (x @ basis.T) @ basis


# ---------------------------------------------------------------------------------------------- INLP


@dataclass(frozen=True)
class InlpResult:
    basis: Tensor  # [k, d], orthonormal rows; the removed subspace
    accuracies: list[float]  # held-out balanced accuracy of each classifier fitted, the last one below the stop rule


def _split(n: int, holdout: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_test = max(1, round(n * holdout))
    if n_test >= n:
        raise DirectionError(f"holdout={holdout} leaves no training prompts out of {n}")
    return perm[n_test:], perm[:n_test]


def _fit_logistic(x: Tensor, y: Tensor, l2: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """Class-balanced, L2-regularized logistic regression (LBFGS); returns (w [d], b [])."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    pos = y.sum()
    weights = torch.where(y > 0, 0.5 / pos, 0.5 / (len(y) - pos))
    opt = torch.optim.LBFGS([w, b], max_iter=max_steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x @ w + b
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _balanced_accuracy(scores: Tensor, y: Tensor) -> float:
    pred = scores > 0
    tpr = (pred & (y > 0)).sum() / (y > 0).sum()
    tnr = (~pred & (y == 0)).sum() / (y == 0).sum()
    return float((tpr + tnr) / 2)


def inlp(
    harmful: Tensor,
    harmless: Tensor,
    *,
    max_iter: int = 10,
    chance_margin: float = 0.05,
    seed: int = 0,
    holdout: float = 0.25,
    l2: float = 1e-3,
    max_steps: int = 200,
) -> InlpResult:
    """Iterative nullspace projection (Ravfogel et al. 2020) on `harmful [n, d]` vs `harmless [m, d]`.

    Each round fits a linear classifier on the data with the basis so far projected out, and stops once
    its held-out balanced accuracy is within `chance_margin` of chance (0.5): that classifier's weight is
    not added, since it found nothing. Held-out accuracy is the stop rule because with n < d a training
    set is always separable.
    """
    if harmful.ndim != 2 or harmless.ndim != 2 or harmful.shape[1] != harmless.shape[1]:
        raise DirectionError(
            f"inlp needs [n, d] and [m, d] activations, got {tuple(harmful.shape)} and {tuple(harmless.shape)}"
        )
    if len(harmful) < 2 or len(harmless) < 2:
        raise DirectionError(f"inlp needs >= 2 prompts per class, got {len(harmful)} and {len(harmless)}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([harmful, harmless]).double()
    y = torch.cat([torch.ones(len(harmful)), torch.zeros(len(harmless))]).double()
    tr_h, te_h = _split(len(harmful), holdout, gen)
    tr_b, te_b = _split(len(harmless), holdout, gen)
    train = torch.cat([tr_h, tr_b + len(harmful)])
    test = torch.cat([te_h, te_b + len(harmful)])
    mean = x[train].mean(0)
    x = x - mean
    x = x / x[train].pow(2).sum(1).mean().sqrt().clamp_min(EPS_NORM)  # scale-free L2 across layers

    d = x.shape[1]
    basis = torch.zeros(0, d, dtype=torch.float64)
    accuracies: list[float] = []
    for _ in range(min(max_iter, d)):
        xp = project_out(x, basis)
        w, b = _fit_logistic(xp[train], y[train], l2, max_steps)
        acc = _balanced_accuracy(xp[test] @ w + b, y[test])
        accuracies.append(acc)
        if acc <= 0.5 + chance_margin:
            break
        w = project_out(w, basis)  # numerically re-orthogonalize before adding
        norm = w.norm()
        if norm <= EPS_NORM:
            break
        basis = torch.cat([basis, (w / norm)[None]])
    return InlpResult(basis=basis.float(), accuracies=accuracies)


# ----------------------------------------------------------------------------------------------- AUC


def roc_auc(positive: Tensor, negative: Tensor) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney U statistic / (n m),
    from average ranks so ties count half."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise DirectionError(f"roc_auc needs both classes, got {positive.numel()} and {negative.numel()} scores")
    scores = torch.cat([positive.flatten(), negative.flatten()]).double()
    ranks = _average_ranks(scores)
    n, m = positive.numel(), negative.numel()
    u = ranks[:n].sum() - n * (n + 1) / 2
    return float(u / (n * m))


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks; tied values all get the mean of the ranks they span."""
    sorted_x, order = torch.sort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(x)
    ranks[order] = mean_rank[inverse]
    return ranks


def layer_auc(harmful: Tensor, harmless: Tensor, direction: Tensor) -> list[float]:
    """Per-layer ROC AUC of the projection onto `direction` (`[d]` for all layers or `[layer, d]`), harmful
    as the positive class. Pass held-out prompts: on the fitting prompts it is optimistic."""
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise DirectionError(
            f"layer_auc needs [n, layer, d] and [m, layer, d], got {tuple(harmful.shape)} and {tuple(harmless.shape)}"
        )
    n_layer, d = harmful.shape[1:]
    dirs = direction.float().expand(n_layer, d) if direction.ndim == 1 else direction.float()
    if dirs.shape != (n_layer, d):
        raise DirectionError(f"layer_auc: direction shape {tuple(direction.shape)} fits neither [{d}] nor [{n_layer}, {d}]")
    proj_h = torch.einsum("nld,ld->nl", harmful.float(), dirs)  # [n, layer]
    proj_b = torch.einsum("nld,ld->nl", harmless.float(), dirs)  # [m, layer]
    return [roc_auc(proj_h[:, layer], proj_b[:, layer]) for layer in range(n_layer)]


def crossval_layer_auc(harmful: Tensor, harmless: Tensor, *, folds: int = 5, paired: bool = False,
                       seed: int = 0) -> list[float]:
    """Per-layer ROC AUC of each prompt's projection on the diff-in-means fitted without its fold: what
    `layer_auc` on the fitting prompts overstates. `paired` (row i of both sets is the same prompt, e.g. without
    and with a system prompt) keeps a pair in one fold, so no prompt is scored by a direction fitted on its twin."""
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise DirectionError(f"crossval_layer_auc needs [n, layer, d] and [m, layer, d], got {tuple(harmful.shape)} "
                             f"and {tuple(harmless.shape)}")
    n, m = harmful.shape[0], harmless.shape[0]
    if paired and n != m:
        raise DirectionError(f"crossval_layer_auc: paired sets need equal sizes, got {n} and {m}")
    if not 2 <= folds <= min(n, m):
        raise DirectionError(f"crossval_layer_auc: folds must be in [2, {min(n, m)}], got {folds}")
    gen = torch.Generator().manual_seed(seed)
    fold_h = torch.randperm(n, generator=gen) % folds
    fold_b = fold_h.clone() if paired else torch.randperm(m, generator=gen) % folds
    proj_h = torch.empty(n, harmful.shape[1])  # [n, layer]
    proj_b = torch.empty(m, harmful.shape[1])
    for k in range(folds):
        held_h, held_b = fold_h == k, fold_b == k
        dirs = harmful[~held_h].float().mean(0) - harmless[~held_b].float().mean(0)  # [layer, d]
        proj_h[held_h] = torch.einsum("nld,ld->nl", harmful[held_h].float(), dirs)
        proj_b[held_b] = torch.einsum("nld,ld->nl", harmless[held_b].float(), dirs)
    return [roc_auc(proj_h[:, layer], proj_b[:, layer]) for layer in range(harmful.shape[1])]


# ----------------------------------------------------------------------------------------- stability


def subset_directions(
    harmful: Tensor, harmless: Tensor, *, n_subsets: int, subset_size: int, seed: int = 0
) -> Tensor:
    """Diff-in-means directions `[n_subsets, d]` (unit) each fit on a random `subset_size` of each class
    (`harmful [n, d]`, `harmless [m, d]`), to measure how much a direction depends on the sample."""
    if subset_size > min(len(harmful), len(harmless)) or subset_size < 1:
        raise DirectionError(
            f"subset_size={subset_size} must be in [1, min({len(harmful)}, {len(harmless)})]"
        )
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_subsets):
        ih = torch.randperm(len(harmful), generator=gen)[:subset_size]
        ib = torch.randperm(len(harmless), generator=gen)[:subset_size]
        out.append(unit(harmful[ih].float().mean(0) - harmless[ib].float().mean(0)))
    return torch.stack(out)


def pairwise_cosines(directions: Tensor) -> Tensor:
    """Cosines `[k*(k-1)/2]` between every pair of rows of `directions [k, d]`."""
    if directions.ndim != 2 or len(directions) < 2:
        raise DirectionError(f"pairwise_cosines needs [k>=2, d], got {tuple(directions.shape)}")
    u = unit(directions)
    sims = u @ u.T
    i, j = torch.triu_indices(len(u), len(u), offset=1)
    return sims[i, j]


def stability_summary(directions: Tensor, reference: Tensor | None = None) -> dict[str, float]:
    """Mean/min pairwise cosine of `directions [k, d]`, and mean/min cosine to `reference [d]` if given."""
    pair = pairwise_cosines(directions)
    out = {"pairwise_mean": float(pair.mean()), "pairwise_min": float(pair.min())}
    if reference is not None:
        ref = cosine(directions, reference)
        out |= {"reference_mean": float(ref.mean()), "reference_min": float(ref.min())}
    return out



# ------------------------------------------------------------------------------------------ per layer


def without_safe_mean(diff: Tensor, safe_mean: Tensor) -> Tensor:
    """`diff [..., d]` minus its component along the unit `safe_mean [..., d]` (row by row): what is left
    does not point along the harmless prompts' mean activation."""
    _check_same_shape(diff, safe_mean, "without_safe_mean")
    axis = unit(safe_mean)
    diff = diff.float()
    return diff - (diff * axis).sum(-1, keepdim=True) * axis


def per_layer_directions(harmful: Tensor, harmless: Tensor, *, safe_mean_projection: bool = False) -> Tensor:
    """Unit directions `[layer, d]`, one per layer, from per-prompt activations `harmful [n, layer, d]` and
    `harmless [m, layer, d]`: mean harmful minus mean harmless (means in float64), optionally without its
    component along the unit harmless mean (`without_safe_mean`)."""
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise DirectionError(f"per_layer_directions needs [n, layer, d] and [m, layer, d], got "
                             f"{tuple(harmful.shape)} and {tuple(harmless.shape)}")
    if len(harmful) == 0 or len(harmless) == 0:
        raise DirectionError(f"per_layer_directions needs both classes, got {len(harmful)} and {len(harmless)} prompts")
    safe = harmless.double().mean(0)
    diff = harmful.double().mean(0) - safe
    if safe_mean_projection:
        diff = without_safe_mean(diff.double(), safe).double()
    return unit(diff)


def area_split_cosines(
    acts: Tensor,
    harmful: Tensor,
    areas: list[str],
    budgets: list[int],
    repeats: int,
    seed: int,
    *,
    safe_mean_projection: bool = False,
) -> list[dict]:
    """Per-layer direction stability across policy areas: for each budget (in order) and repeat, draw
    `budget` of the sorted distinct `areas` with one `numpy.random.default_rng(seed)` shared by every draw
    (`Generator.choice` without replacement), fit per-layer directions on the drawn areas and on the rest,
    and take each layer's cosine between the two. `acts [n, layer, d]`, `harmful [n]` bool, `areas [n]`.
    Returns one row per budget: the areas drawn, mean prompt counts, and the per-layer cosines of every
    repeat (`cosines [repeat][layer]`)."""
    import numpy as np

    if acts.ndim != 3 or len(acts) != len(harmful) or len(acts) != len(areas):
        raise DirectionError(f"area_split_cosines: acts {tuple(acts.shape)}, {len(harmful)} labels, {len(areas)} areas")
    pool = np.array(sorted(set(areas)))
    bad = [b for b in budgets if not 0 < b < len(pool)]
    if bad:
        raise DirectionError(f"budgets {bad} must lie between 1 and {len(pool) - 1} (there are {len(pool)} areas)")
    area_arr = np.asarray(areas)
    harmful = torch.tensor(np.asarray(harmful, dtype=bool))
    rng = np.random.default_rng(seed)

    def fit(mask: np.ndarray) -> Tensor:
        m = torch.as_tensor(mask)
        return per_layer_directions(acts[m & harmful], acts[m & ~harmful], safe_mean_projection=safe_mean_projection)

    rows = []
    for budget in budgets:
        draws, cosines, used, held = [], [], [], []
        for _ in range(repeats):
            drawn = rng.choice(pool, size=budget, replace=False)
            used_mask = np.isin(area_arr, drawn)
            cosines.append((fit(used_mask) * fit(~used_mask)).sum(-1).tolist())
            draws.append(sorted(str(a) for a in drawn))
            used.append(int(used_mask.sum()))
            held.append(int((~used_mask).sum()))
        rows.append({"budget": budget, "held_out_areas": len(pool) - budget, "areas": draws, "cosines": cosines,
                     "used_prompts": int(np.mean(used)), "held_out_prompts": int(np.mean(held))})
    return rows


def layer_cosine_summary(cosines: list[list[float]], quantile: float = 0.10) -> dict[str, float]:
    """Median and `quantile` (linear interpolation, numpy's default) of every per-layer cosine of every
    repeat pooled together, as a per-layer stability table reports them."""
    import numpy as np

    pooled = np.concatenate([np.asarray(c, dtype=np.float64) for c in cosines])
    if pooled.size == 0:
        raise DirectionError("layer_cosine_summary needs at least one cosine")
    return {"median": float(np.median(pooled)), f"p{round(100 * quantile)}": float(np.quantile(pooled, quantile))}
