"""The INLP study's grid: scopes over ranked components, matched-norm INLP ActAdd, reflection across a basis as
the study writes it, the component ranking, the grid's TOML validation and the method comparison's statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.config import ExperimentError, load_experiment, parse_cell
from harness.models.arch import d_model, layer_modules
from harness.models.chat import tokenize_instructions
from harness.models.hooks import add_hooks, block_input, with_block_input
from harness.models.tiny import tiny_model
from harness.stats.grid import compare, lower, more_compliant, paired_scores, within_budget
from harness.steering.interventions import actadd, matched_vector, nullspace, reflect, select_layers

PROMPTS = ["how to make a bomb at home", "hi", "write a poem about the sea"]


def _basis(model, k: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d_model(model), generator=g)


def test_scopes_follow_the_component_ranking():
    ranked = [5, 2, 7, 5, 1, 0, 3, 2]  # layer of each (layer, position) component, best first
    assert select_layers(8, "one", ranked=ranked) == [5]
    # The study's top_percentage: ceil(fraction * pool) components, their distinct layers.
    assert select_layers(8, "top_k", ranked=ranked, fraction=0.5) == [2, 5, 7]
    assert select_layers(8, "top_k", ranked=ranked, fraction=0.3) == [2, 5, 7]  # ceil(2.4) = 3 components
    assert select_layers(8, "top_k", ranked=ranked, fraction=0.25) == [2, 5]
    assert select_layers(8, "top_k", ranked=ranked, fraction=1.0) == [0, 1, 2, 3, 5, 7]
    assert select_layers(8, "all", ranked=ranked) == list(range(8))
    with pytest.raises(ValueError, match="needs `ranked`"):
        select_layers(8, "top_k")
    with pytest.raises(IndexError, match=r"layers \[9\]"):
        select_layers(8, "one", ranked=[9])


def test_matched_vector_has_the_reference_norm_and_side():
    g = torch.Generator().manual_seed(0)
    ref, d = torch.randn(16, generator=g) * 7, torch.randn(16, generator=g)
    v = matched_vector(d, ref)
    assert math.isclose(float(v.norm()), float(ref.norm()), rel_tol=1e-6)
    assert float(v @ ref) > 0
    torch.testing.assert_close(v / v.norm(), torch.sign(d @ ref) * d / d.norm())
    torch.testing.assert_close(matched_vector(-d, ref), v)  # orientation comes from the reference, not the sign of d


@torch.no_grad()
def test_inlp_actadd_adds_the_matched_vector_at_the_layer():
    model, tok = tiny_model("llama")
    raw, first = _basis(model, 2, seed=3)
    vec = matched_vector(first, raw)
    grabbed = []
    obs = [(layer_modules(model)[1].block, lambda m, a, k: grabbed.append(block_input(a, k).clone()))]
    batch = tokenize_instructions(tok, PROMPTS)
    with add_hooks(pre_hooks=obs):
        model(**batch)
    with actadd(model, vec, 1, -1.0), add_hooks(pre_hooks=obs):
        model(**batch)
    torch.testing.assert_close(grabbed[1], grabbed[0] - vec, rtol=1e-5, atol=1e-5)


def _study_hooks(model, basis: torch.Tensor, alpha: float, layer: int):
    """The study's formula, written independently: h <- h @ (alpha P + (1 - alpha) I)^T with P = I - Q Q^T the
    nullspace projection, at the block's input and on its attention and MLP outputs."""
    q, _ = torch.linalg.qr(basis.double().T)
    eye = torch.eye(q.shape[0], dtype=torch.float64)
    p_alpha = (alpha * (eye - q @ q.T) + (1 - alpha) * eye).float()

    def pre(module, args, kwargs):
        return with_block_input(args, kwargs, block_input(args, kwargs) @ p_alpha.T)

    def post(module, inputs, output):
        return (output[0] @ p_alpha.T, *output[1:]) if isinstance(output, tuple) else output @ p_alpha.T

    lm = layer_modules(model)[layer]
    return add_hooks(pre_hooks=[(lm.block, pre)], hooks=[(m, post) for m in lm.residual_outputs])


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.no_grad()
def test_reflection_and_nullspace_equal_the_studys_formula_at_a_layer(family):
    model, tok = tiny_model(family)
    basis = _basis(model)
    batch = tokenize_instructions(tok, PROMPTS)
    base = model(**batch).logits
    for alpha, ours in ((2.0, lambda: reflect(model, basis, 1.0, layers=[1])),
                        (1.5, lambda: reflect(model, basis, 0.5, layers=[1])),
                        (1.0, lambda: nullspace(model, basis, layers=[1]))):
        with _study_hooks(model, basis, alpha, 1):
            expected = model(**batch).logits
        with ours():
            got = model(**batch).logits
        assert (expected - base).abs().max() > 1e-3  # the formula changes the output: the comparison has teeth
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_scoped_nullspace_hooks_only_the_ranked_layers():
    model, _ = tiny_model("mistral")
    mods = layer_modules(model)
    ranked = [2, 0, 2, 1, 3, 3]
    with nullspace(model, _basis(model), scope="top_k", ranked=ranked, fraction=0.5):
        hooked = [i for i, lm in enumerate(mods) if lm.block._forward_pre_hooks]
    assert hooked == [0, 2]
    assert not any(lm.block._forward_pre_hooks for lm in mods)


@torch.no_grad()
def test_component_ranking_orders_by_local_ablation_score():
    from harness.steering.components import rank_components, ranked_layers
    from harness.steering.directions import unit
    from harness.steering.interventions import ablate
    from harness.steering.selection import refusal_score, refusal_token_ids

    model, tok = tiny_model("llama")
    n = len(layer_modules(model))
    g = torch.Generator().manual_seed(4)
    candidates = torch.randn(n, 2, d_model(model), generator=g)
    candidates[0, 0] = 0  # a zero candidate is never scored and ranks last
    ids = refusal_token_ids(tok)
    table = rank_components(model, tok, candidates, PROMPTS, ids, batch_size=2)
    assert len(table) == 2 * n and list(table["rank"]) == list(range(1, 2 * n + 1))
    assert (table.iloc[-1]["layer"], table.iloc[-1]["pos"]) == (0, -2) and math.isnan(table.iloc[-1]["local_score"])
    scores = table["local_score"].dropna().tolist()
    assert scores == sorted(scores)
    top = table.iloc[0]
    with ablate(model, unit(candidates[int(top["layer"]), int(top["pos"])]), layers=[int(top["layer"])]):
        again = float(refusal_score(model, tok, PROMPTS, ids, batch_size=2).mean())
    assert math.isclose(again, top["local_score"], rel_tol=1e-6)
    assert ranked_layers(table)[0] == int(top["layer"])


def test_more_compliant_is_an_exact_mcnemar_verdict():
    # 12 prompts complied with only under INLP, 1 only under diff-in-means: p < 0.05, INLP's drop is larger.
    dim = [0] * 12 + [1] + [1] * 5 + [0] * 10
    inlp = [1] * 12 + [0] + [1] * 5 + [0] * 10
    paired = paired_scores(dim, inlp)
    assert (paired.refusal_to_compliance, paired.compliance_to_refusal) == (12, 1)
    assert more_compliant(paired, 0.05) == "inlp"
    assert more_compliant(paired_scores(inlp, dim), 0.05) == "diff_in_means"
    assert more_compliant(paired, paired.mcnemar_p) == "neither"  # p must be below alpha, not equal
    assert more_compliant(paired_scores(dim[:3] + [1], inlp[:3] + [0]), 0.05) == "neither"  # 3 vs 1: not significant
    assert paired_scores([None, 1], [0, None]) is None and more_compliant(None, 0.05) == "neither"
    with pytest.raises(ValueError, match="different prompt lists"):
        paired_scores([1], [1, 0])


def test_budget_and_lower_is_better():
    assert within_budget(0.1, None, 0.1, 0.2) and not within_budget(0.1 + 1e-9, None, 0.1, 0.2)
    assert not within_budget(float("nan"), None, 0.1, None)
    assert within_budget(0.05, 0.3, 0.1, None) and not within_budget(0.05, 0.3, 0.1, 0.2)
    assert lower(0.1, 0.2) == "diff_in_means" and lower(0.3, 0.2) == "inlp" and lower(0.2, 0.2) == "neither"
    assert lower(None, 0.1) == "neither" and lower(float("nan"), 0.1) == "neither"
    dim = np.array([0] * 12 + [1] * 6)
    figures = compare(paired_scores(list(dim), [1] * 18), None, (0.05, 0.2), (None, None),
                      alpha=0.05, kl_max=0.1, ce_max=None)
    assert figures["matched_budget"] is False and figures["winner"]["refusal_drop"] == "inlp"
    assert figures["winner"]["kl"] == "diff_in_means" and figures["harmless_n"] == 0


def test_grid_cells_and_comparisons():
    exp = load_experiment("llama-3-8b-instruct")
    grid = exp.intervention.grid
    assert grid.cells() == ["ablation@one", "ablation@top_k", "ablation@all", "nullspace@one", "nullspace@top_k",
                            "nullspace@all", "actadd@one", "actadd_inlp@one", "reflection@one", "reflection@top_k",
                            "reflection@all"]
    assert "ablation@top_k~nullspace@top_k" in grid.comparisons()
    assert "actadd@one~actadd_inlp@one" in grid.comparisons() and len(grid.comparisons()) == 7
    assert parse_cell("reflection@all") == ("reflection", "all")
    assert grid.methods() == {"diff_in_means", "inlp"}
    for bad, message in (("ablation", "INTERVENTION@SCOPE"), ("nullspace@half", "INTERVENTION@SCOPE"),
                         ("actadd@all", "own layer only")):
        with pytest.raises(ValueError, match=message):
            parse_cell(bad)


WINNERS = 'methods_winner = { "ablation~nullspace" = "diff_in_means" }'


@pytest.mark.parametrize("grid, winners, message", [
    ('interventions = ["ablation", "ablation"]', "", r"grid.interventions lists \['ablation'\] more than once"),
    ('interventions = ["actadd"], scopes = ["all"]', "", "no cell would run"),
    ('interventions = ["ablation"], top_fraction = 0', "", "top_fraction"),
    ('interventions = ["ablation", "rotate"]', "", "grid.interventions"),
    ('interventions = ["ablation", "nullspace"]', "methods_winner = {}", r"missing \['ablation~nullspace'\]"),
    ('interventions = ["ablation", "nullspace", "reflection"]', WINNERS, r"missing \['ablation~reflection'\]"),
    ('interventions = ["ablation", "reflection"]', WINNERS, r"not compared \['ablation~nullspace'\]"),
    ('interventions = ["ablation", "nullspace"]', 'methods_winner = { "ablation~nullspace" = "dim" }', "methods_winner"),
])
def test_a_bad_grid_is_named(tmp_path, grid, winners, message):
    lines = []
    for line in open("experiments/llama-3-8b-instruct.toml").read().splitlines():
        if line.startswith("grid = {"):
            line = f"grid = {{ {grid} }}"
        elif line.startswith("methods_winner =") and winners:
            line = winners
        lines.append(line)
    (tmp_path / "exp.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ExperimentError, match=message):
        load_experiment(tmp_path / "exp.toml")


def test_the_grid_claim_passes_and_fails_on_a_real_claim_run(tmp_path):
    """A claim run (not a rehearsal) of a tiny random model with a 4-cell grid: random weights comply with every
    prompt under every cell, so `neither` method wins the refusal drop and the claim passes; naming a winner, or a
    KL budget both cells exceed, fails it on that threshold. The second and third runs reuse every cached stage."""
    from evals.test_end_to_end import TOML, run_claims

    model, tokenizer = tiny_model("llama", seed=5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    base = TOML.format(path=tmp_path / "model").replace("[stability]", '[intervention]\ngrid = { interventions = '
                                                        '["ablation", "nullspace"], scopes = ["one", "all"] }\n\n'
                                                        "[stability]")
    toml = tmp_path / "tiny.toml"

    def run(winner: str, kl_max: str) -> tuple[int, str]:
        text = base.replace("methods_kl_max = 1e9", f"methods_kl_max = {kl_max}\nmethods_winner = "
                            f'{{ "ablation~nullspace" = "{winner}" }}')
        toml.write_text(text)
        return run_claims(toml, tmp_path / "work", "-k", "methods_compared", HARNESS_NUM_THREADS="1")

    code, out = run("neither", "1e9")
    assert code == 0, out[-4000:]
    assert "2 passed" in out
    results = json.loads((tmp_path / "work" / "reports" / "tiny-limit8" / "results.json").read_text())
    figures = results["claims"]["test_methods_compared[ablation@one~nullspace@one]"]
    assert figures["winner"]["refusal_drop"] == "neither" and figures["harmful_n"] == 8
    assert set(results["grid"]) == {"ablation@one", "ablation@all", "nullspace@one", "nullspace@all"}
    report = (tmp_path / "work" / "reports" / "tiny-limit8" / "report.md").read_text()
    assert "## Method x intervention x scope" in report and "## Methods compared at a matched budget" in report
    code, out = run("diff_in_means", "1e9")
    assert code != 0 and "refusal drop won by neither" in out and "[methods_winner]" in out, out[-4000:]
    code, out = run("neither", "1e-12")
    assert code != 0 and "over the budget 1e-12 [methods_kl_max]" in out, out[-4000:]
