"""Math of the direction estimators and diagnostics, on synthetic data with known answers."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.steering.directions import (
    DirectionError,
    cosine,
    diff_in_means,
    inlp,
    layer_auc,
    pairwise_cosines,
    project_out,
    roc_auc,
    stability_summary,
    subset_directions,
    unit,
)


def _planted(n: int, d: int, shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian blobs that differ only along a random unit vector v, by `shift`."""
    gen = torch.Generator().manual_seed(seed)
    v = unit(torch.randn(d, generator=gen))
    harmful = torch.randn(n, d, generator=gen) + shift * v
    harmless = torch.randn(n, d, generator=gen)
    return harmful, harmless, v


def test_diff_in_means_matches_hand_computation():
    harmful_means = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])  # [layer=1, pos=2, d=2]
    harmless_means = torch.tensor([[[0.5, 2.0], [4.0, 1.0]]])
    expected = torch.tensor([[[0.5, 0.0], [-1.0, 4.0]]])
    assert torch.equal(diff_in_means(harmful_means, harmless_means), expected)


def test_diff_in_means_rejects_mismatched_shapes():
    with pytest.raises(DirectionError, match=r"\(2, 3\).*\(2, 4\)"):
        diff_in_means(torch.zeros(2, 3), torch.zeros(2, 4))


def test_unit_and_cosine():
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(unit(v), torch.tensor([0.6, 0.8]))
    assert float(cosine(v, -2 * v)) == pytest.approx(-1.0)
    assert float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))) == pytest.approx(0.0)
    with pytest.raises(DirectionError, match="zero-norm"):
        unit(torch.zeros(4))


def test_project_out_removes_span():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 3, generator=gen))
    basis = q.T  # [3, 8] orthonormal
    x = torch.randn(5, 8, generator=gen)
    assert torch.allclose(project_out(x, basis) @ basis.T, torch.zeros(5, 3), atol=1e-5)


def test_inlp_basis_orthonormal_and_removes_planted_separation():
    harmful, harmless, v = _planted(n=200, d=16, shift=4.0, seed=0)
    result = inlp(harmful, harmless, max_iter=6, chance_margin=0.05, seed=0)
    k = result.basis.shape[0]
    assert k >= 1
    assert torch.allclose(result.basis @ result.basis.T, torch.eye(k), atol=1e-5)
    # the first classifier finds the planted direction and separates well above chance
    assert result.accuracies[0] > 0.9
    assert abs(float(cosine(result.basis[0], v))) > 0.8
    # it stopped because held-out accuracy came within the margin of chance, not at max_iter
    assert len(result.accuracies) == k + 1
    assert result.accuracies[-1] <= 0.55
    # the planted direction lies (almost) inside the removed subspace
    assert float(project_out(v[None], result.basis).norm()) < 0.3
    # a fresh classifier on the projected data is near chance
    after = inlp(project_out(harmful, result.basis), project_out(harmless, result.basis), max_iter=1, seed=3)
    assert after.accuracies[0] < 0.62


def test_inlp_on_indistinguishable_data_adds_nothing():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(150, 12, generator=gen), torch.randn(150, 12, generator=gen)
    result = inlp(a, b, max_iter=5, chance_margin=0.1, seed=0)
    assert result.basis.shape == (0, 12)
    assert len(result.accuracies) == 1


def test_inlp_rejects_bad_shapes():
    with pytest.raises(DirectionError, match="inlp needs"):
        inlp(torch.zeros(10, 4), torch.zeros(10, 5))


def _brute_force_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    total = 0.0
    for p, q in itertools.product(pos.tolist(), neg.tolist()):
        total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def test_roc_auc_matches_pair_count_with_ties():
    gen = torch.Generator().manual_seed(2)
    pos = torch.randint(0, 5, (23,), generator=gen).float()  # many ties
    neg = torch.randint(0, 4, (17,), generator=gen).float()
    assert roc_auc(pos, neg) == pytest.approx(_brute_force_auc(pos, neg), abs=1e-12)
    assert roc_auc(torch.ones(3), torch.ones(4)) == pytest.approx(0.5)


def test_layer_auc_separable_random_and_brute_force():
    gen = torch.Generator().manual_seed(3)
    n, m, n_layer, d = 30, 25, 3, 6
    harmful = torch.randn(n, n_layer, d, generator=gen)
    harmless = torch.randn(m, n_layer, d, generator=gen)
    e0 = torch.zeros(d)
    e0[0] = 1.0
    harmful[:, 0, 0] += 100.0  # layer 0 perfectly separable along e0
    aucs = layer_auc(harmful, harmless, e0)
    assert aucs[0] == 1.0
    assert layer_auc(harmless, harmful, e0)[0] == 0.0
    for layer in range(n_layer):
        assert aucs[layer] == pytest.approx(_brute_force_auc(harmful[:, layer, 0], harmless[:, layer, 0]))
    # per-layer directions [layer, d]
    dirs = unit(torch.randn(n_layer, d, generator=gen))
    per_layer = layer_auc(harmful, harmless, dirs)
    assert per_layer[2] == pytest.approx(_brute_force_auc(harmful[:, 2] @ dirs[2], harmless[:, 2] @ dirs[2]))


def test_layer_auc_random_is_near_half():
    gen = torch.Generator().manual_seed(4)
    harmful = torch.randn(400, 2, 8, generator=gen)
    harmless = torch.randn(400, 2, 8, generator=gen)
    for auc in layer_auc(harmful, harmless, unit(torch.randn(8, generator=gen))):
        assert abs(auc - 0.5) < 0.06


def test_layer_auc_rejects_wrong_direction_shape():
    with pytest.raises(DirectionError, match="direction shape"):
        layer_auc(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4))


def test_subset_directions_stable_for_strong_signal_unstable_for_none():
    harmful, harmless, v = _planted(n=120, d=32, shift=3.0, seed=6)
    dirs = subset_directions(harmful, harmless, n_subsets=5, subset_size=40, seed=0)
    assert dirs.shape == (5, 32)
    summary = stability_summary(dirs, reference=v)
    assert summary["pairwise_min"] > 0.7
    assert summary["reference_min"] > 0.8
    gen = torch.Generator().manual_seed(7)
    noise = subset_directions(
        torch.randn(120, 32, generator=gen), torch.randn(120, 32, generator=gen), n_subsets=5, subset_size=40
    )
    assert float(pairwise_cosines(noise).mean()) < 0.6


def test_subset_directions_rejects_oversized_subset():
    with pytest.raises(DirectionError, match="subset_size=11"):
        subset_directions(torch.zeros(10, 3), torch.zeros(12, 3), n_subsets=2, subset_size=11)


# ------------------------------------------------------------------------------ per-layer directions


def test_per_layer_directions_are_each_layers_own_diff_in_means():
    from harness.steering.directions import per_layer_directions

    gen = torch.Generator().manual_seed(5)
    harmful, harmless = torch.randn(30, 4, 16, generator=gen) + 1.0, torch.randn(20, 4, 16, generator=gen)
    dirs = per_layer_directions(harmful, harmless)
    assert dirs.shape == (4, 16)
    for layer in range(4):
        hand = harmful[:, layer].double().mean(0) - harmless[:, layer].double().mean(0)
        torch.testing.assert_close(dirs[layer].double(), hand / hand.norm(), atol=1e-6, rtol=0)
    # A layer's direction depends on that layer's activations only.
    moved = harmful.clone()
    moved[:, 2] += 5.0
    again = per_layer_directions(moved, harmless)
    torch.testing.assert_close(again[[0, 1, 3]], dirs[[0, 1, 3]])
    assert float(cosine(again[2], dirs[2])) < 0.99


def test_safe_mean_projection_removes_the_safe_mean_component():
    """unsafe mean - safe mean, minus its component along the unit safe mean, normalised: worked by hand."""
    from harness.steering.directions import per_layer_directions

    harmless = torch.tensor([[[2.0, 0.0, 0.0]], [[4.0, 0.0, 0.0]]])  # safe mean (3, 0, 0)
    harmful = torch.tensor([[[5.0, 4.0, 0.0]], [[5.0, 4.0, 0.0]]])  # diff (2, 4, 0)
    torch.testing.assert_close(per_layer_directions(harmful, harmless)[0], unit(torch.tensor([2.0, 4.0, 0.0])))
    torch.testing.assert_close(per_layer_directions(harmful, harmless, safe_mean_projection=True)[0],
                               torch.tensor([0.0, 1.0, 0.0]))
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 3, 8, generator=gen) + 2, torch.randn(12, 3, 8, generator=gen) + 1
    dirs = per_layer_directions(a, b, safe_mean_projection=True)
    assert float((dirs * unit(b.mean(0))).sum(-1).abs().max()) < 1e-6
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3))


def test_per_layer_directions_reject_bad_shapes():
    from harness.steering.directions import per_layer_directions

    with pytest.raises(DirectionError, match="layer, d"):
        per_layer_directions(torch.zeros(3, 2, 4), torch.zeros(3, 3, 4))
    with pytest.raises(DirectionError, match="both classes"):
        per_layer_directions(torch.zeros(0, 2, 4), torch.ones(3, 2, 4))


def test_area_split_cosines_draw_as_the_seeded_numpy_generator_and_pool_layers():
    """Areas drawn with one default_rng(seed) over budgets in order; each repeat's per-layer cosines between the
    drawn areas' directions and the rest's; median / p10 pooled over repeats and layers."""
    import numpy as np

    from harness.steering.directions import area_split_cosines, layer_cosine_summary, per_layer_directions

    gen = torch.Generator().manual_seed(2)
    areas = [f"area{k:02d}" for k in range(6) for _ in range(8)]
    harmful = np.array([i % 2 == 0 for i in range(len(areas))])
    acts = torch.randn(len(areas), 3, 10, generator=gen) + torch.as_tensor(harmful)[:, None, None] * 0.7
    rows = area_split_cosines(acts, harmful, areas, [2, 4], 3, seed=11, safe_mean_projection=True)

    rng, pool = np.random.default_rng(11), np.array(sorted(set(areas)))
    for row, budget in zip(rows, [2, 4]):
        assert row["budget"] == budget and row["held_out_areas"] == 6 - budget
        assert (row["used_prompts"], row["held_out_prompts"]) == (8 * budget, 8 * (6 - budget))
        for drawn, layer_cos in zip(row["areas"], row["cosines"]):
            expected = rng.choice(pool, size=budget, replace=False)
            assert drawn == sorted(expected.tolist())
            used = torch.as_tensor(np.isin(areas, expected))
            lab = torch.as_tensor(harmful)
            a = per_layer_directions(acts[used & lab], acts[used & ~lab], safe_mean_projection=True)
            b = per_layer_directions(acts[~used & lab], acts[~used & ~lab], safe_mean_projection=True)
            np.testing.assert_allclose(layer_cos, (a * b).sum(-1).numpy(), atol=1e-6)
    summary = layer_cosine_summary(rows[0]["cosines"])
    pooled = np.array(rows[0]["cosines"]).ravel()
    assert summary == {"median": float(np.median(pooled)), "p10": float(np.quantile(pooled, 0.1))}
    with pytest.raises(DirectionError, match="between 1 and 5"):
        area_split_cosines(acts, harmful, areas, [6], 1, seed=0)
