"""The claims of a refusal-direction experiment, one pytest case each.

Each case computes its figures from session fixtures, records them (results.json, report), asserts
them against the syrupy snapshot of this experiment, then asserts the experiment's threshold.
Run: pytest -m gpu --experiment NAME
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fixtures.verdict import require
from harness.stats import category_table, paired_difference, wilson_interval

pytestmark = pytest.mark.gpu


def _refusal_row(condition: str, judge: str, which: str, scores: list[int]) -> dict:
    n, refused = len(scores), int(len(scores) - sum(scores))
    lo, hi = wilson_interval(refused, n)
    return {"condition": condition, "judge": judge, "set": which, "n": n, "refused": refused,
            "rate": refused / n, "ci_low": lo, "ci_high": hi}


def _rates(judgments, condition: str, judge: str) -> dict:
    return {which: _refusal_row(condition, judge, which, judgments(condition, which, judge))
            for which in ("harmful", "harmless")}


def test_baseline_refuses(experiment, bundle, direction, judgments, judges, record, claim_snapshot):
    t = experiment.thresholds
    record.meta(model=bundle.source, judges=", ".join(judges),
                direction=f"layer {direction.layer}, position {direction.pos} ({direction.how})")
    if experiment.model.refusal_tune is not None:
        record.meta(about="the demo model is SmolLM2-135M-Instruct refusal-tuned locally on the CPU "
                          "(unsafe fit-area prompts -> a fixed refusal; safe prompts -> its own answers); "
                          "it is a small stand-in for a chat model's refusal, not a production model")
    rows = _rates(judgments, "baseline", "substring")
    record.merge("conditions", list(rows.values()))
    figures = record.figures(
        {w: {"refused": r["refused"], "n": r["n"], "rate": r["rate"]} for w, r in rows.items()},
        headline=f"harmful {rows['harmful']['rate']:.1%}, harmless {rows['harmless']['rate']:.1%} refused",
    )
    assert figures == claim_snapshot
    require(rows["harmful"]["rate"] >= t.baseline_refusal_harmful_min,
            f"baseline refusal on harmful prompts {rows['harmful']['rate']:.1%} < {t.baseline_refusal_harmful_min:.0%}")
    require(rows["harmless"]["rate"] <= t.baseline_refusal_harmless_max,
            f"baseline refusal on harmless prompts {rows['harmless']['rate']:.1%} > {t.baseline_refusal_harmless_max:.0%}")


def test_direction_selected(experiment, selection, direction, candidates, record, claim_snapshot):
    """The sweep finds a candidate that passes every filter; where the experiment fixes the published
    (layer, pos), the selected direction is reported beside it."""
    from harness.directions import cosine

    table = selection.table
    chosen = table[(table["layer"] == selection.layer) & (table["pos"] == selection.pos)].iloc[0]
    figures = {"layer": int(selection.layer), "pos": int(selection.pos),
               "bypass_score": float(chosen["bypass_score"]), "induce_score": float(chosen["induce_score"]),
               "kl": float(chosen["kl"]), "candidates": int(len(table)), "passed_filters": int((~table["filtered"]).sum())}
    if direction.how != "selected":
        figures["cosine_to_fixed"] = float(cosine(candidates[selection.layer, selection.pos], direction.raw))
    figures = record.figures(figures, headline=f"layer {selection.layer}, pos {selection.pos} of {len(table)} candidates")
    assert figures == claim_snapshot
    require(figures["passed_filters"] >= 1, "no candidate passes the selection filters")
    require(chosen["kl"] <= experiment.direction.selection.kl_max,
            f"selected candidate's KL {chosen['kl']:.3g} > kl_max {experiment.direction.selection.kl_max}")


def test_refusal_drop(condition, experiment, judgments, judges, record, claim_snapshot):
    bound = experiment.thresholds.refusal_drop_pp_min.get(condition)
    figures, drops = {}, {}
    for judge in judges:
        before = _rates(judgments, "baseline", judge)["harmful"]
        after = _refusal_row(condition, judge, "harmful", judgments(condition, "harmful", judge))
        record.merge("conditions", [after, _refusal_row(condition, judge, "harmless",
                                                        judgments(condition, "harmless", judge))])
        drops[judge] = 100 * (before["rate"] - after["rate"])
        figures[judge] = {"baseline_rate": before["rate"], "rate": after["rate"], "drop_pp": drops[judge]}
    figures = record.figures(figures, headline=", ".join(f"{j}: -{d:.1f} pp" for j, d in drops.items()))
    assert figures == claim_snapshot
    assert bound is not None, f"{experiment.source_file}: thresholds.refusal_drop_pp_min has no `{condition}`"
    for judge, drop in drops.items():
        require(drop >= bound, f"{judge}: refusal drop {drop:.1f} pp < {bound} pp under {condition}")


def test_mcnemar_significant(condition, experiment, sets, judgments, record, claim_snapshot):
    before = np.array(judgments("baseline", "harmful"), dtype=bool)
    after = np.array(judgments(condition, "harmful"), dtype=bool)
    pd_ = paired_difference(before, after)
    flips = {"refusal_to_compliance": pd_.refusal_to_compliance, "compliance_to_refusal": pd_.compliance_to_refusal,
             "both_complied": pd_.both_complied, "both_refused": pd_.both_refused, "diff": pd_.diff,
             "ci_low": pd_.ci_low, "ci_high": pd_.ci_high, "mcnemar_p": pd_.mcnemar_p}
    record.merge("flips", {condition: flips})
    if condition in ("ablation", "weight_edit"):
        frame = sets.harmful_eval
        long = pd.concat([
            pd.DataFrame({"id": frame["id"], "category": frame["category"], "condition": name,
                          "score": 1 - scores.astype(int)})
            for name, scores in (("baseline", before), (condition, after))
        ])
        frames = record.merge("category_frames", [long])
        record.artifact("category_table", category_table(pd.concat(frames).drop_duplicates(["id", "condition"])))
    figures = record.figures({**flips, "n": pd_.n, "test": "exact McNemar, two-sided"},
                             headline=f"p = {pd_.mcnemar_p:.3g} (two-sided exact)")
    assert figures == claim_snapshot
    alpha = experiment.thresholds.mcnemar_alpha
    require(pd_.mcnemar_p < alpha, f"McNemar p {pd_.mcnemar_p:.3g} >= alpha {alpha} under {condition}")


def test_direction_stability(budget, experiment, sets, direction, construction_acts, record, claim_snapshot):
    from harness.directions import cosine
    from harness.policy import budget_subsets

    frame = sets.construction.reset_index(drop=True)
    acts = construction_acts

    def fit(areas) -> torch.Tensor:
        mask = frame["category"].isin(list(areas)).to_numpy()
        unsafe = torch.tensor(mask & (frame["label"] == "unsafe").to_numpy())
        safe = torch.tensor(mask & (frame["label"] == "safe").to_numpy())
        return acts[unsafe].mean(0) - acts[safe].mean(0)

    reference = fit(sets.heldout_areas)
    if budget > len(sets.fit_areas):
        pytest.fail(f"budget {budget} exceeds the {len(sets.fit_areas)} fit areas of {experiment.name}")
    subsets = budget_subsets(sets.fit_areas, budget, experiment.stability.repeats, experiment.seed)
    cosines = [float(cosine(fit(areas), reference)) for areas in subsets]
    rows = record.merge("stability_rows", [{"budget": budget, "repeat": i, "cosine": c} for i, c in enumerate(cosines)])
    record.artifact("stability", pd.DataFrame(rows))
    bound = experiment.thresholds.stability_cosine_min
    record.artifact("stability_threshold", bound)
    mean = float(np.mean(cosines))
    figures = record.figures({"cosines": cosines, "mean": mean, "areas": [sorted(a) for a in subsets]},
                             headline=f"mean cosine {mean:.3f} over {len(cosines)} repeats")
    assert figures == claim_snapshot
    require(mean >= bound, f"mean cosine {mean:.3f} < {bound} at budget {budget}")


def test_harmless_unchanged(condition, experiment, judgments, harmless_logits, record, claim_snapshot):
    from harness.capability import next_token_kl

    t = experiment.thresholds
    row = _refusal_row(condition, "substring", "harmless", judgments(condition, "harmless"))
    kl = next_token_kl(harmless_logits("baseline"), harmless_logits(condition))
    figures = record.figures({"harmless_refusal_rate": row["rate"], "kl_mean": float(kl.mean()),
                              "kl_max": float(kl.max())},
                             headline=f"over-refusal {row['rate']:.1%}, mean KL {float(kl.mean()):.3g}")
    assert figures == claim_snapshot
    require(row["rate"] <= t.harmless_refusal_max, f"over-refusal {row['rate']:.1%} under {condition}")
    require(float(kl.mean()) <= t.harmless_kl_max, f"mean KL {float(kl.mean()):.3g} under {condition}")


@pytest.mark.parametrize("benchmark_name", ["mmlu", "arc_challenge", "text"])
def test_capability_retention(benchmark_name, experiment, capability_scores, record, claim_snapshot):
    t = experiment.thresholds
    base = capability_scores("baseline", benchmark_name)
    edited = capability_scores("weight_edit", benchmark_name)
    if benchmark_name == "text":
        delta = edited["ce"] - base["ce"]
        row = {"benchmark": "CE loss (text)", "source": base["source"], "baseline": base["ce"],
               "weight_edit": edited["ce"], "change": delta}
        figures = record.figures({"baseline_ce": base["ce"], "edited_ce": edited["ce"], "delta": delta},
                                 headline=f"CE {base['ce']:.3f} -> {edited['ce']:.3f}")
    else:
        from harness.stats import paired_difference

        paired = paired_difference(np.array(base["correct"]), np.array(edited["correct"]))
        delta = edited["accuracy"] - base["accuracy"]
        row = {"benchmark": f"{benchmark_name} {experiment.capability.n_shot}-shot", "source": base["source"],
               "baseline": base["accuracy"], "weight_edit": edited["accuracy"], "change": delta}
        figures = record.figures({"baseline_accuracy": base["accuracy"], "edited_accuracy": edited["accuracy"],
                                  "n": base["n"], "mcnemar_p": paired.mcnemar_p},
                                 headline=f"accuracy {base['accuracy']:.1%} -> {edited['accuracy']:.1%} (n={base['n']})")
    record.artifact("capability", pd.DataFrame(record.merge("capability_rows", [row])))
    assert figures == claim_snapshot
    if benchmark_name == "text":
        require(delta <= t.ce_max_delta, f"CE rose by {delta:.3f} > {t.ce_max_delta}")
    else:
        require(-delta <= t.capability_max_drop, f"{benchmark_name} accuracy fell {-delta:.3f} > {t.capability_max_drop}")


def test_edit_fidelity(experiment, bundle, edited_model, direction, sets, record, claim_snapshot):
    from harness.weights import edit_fidelity

    prompts = sets.harmless_eval["prompt"].tolist()[:16]
    fid = edit_fidelity(bundle.model, edited_model, direction.unit, prompts, bundle.tokenizer)
    gaps = {"max_logit_gap": float(fid["max_logit_gap"]),
            "max_residual_component": float(max(fid["residual_component"]))}
    bound = experiment.thresholds.edit_logit_gap_max
    figures = record.figures(
        {"exact": bool(fid["exact"]), "max_logit_gap_within_bound": gaps["max_logit_gap"] <= bound}
        if fid["exact"] else {"exact": False, **gaps},
        headline=("exact edit" if fid["exact"] else "edit not exact: leakage measured")
        + f", max |logit gap| {gaps['max_logit_gap']:.3g}",
        noise=gaps if fid["exact"] else None,
    )
    record.artifact("fidelity", pd.DataFrame([{"layer": i, "max |component along r-hat|": c}
                                              for i, c in enumerate(fid["residual_component"])]))
    assert figures == claim_snapshot
    if fid["exact"]:
        require(gaps["max_logit_gap"] <= bound, f"logit gap {gaps['max_logit_gap']:.3g} > {bound} on an exact edit")


def test_methods_compared(method, experiment, judgments, harmless_logits, record, claim_snapshot):
    from harness.capability import next_token_kl

    condition = {"diff_in_means": "ablation", "inlp": "inlp"}[method]
    before = _rates(judgments, "baseline", "substring")["harmful"]["rate"]
    after = _refusal_row(condition, "substring", "harmful", judgments(condition, "harmful"))["rate"]
    kl = float(next_token_kl(harmless_logits("baseline"), harmless_logits(condition)).mean())
    drop = 100 * (before - after)
    rows = record.merge("method_rows", [{"method": method, "intervention": condition, "refusal_drop_pp": drop,
                                         "harmless_kl": kl}])
    record.artifact("methods", pd.DataFrame(rows))
    figures = record.figures({"refusal_drop_pp": drop, "harmless_kl": kl},
                             headline=f"drop {drop:.1f} pp, KL {kl:.3g}")
    assert figures == claim_snapshot
    bound = experiment.thresholds.methods_drop_pp_min.get(method)
    assert bound is not None, f"{experiment.source_file}: thresholds.methods_drop_pp_min has no `{method}`"
    require(drop >= bound, f"{method}: refusal drop {drop:.1f} pp < {bound} pp")
