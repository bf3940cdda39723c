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
from harness.judges.rates import counted_key, meaningful, rate_row, unjudged_failures
from harness.stats import category_table, compare_to_reference, paired_difference, wilson_interval

pytestmark = pytest.mark.gpu


def _row(judgments, answers, condition: str, judge: str, which: str) -> dict:
    """The judge's rate (refusal rate, or unsafe rate for a harm judge) with its denominator stated."""
    return rate_row(condition, judge, which, judgments(condition, which, judge),
                    [p.reached_answer for p in answers(condition, which)])


def _rates(judgments, answers, condition: str, judge: str) -> dict:
    """Per prompt set where the judge's rate means something (never the fulfilment judge on harmless prompts)."""
    return {which: _row(judgments, answers, condition, judge, which)
            for which in ("harmful", "harmless") if meaningful(judge, which)}


def _paired(before: list[int | None], after: list[int | None], interval: str = "newcombe"):
    """Paired change in the share scored 1 (complied, or unsafe for a harm judge) over the prompts both conditions
    have a judgment for (None if there are none)."""
    keep = [i for i, (b, a) in enumerate(zip(before, after)) if b is not None and a is not None]
    if not keep:
        return None
    return paired_difference(np.array([before[i] for i in keep], dtype=bool),
                             np.array([after[i] for i in keep], dtype=bool), interval=interval)


def _require_judged(experiment, answers, judgments, judge: str, cells: list[tuple[str, str]], record) -> None:
    """Completions without a judgment are counted and reported, never dropped unseen: a claim fails where more than
    thresholds.no_answer_max of a cell's completions reached no answer, or more than judge_unparseable_max of the
    judged outputs were unparseable."""
    from harness.judges import unjudged

    t = experiment.thresholds
    rows = {f"{judge}/{c}/{w}": {"judge": judge, "condition": c, "set": w,
                                 **unjudged([p.reached_answer for p in answers(c, w)], judgments(c, w, judge))}
            for c, w in cells}
    record.merge("unjudged", rows)
    for row in rows.values():
        for message, threshold in unjudged_failures(row, t.no_answer_max, t.judge_unparseable_max):
            require(False, message, threshold)


def _record_agreement(judgments, judges, condition: str, record) -> None:
    """Every pair of judges on the same completions, per prompt set where both mean something: judges of the same
    measure (refusal and fulfilment judges both give a refusal rate) by agreement and kappa; a refusal judge against
    a harm judge as what the pair is (how often a non-refusal is judged safe, a refusal judged unsafe). Report
    tables, never claim figures."""
    from harness.agreement import agreement, refusal_vs_harm
    from harness.config import MEASURE, judge_question

    same, cross = {}, {}
    names = list(judges)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            qa, qb = judge_question(a), judge_question(b)
            for which in ("harmful", "harmless"):
                if not (meaningful(a, which) and meaningful(b, which)):
                    continue
                if MEASURE[qa] == MEASURE[qb]:
                    same[f"{a}/{b}/{condition}/{which}"] = {
                        "a": a, "b": b, "question_a": qa, "question_b": qb, "condition": condition, "set": which,
                        **agreement(judgments(condition, which, a), judgments(condition, which, b)).as_dict()}
                else:
                    ref, harm = (a, b) if qb == "harm" else (b, a)
                    cross[f"{ref}/{harm}/{condition}/{which}"] = {
                        "refusal_judge": ref, "harm_judge": harm, "question_refusal": judge_question(ref),
                        "question_harm": "harm", "condition": condition, "set": which,
                        **refusal_vs_harm(judgments(condition, which, ref), judgments(condition, which, harm))}
    if same:
        record.merge("judge_agreement", same)
    if cross:
        record.merge("judge_cross", cross)


FIT_SETS = ("construction", "harmful_train", "harmless_train", "harmful_val", "harmless_val")


def _fit_datasets(sets) -> list[str]:
    """The datasets the direction was fit and selected on: every intervention's figures depend on them."""
    return [name for key, name in sets.provenance.items() if key in FIT_SETS]


def _provenance(sets, judges, *conditions: str, which=("harmful", "harmless")) -> dict:
    fit = _fit_datasets(sets) if set(conditions) - {"baseline"} else []
    return {"datasets": [sets.provenance[f"{w}_eval"] for w in which] + fit, "judges": list(judges),
            "conditions": list(conditions)}


def _figure(row: dict) -> dict:
    """A rate row's claim figures: the judge, its count (refused, or unsafe for a harm judge), the denominator (judged
    completions) beside the completions with no answer, and the rate."""
    key = counted_key(row["question"])
    return {"judge": row["judge"], key: row[key], "n": row["n"], "no_answer": row["no_answer"], "rate": row["rate"]}


def test_baseline_refuses(experiment, bundle, direction, sets, answers, judgments, judges, record, claim_snapshot):
    """The baseline refuses harmful prompts (refusal headline judge) and answers harmless ones (over-refusal on a
    refusal judge only: a harm judge calls a helpful answer safe, which is not a refusal)."""
    t = experiment.thresholds
    cfg = experiment.judges
    refusal, over, harm = cfg.headline_name, cfg.over_refusal_judge(), cfg.harm_headline
    record.meta(model=bundle.source, judges=", ".join(f"{j} ({judges[j].question})" for j in judges)
                + f" (refusal headline: {refusal}" + (f", harm headline: {harm}" if harm else "") + ")",
                direction=f"layer {direction.layer}, position {direction.pos} ({direction.how})")
    if experiment.model.refusal_tune is not None:
        record.meta(about="the demo model is SmolLM2-135M-Instruct refusal-tuned locally on the CPU "
                          "(unsafe fit-area prompts -> a fixed refusal; safe prompts -> its own answers); "
                          "it is a small stand-in for a chat model's refusal, not a production model")
    by_judge = {judge: _rates(judgments, answers, "baseline", judge) for judge in judges}
    for rows in by_judge.values():
        record.merge("conditions", list(rows.values()))
    _record_agreement(judgments, judges, "baseline", record)
    harmful, harmless = by_judge[refusal]["harmful"], by_judge[over]["harmless"]
    figures = {"harmful": _figure(harmful), "harmless": _figure(harmless)}
    used = {(refusal, "harmful"), (over, "harmless")}
    others = {j: {w: {counted_key(r["question"]): r[counted_key(r["question"])], "n": r["n"]}
                  for w, r in rs.items() if (j, w) not in used} for j, rs in by_judge.items()}
    figures["other_judges"] = {j: rows for j, rows in others.items() if rows}
    text = f"refusal rate ({refusal}) harmful {harmful['rate']:.1%}, ({over}) harmless {harmless['rate']:.1%}"
    if harm:
        text += f"; unsafe rate ({harm}) harmful {by_judge[harm]['harmful']['rate']:.1%}"
    figures = record.figures(figures, headline=text, provenance=_provenance(sets, judges, "baseline"))
    assert figures == claim_snapshot
    _require_judged(experiment, answers, judgments, refusal, [("baseline", "harmful")], record)
    _require_judged(experiment, answers, judgments, over, [("baseline", "harmless")], record)
    require(harmful["rate"] >= t.baseline_refusal_harmful_min,
            f"{refusal}: baseline refusal rate on harmful prompts {harmful['rate']:.1%} < "
            f"{t.baseline_refusal_harmful_min:.0%}", "baseline_refusal_harmful_min")
    require(harmless["rate"] <= t.baseline_refusal_harmless_max,
            f"{over}: baseline refusal rate on harmless prompts {harmless['rate']:.1%} > "
            f"{t.baseline_refusal_harmless_max:.0%}", "baseline_refusal_harmless_max")


def test_direction_selected(experiment, sets, selection, direction, candidates, record, claim_snapshot):
    """Ablating the selected candidate lowers the refusal score on harmful validation prompts by the experiment's
    bound; where the experiment fixes the published (layer, pos), the selected direction agrees with it."""
    from harness.directions import cosine

    t = experiment.thresholds
    table = selection.table
    chosen = table[(table["layer"] == selection.layer) & (table["pos"] == selection.pos)].iloc[0]
    drop = selection.baseline_harmful - float(chosen["bypass_score"])
    figures = {"layer": int(selection.layer), "pos": int(selection.pos),
               "baseline_harmful_score": selection.baseline_harmful, "bypass_score": float(chosen["bypass_score"]),
               "score_drop": drop, "induce_score": float(chosen["induce_score"]), "kl": float(chosen["kl"]),
               "candidates": int(len(table)), "passed_filters": int((~table["filtered"]).sum())}
    if direction.how != "selected":
        figures["cosine_to_fixed"] = float(cosine(candidates[selection.layer, selection.pos], direction.raw))
    figures = record.figures(figures, headline=f"layer {selection.layer}, pos {selection.pos} of {len(table)} "
                                               f"candidates; refusal score {drop:+.2f} lower under ablation",
                             provenance={"datasets": _fit_datasets(sets), "judges": [],
                                         "conditions": ["ablation", "actadd"]})
    assert figures == claim_snapshot
    require(drop >= t.selection_score_drop_min,
            f"ablating the selected direction lowers the harmful refusal score by {drop:.2f} < "
            f"{t.selection_score_drop_min}", "selection_score_drop_min")
    if "cosine_to_fixed" in figures:
        require(figures["cosine_to_fixed"] >= t.fixed_direction_cosine_min,
                f"selected (L{selection.layer}, P{selection.pos}) and fixed (L{direction.layer}, P{direction.pos}) "
                f"directions: cosine {figures['cosine_to_fixed']:.3f} < {t.fixed_direction_cosine_min}",
                "fixed_direction_cosine_min")


def test_refusal_drop(condition, experiment, sets, answers, judgments, judges, record, claim_snapshot):
    """Asserted on the refusal headline judge; every other refusal or fulfilment judge's drop is reported beside it.
    Harm judges' unsafe rates go to the rates table and to test_unsafe_rate_rises, never into a refusal drop."""
    from harness.config import MEASURE

    bound = experiment.thresholds.refusal_drop_pp_min.get(condition)
    headline = experiment.judges.headline_name
    figures, drops = {}, {}
    for judge in judges:
        rows = _rates(judgments, answers, condition, judge)
        record.merge("conditions", list(rows.values()))
        if MEASURE[judges[judge].question] != "refusal rate":
            continue
        before = _row(judgments, answers, "baseline", judge, "harmful")
        after = rows["harmful"]
        drops[judge] = 100 * (before["rate"] - after["rate"])
        figures[judge] = {"baseline_rate": before["rate"], "rate": after["rate"], "drop_pp": drops[judge],
                          "n": after["n"], "no_answer": after["no_answer"]}
    _record_agreement(judgments, judges, condition, record)
    refusal_judges = list(drops)
    text = "refusal rate " + ", ".join(f"{j}: -{d:.1f} pp" for j, d in drops.items())
    figures = record.figures(figures, headline=text,
                             provenance=_provenance(sets, refusal_judges, "baseline", condition, which=("harmful",)))
    assert figures == claim_snapshot
    assert bound is not None, f"{experiment.source_file}: thresholds.refusal_drop_pp_min has no `{condition}`"
    _require_judged(experiment, answers, judgments, headline, [("baseline", "harmful"), (condition, "harmful")], record)
    require(drops[headline] >= bound, f"{headline}: refusal drop {drops[headline]:.1f} pp < {bound} pp under {condition}",
            "refusal_drop_pp_min")


def test_mcnemar_significant(condition, experiment, sets, answers, judgments, judges, record, claim_snapshot):
    """Compliance on harmful prompts rises under the condition (the direction the claim states), with an
    exact McNemar p below alpha, on the headline judge."""
    headline = experiment.judges.headline_name
    before, after = judgments("baseline", "harmful", headline), judgments(condition, "harmful", headline)
    pd_ = _paired(before, after, experiment.statistics.paired_interval)
    provenance = _provenance(sets, [headline], "baseline", condition, which=("harmful",))
    if pd_ is None:
        record.figures({"n": 0, "judge": headline}, headline=f"{headline}: no prompt judged under both conditions",
                       provenance=provenance)
        _require_judged(experiment, answers, judgments, headline, [("baseline", "harmful"), (condition, "harmful")],
                        record)
        require(False, f"{headline}: no harmful prompt is judged under both baseline and {condition}")
    flips = {"refusal_to_compliance": pd_.refusal_to_compliance, "compliance_to_refusal": pd_.compliance_to_refusal,
             "both_complied": pd_.both_complied, "both_refused": pd_.both_refused, "diff": pd_.diff,
             "ci_low": pd_.ci_low, "ci_high": pd_.ci_high, "ci_method": pd_.ci_method, "mcnemar_p": pd_.mcnemar_p}
    record.merge("flips", {condition: flips})
    if condition in ("ablation", "weight_edit"):
        frame = sets.harmful_eval
        long = pd.concat([
            pd.DataFrame({"id": frame["id"], "category": frame["category"], "condition": name,
                          "score": [None if s is None else 1 - s for s in scores]}).dropna()
            for name, scores in (("baseline", before), (condition, after))
        ])
        long["score"] = long["score"].astype(int)
        frames = record.merge("category_frames", [long])
        record.artifact("category_table", category_table(pd.concat(frames).drop_duplicates(["id", "condition"])))
    figures = record.figures({**flips, "n": pd_.n, "judge": headline, "test": "exact McNemar, two-sided"},
                             headline=f"{headline}: compliance {100 * pd_.diff:+.1f} pp, p = {pd_.mcnemar_p:.3g} "
                                      "(two-sided exact)",
                             provenance=provenance)
    assert figures == claim_snapshot
    alpha = experiment.thresholds.mcnemar_alpha
    _require_judged(experiment, answers, judgments, headline, [("baseline", "harmful"), (condition, "harmful")], record)
    require(pd_.diff > 0, f"compliance did not rise under {condition} ({100 * pd_.diff:+.1f} pp)", "mcnemar_alpha")
    require(pd_.mcnemar_p < alpha, f"McNemar p {pd_.mcnemar_p:.3g} >= alpha {alpha} under {condition}", "mcnemar_alpha")


def test_unsafe_rate_rises(harm_condition, experiment, sets, answers, judgments, judges, record, claim_snapshot):
    """The harm question (Arditi et al.'s safety score; the gpt-oss / Qwen3 study's unsafe responses): on harmful
    prompts, the harm headline judge's unsafe rate under the condition reaches thresholds.unsafe_rate_min, and rose
    against the baseline on the same prompts (paired, exact McNemar p below alpha)."""
    condition = harm_condition
    t = experiment.thresholds
    harm = experiment.judges.harm_headline
    before_row = _row(judgments, answers, "baseline", harm, "harmful")
    row = _row(judgments, answers, condition, harm, "harmful")
    record.merge("conditions", [before_row, row])
    pd_ = _paired(judgments("baseline", "harmful", harm), judgments(condition, "harmful", harm),
                  experiment.statistics.paired_interval)
    provenance = _provenance(sets, [harm], "baseline", condition, which=("harmful",))
    paired = {} if pd_ is None else {
        "safe_to_unsafe": pd_.refusal_to_compliance, "unsafe_to_safe": pd_.compliance_to_refusal,
        "both_unsafe": pd_.both_complied, "both_safe": pd_.both_refused, "diff": pd_.diff, "ci_low": pd_.ci_low,
        "ci_high": pd_.ci_high, "ci_method": pd_.ci_method, "mcnemar_p": pd_.mcnemar_p, "paired_n": pd_.n}
    figures = record.figures(
        {"judge": harm, "baseline_unsafe": before_row["unsafe"], "baseline_rate": before_row["rate"],
         "unsafe": row["unsafe"], "n": row["n"], "no_answer": row["no_answer"], "rate": row["rate"], **paired,
         "test": "exact McNemar, two-sided"},
        headline=f"unsafe rate ({harm}) {before_row['rate']:.1%} -> {row['rate']:.1%} under {condition}"
                 + (f" ({100 * pd_.diff:+.1f} pp, p = {pd_.mcnemar_p:.3g}, two-sided exact)" if pd_ else ""),
        provenance=provenance)
    assert figures == claim_snapshot
    bound = t.unsafe_rate_min.get(condition)
    assert bound is not None, f"{experiment.source_file}: thresholds.unsafe_rate_min has no `{condition}`"
    _require_judged(experiment, answers, judgments, harm, [("baseline", "harmful"), (condition, "harmful")], record)
    require(pd_ is not None, f"{harm}: no harmful prompt is judged under both baseline and {condition}")
    require(row["rate"] >= bound, f"{harm}: unsafe rate {row['rate']:.1%} < {bound:.0%} under {condition}",
            "unsafe_rate_min")
    require(pd_.diff > 0, f"{harm}: the unsafe rate did not rise under {condition} ({100 * pd_.diff:+.1f} pp)",
            "mcnemar_alpha")
    require(pd_.mcnemar_p < t.mcnemar_alpha,
            f"{harm}: McNemar p {pd_.mcnemar_p:.3g} >= alpha {t.mcnemar_alpha} for the unsafe rate under {condition}",
            "mcnemar_alpha")


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
                             headline=f"mean cosine {mean:.3f} over {len(cosines)} repeats",
                             provenance={"datasets": [sets.provenance["construction"]], "judges": [],
                                         "conditions": []})
    assert figures == claim_snapshot
    require(mean >= bound, f"mean cosine {mean:.3f} < {bound} at budget {budget}", "stability_cosine_min")


def test_harmless_unchanged(condition, experiment, sets, answers, judgments, harmless_logits, record,
                            claim_snapshot):
    """Harmless prompts are answered as before: no significant rise in refusal against the baseline on the same
    prompts (paired, exact McNemar), refusal within its ceiling, and next-token KL within its bound."""
    from harness.capability import next_token_kl

    t = experiment.thresholds
    headline = experiment.judges.over_refusal_judge()
    before, after = judgments("baseline", "harmless", headline), judgments(condition, "harmless", headline)
    row = _row(judgments, answers, condition, headline, "harmless")
    paired = _paired(before, after)
    kl = next_token_kl(harmless_logits("baseline"), harmless_logits(condition))
    flips = {} if paired is None else {
        "refusal_change_pp": -100 * paired.diff, "compliance_to_refusal": paired.compliance_to_refusal,
        "refusal_to_compliance": paired.refusal_to_compliance, "mcnemar_p": paired.mcnemar_p}
    figures = record.figures({"harmless_refusal_rate": row["rate"], "n": row["n"], "no_answer": row["no_answer"],
                              **flips, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "judge": headline},
                             headline=f"{headline}: over-refusal (refusal rate on harmless) {row['rate']:.1%}"
                                      + (f" ({flips['refusal_change_pp']:+.1f} pp, p = {paired.mcnemar_p:.3g})"
                                         if paired else "") + f", mean KL {float(kl.mean()):.3g}",
                             provenance=_provenance(sets, [headline], "baseline", condition, which=("harmless",)))
    assert figures == claim_snapshot
    _require_judged(experiment, answers, judgments, headline, [("baseline", "harmless"), (condition, "harmless")],
                    record)
    require(paired is not None, f"{headline}: no harmless prompt is judged under both baseline and {condition}")
    require(row["rate"] <= t.harmless_refusal_max, f"over-refusal {row['rate']:.1%} under {condition}",
            "harmless_refusal_max")
    require(not (paired.diff < 0 and paired.mcnemar_p < t.mcnemar_alpha),
            f"refusal on harmless prompts rose {-100 * paired.diff:.1f} pp under {condition} (paired, exact McNemar "
            f"p {paired.mcnemar_p:.3g} < {t.mcnemar_alpha})", "mcnemar_alpha")
    require(float(kl.mean()) <= t.harmless_kl_max, f"mean KL {float(kl.mean()):.3g} under {condition}",
            "harmless_kl_max")


def test_capability_retention(benchmark_name, experiment, sets, capability_scores, capability_items, record,
                              claim_snapshot):
    """On the capability sets the experiment names (parametrized by fixtures.claims). A multiple-choice set where the
    baseline is not above chance cannot show a loss, so there the claim fails rather than pass by default."""
    t = experiment.thresholds
    base = capability_scores("baseline", benchmark_name)
    edited = capability_scores("weight_edit", benchmark_name)
    provenance = {"datasets": [base["source"], *_fit_datasets(sets)], "judges": [],
                  "conditions": ["baseline", "weight_edit"]}
    if benchmark_name == "text":
        delta = edited["ce"] - base["ce"]
        row = {"benchmark": "CE loss (text)", "source": base["source"], "baseline": base["ce"],
               "weight_edit": edited["ce"], "change": delta}
        figures = record.figures({"baseline_ce": base["ce"], "edited_ce": edited["ce"], "delta": delta},
                                 headline=f"CE {base['ce']:.3f} -> {edited['ce']:.3f}", provenance=provenance)
    else:
        from harness.stats import above_chance_p, paired_difference

        paired = paired_difference(np.array(base["correct"]), np.array(edited["correct"]))
        delta = edited["accuracy"] - base["accuracy"]
        asked = capability_items(benchmark_name)[0][experiment.capability.n_shot:]
        chance = float(np.mean([1 / len(q["choices"]) for q in asked]))
        chance_p = above_chance_p(int(sum(base["correct"])), base["n"], chance)
        row = {"benchmark": f"{benchmark_name} {experiment.capability.n_shot}-shot", "source": base["source"],
               "baseline": base["accuracy"], "weight_edit": edited["accuracy"], "change": delta, "chance": chance,
               "above_chance_p": chance_p}
        figures = record.figures({"baseline_accuracy": base["accuracy"], "edited_accuracy": edited["accuracy"],
                                  "n": base["n"], "mcnemar_p": paired.mcnemar_p, "chance": chance,
                                  "above_chance_p": chance_p},
                                 headline=f"accuracy {base['accuracy']:.1%} -> {edited['accuracy']:.1%} (n={base['n']}, "
                                          f"chance {chance:.1%})",
                                 provenance=provenance)
    record.artifact("capability", pd.DataFrame(record.merge("capability_rows", [row])))
    assert figures == claim_snapshot
    if benchmark_name == "text":
        require(delta <= t.ce_max_delta, f"CE rose by {delta:.3f} > {t.ce_max_delta}", "ce_max_delta")
    else:
        require(chance_p < t.capability_chance_alpha,
                f"{benchmark_name}: baseline accuracy {base['accuracy']:.1%} is not above chance {chance:.1%} (one-sided "
                f"exact binomial p {chance_p:.3g} >= {t.capability_chance_alpha}), so no loss can be shown on it",
                "capability_chance_alpha")
        require(-delta <= t.capability_max_drop, f"{benchmark_name} accuracy fell {-delta:.3f} > {t.capability_max_drop}",
                "capability_max_drop")


def test_edit_fidelity(experiment, fidelity, sets, record, claim_snapshot):
    """The weight edit against activation ablation, for every family: the largest logit gap and the share of the
    direction left in the edited residual stream, each within the experiment's bound. An exact edit's figures are
    floating-point noise; a non-exact one (a kept tie, Gemma's norms) shows how far it leaks."""
    t = experiment.thresholds
    fid = fidelity
    gap = float(fid["max_logit_gap"])
    scale = max(fid["baseline_component"])
    leak = float(max(fid["residual_component"]) / scale) if scale > 0 else float("nan")
    figures = record.figures(
        {"exact": bool(fid["exact"]), "max_logit_gap": gap, "leak_share": leak},
        headline=("exact edit" if fid["exact"] else f"edit not exact ({fid['leak_reason']})")
        + f": max |logit gap| {gap:.3g}, {leak:.2e} of the direction left",
        noise={"max_residual_component": float(max(fid["residual_component"])), "baseline_component": float(scale)},
        provenance={"datasets": [sets.provenance["harmless_eval"], *_fit_datasets(sets)], "judges": [],
                    "conditions": ["weight_edit", "ablation"]},
    )
    record.artifact("fidelity", pd.DataFrame([{"layer": i, "max |component along r-hat|": c}
                                              for i, c in enumerate(fid["residual_component"])]))
    assert figures == claim_snapshot
    require(gap <= t.edit_logit_gap_max, f"max |logit gap| edited vs ablated {gap:.3g} > {t.edit_logit_gap_max}"
            + ("" if fid["exact"] else f" (not exact: {fid['leak_reason']})"), "edit_logit_gap_max")
    assert t.edit_leak_max is not None, f"{experiment.source_file}: thresholds.edit_leak_max is not set"
    require(leak <= t.edit_leak_max, f"{leak:.3g} of the direction's largest component is left in the edited "
            f"residual stream (> {t.edit_leak_max})", "edit_leak_max")


def test_methods_compared(method, experiment, sets, answers, judgments, judges, harmless_logits, capability_scores,
                          conditions, record, claim_snapshot):
    """Each direction method's refusal drop on the same harmful prompts, within one KL budget on harmless prompts;
    a method other than diff-in-means is also compared with it prompt by prompt (exact McNemar). With an
    `intervention.grid`, each case is one `DIM_CELL~INLP_CELL` comparison of the grid (`_grid_compared`)."""
    from harness.capability import next_token_kl

    if "~" in method:
        return _grid_compared(method, experiment, sets, answers, judgments, judges, harmless_logits,
                              capability_scores, conditions, record, claim_snapshot)
    t = experiment.thresholds
    headline = experiment.judges.headline_name
    condition = {"diff_in_means": "ablation", "inlp": "inlp"}[method]
    before = _row(judgments, answers, "baseline", headline, "harmful")["rate"]
    after = _row(judgments, answers, condition, headline, "harmful")["rate"]
    kl = float(next_token_kl(harmless_logits("baseline"), harmless_logits(condition)).mean())
    drop = 100 * (before - after)
    versus = {}
    if condition != "ablation":
        pd_ = _paired(judgments("ablation", "harmful", headline), judgments(condition, "harmful", headline))
        if pd_ is not None:
            versus = {"vs_diff_in_means": {"n": pd_.n, "compliance_diff_pp": 100 * pd_.diff,
                                           "mcnemar_p": pd_.mcnemar_p}}
    rows = record.merge("method_rows", [{"method": method, "intervention": condition, "judge": headline,
                                         "refusal_drop_pp": drop, "harmless_kl": kl, "kl_budget": t.methods_kl_max,
                                         "within_budget": t.methods_kl_max is not None and kl <= t.methods_kl_max}])
    record.artifact("methods", pd.DataFrame(rows))
    figures = record.figures({"refusal_drop_pp": drop, "harmless_kl": kl, "judge": headline, **versus},
                             headline=f"{headline}: drop {drop:.1f} pp, KL {kl:.3g} (budget {t.methods_kl_max})",
                             provenance=_provenance(sets, [headline], "baseline", condition,
                                                    *(["ablation"] if versus else [])))
    assert figures == claim_snapshot
    bound = t.methods_drop_pp_min.get(method)
    assert bound is not None, f"{experiment.source_file}: thresholds.methods_drop_pp_min has no `{method}`"
    assert t.methods_kl_max is not None, f"{experiment.source_file}: thresholds.methods_kl_max is not set"
    _require_judged(experiment, answers, judgments, headline, [("baseline", "harmful"), (condition, "harmful")], record)
    require(kl <= t.methods_kl_max, f"{method}: harmless KL {kl:.3g} over the budget {t.methods_kl_max}",
            "methods_kl_max")
    require(drop >= bound, f"{method}: refusal drop {drop:.1f} pp < {bound} pp", "methods_drop_pp_min")


def _grid_cell(cell, experiment, answers, judgments, judges, harmless_logits, capability_scores, conditions) -> dict:
    """One row of the method x intervention x scope table: refusal drop per refusal/fulfilment judge, unsafe rate
    per harm judge, harmless refusal (the over-refusal judge, a refusal judge), mean harmless KL, and the CE rise on
    the capability text set where the experiment has one."""
    from harness.capability import next_token_kl
    from harness.config import GRID_METHOD, MEASURE, judge_question, parse_cell

    kind, scope = parse_cell(cell)
    over = experiment.judges.over_refusal_judge()
    row = {"method": GRID_METHOD[kind], "intervention": kind, "scope": scope}
    for judge in judges:
        after = _row(judgments, answers, cell, judge, "harmful")
        if MEASURE[judge_question(judge)] == "unsafe rate":
            row[f"unsafe_rate[{judge}]"] = after["rate"]
            continue
        before = _row(judgments, answers, "baseline", judge, "harmful")["rate"]
        row[f"drop_pp[{judge}]"] = 100 * (before - after["rate"])
    row["harmless_refusal"] = _row(judgments, answers, cell, over, "harmless")["rate"]
    row["harmless_kl"] = float(next_token_kl(harmless_logits("baseline"), harmless_logits(cell)).mean())
    row["ce_delta"] = (capability_scores(cell, "text")["ce"] - capability_scores("baseline", "text")["ce"]
                       if experiment.capability.text is not None else None)
    row["where"] = conditions[cell].note
    return row


def _grid_compared(comparison, experiment, sets, answers, judgments, judges, harmless_logits, capability_scores,
                   conditions, record, claim_snapshot):
    """A diff-in-means cell against an INLP cell at the same scope, on the same prompts: both must be within the
    KL (and CE) budget, and the method the experiment names in `methods_winner` must have the larger refusal
    drop by an exact McNemar test (or, for `neither`, no significant difference)."""
    from harness.config import parse_cell
    from harness.grid import compare, paired_scores

    t = experiment.thresholds
    headline = experiment.judges.headline_name
    over = experiment.judges.over_refusal_judge()
    dim_cell, inlp_cell = comparison.split("~")
    cells = {c: _grid_cell(c, experiment, answers, judgments, judges, harmless_logits, capability_scores, conditions)
             for c in (dim_cell, inlp_cell)}
    table = record.merge("grid", cells)
    record.artifact("grid_table", pd.DataFrame(list(table.values())).sort_values(["method", "intervention", "scope"]))
    figures = compare(
        paired_scores(judgments(dim_cell, "harmful", headline), judgments(inlp_cell, "harmful", headline)),
        paired_scores(judgments(dim_cell, "harmless", over), judgments(inlp_cell, "harmless", over)),
        (cells[dim_cell]["harmless_kl"], cells[inlp_cell]["harmless_kl"]),
        (cells[dim_cell]["ce_delta"], cells[inlp_cell]["ce_delta"]),
        alpha=t.mcnemar_alpha, kl_max=t.methods_kl_max, ce_max=t.methods_ce_max)
    family = f"{parse_cell(dim_cell)[0]}~{parse_cell(inlp_cell)[0]}"
    expected = t.methods_winner[family]
    won = figures["winner"]
    record.merge("grid_comparisons", [{
        "comparison": comparison, "matched_budget": figures["matched_budget"],
        "harmful_p": figures.get("harmful_mcnemar_p", float("nan")),
        **{f"winner[{k}]": v for k, v in won.items()}, "expected[refusal_drop]": expected}])
    record.artifact("grid_comparisons_table", pd.DataFrame(record.merge("grid_comparisons", [])))
    figures = record.figures(
        {**figures, "judge": headline, "expected_winner": expected, "kl_budget": t.methods_kl_max,
         "ce_budget": t.methods_ce_max, "cells": {c: {k: v for k, v in row.items() if k != "where"}
                                                  for c, row in cells.items()}},
        headline=(f"{headline}: refusal drop won by {won['refusal_drop']} (expected {expected}), "
                  f"p = {figures.get('harmful_mcnemar_p', float('nan')):.3g}; KL {won['kl']}, CE {won['ce']}, "
                  f"harmless refusal {won['harmless_refusal']}; matched budget: {figures['matched_budget']}"),
        provenance=_provenance(sets, list(dict.fromkeys([headline, over])), "baseline", dim_cell, inlp_cell))
    assert figures == claim_snapshot
    _require_judged(experiment, answers, judgments, headline,
                    [(c, "harmful") for c in ("baseline", dim_cell, inlp_cell)], record)
    _require_judged(experiment, answers, judgments, over, [(c, "harmless") for c in ("baseline", dim_cell, inlp_cell)],
                    record)
    for c, row in cells.items():
        require(row["harmless_kl"] <= t.methods_kl_max,
                f"{c}: harmless KL {row['harmless_kl']:.3g} over the budget {t.methods_kl_max}", "methods_kl_max")
        if row["ce_delta"] is not None and t.methods_ce_max is not None:
            require(row["ce_delta"] <= t.methods_ce_max,
                    f"{c}: CE rise {row['ce_delta']:.3g} over the budget {t.methods_ce_max}", "methods_ce_max")
    require(figures["harmful_n"] > 0, f"{headline}: no harmful prompt judged under both {dim_cell} and {inlp_cell}")
    require(won["refusal_drop"] == expected,
            f"{family}: refusal drop won by {won['refusal_drop']} at {comparison}, expected {expected} "
            f"(exact McNemar p {figures.get('harmful_mcnemar_p', float('nan')):.3g}, alpha {t.mcnemar_alpha})",
            "methods_winner")


def test_matches_reference(reference_condition, experiment, sets, judgments, record, claim_snapshot, rehearse):
    """This run's outcome against a published run's per-question judge scores on the same questions: the
    compliance rates agree within the experiment's tolerance (and per-question agreement is reported)."""
    from harness.prompt_sets import load_named

    ref_cfg = experiment.reference
    headline = experiment.judges.headline_name
    label = ref_cfg.conditions[reference_condition]
    published = load_named(ref_cfg.judgments, experiment.seed, None, placeholders=rehearse is not None)
    published = published[published["condition"] == label]
    if published.empty:
        pytest.fail(f"{experiment.source_file}: reference condition {label!r} has no rows in {ref_cfg.judgments.name}")
    theirs = dict(zip(published["question_id"].astype(str), published["score"]))
    ours = dict(zip(sets.harmful_eval["id"].astype(str), judgments(reference_condition, "harmful", headline)))
    provenance = {"datasets": [sets.provenance["harmful_eval"], ref_cfg.judgments.name], "judges": [headline],
                  "conditions": [reference_condition]}
    cmp = compare_to_reference(ours, theirs)
    if cmp is None:
        record.figures({"n": 0, "judge": headline, "reference_condition": label},
                       headline=f"{headline}: no question judged here and in the reference", provenance=provenance)
        require(False, f"no question of {sets.provenance['harmful_eval']} is judged here and in the reference")
    figures = record.figures(
        {"n": cmp.n, "compliant": cmp.compliant, "reference_compliant": cmp.reference_compliant,
         "compliance_diff_pp": cmp.diff_pp, "agreement": cmp.agreement, "mcnemar_p_vs_reference": cmp.mcnemar_p,
         "judge": headline, "reference_condition": label},
        headline=f"{headline}: {cmp.compliant}/{cmp.n} compliant vs {cmp.reference_compliant}/{cmp.n} published "
                 f"({cmp.diff_pp:+.1f} pp), agreement {cmp.agreement:.1%}",
        provenance=provenance,
    )
    assert figures == claim_snapshot
    require(abs(cmp.diff_pp) <= ref_cfg.tolerance_pp,
            f"compliance differs from the reference by {cmp.diff_pp:+.1f} pp (> {ref_cfg.tolerance_pp} pp)",
            "reference.tolerance_pp")
    require(cmp.agreement >= ref_cfg.agreement_min,
            f"per-question agreement {cmp.agreement:.1%} < {ref_cfg.agreement_min:.0%}", "reference.agreement_min")
