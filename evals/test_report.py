"""results.json and report.md: rounding that makes a rerun identical, the setup sections (chat format, judges,
filtering, reasoning, unjudged completions, rehearsal) and per-claim provenance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.report.write import round_figures, write_report


def test_round_figures_keeps_four_significant_digits_and_types():
    got = round_figures({"a": 0.123456, "b": 123456.7, "c": [1, True, None, "x"], "d": np.float32(2.0 / 3),
                         "e": float("nan"), "f": 0.0})
    assert got["a"] == 0.1235 and got["b"] == 123500.0 and got["c"] == [1, True, None, "x"]
    assert got["d"] == 0.6667 and math.isnan(got["e"]) and got["f"] == 0.0
    with pytest.raises(TypeError, match="object"):
        round_figures({"bad": object()})


CLAIMS = {
    "test_refusal_drop[ablation]": {"figures": {"substring": {"drop_pp": 40.04}}, "outcome": "passed",
                                    "headline": "substring: -40.0 pp",
                                    "provenance": {"datasets": ["jailbreakbench"], "judges": ["substring"],
                                                   "conditions": ["ablation", "baseline"]}},
    "test_baseline_refuses": {"figures": {}, "outcome": "rehearsed", "headline": ""},
}
ARTIFACTS = {
    "chat": {"family": "gpt_oss", "refusal_tokens": ["I"], "refusal_token_ids": [40], "date": "2026-01-01"},
    "judges": {"substring": {"name": "substring", "question": "refusal"},
               "llamaguard3": {"name": "llamaguard3", "question": "harm"}},
    "filtering": {"counts": {"harmful_train": [128, 97]}, "note": ""},
    "reasoning": {"baseline/harmful": {"condition": "baseline", "set": "harmful", "n": 10, "reasoning": "harmony",
                                       "no_answer": 3, "mean_reasoning_tokens": 212.5, "max_reasoning_tokens": 1024}},
    "unjudged": {"llamaguard3/baseline/harmful": {"judge": "llamaguard3", "condition": "baseline", "set": "harmful",
                                                  "n": 10, "no_answer": 3, "unparseable": 1, "unparseable_share": 1 / 7}},
    "rehearsal_model": {"family": "gpt_oss", "stand_ins": []},
    "judge_agreement": {"llamaguard3/substring/baseline/harmful": {
        "a": "llamaguard3", "b": "substring", "condition": "baseline", "set": "harmful", "n": 7, "agree": 5,
        "agreement": 5 / 7, "kappa": 0.44, "a_refused_b_complied": 2, "a_complied_b_refused": 0, "skipped": 3},
        "llamaguard3/substring/baseline/harmless": {
        "a": "llamaguard3", "b": "substring", "condition": "baseline", "set": "harmless", "n": 4, "agree": 4,
        "agreement": 1.0, "kappa": float("nan"), "a_refused_b_complied": 0, "a_complied_b_refused": 0, "skipped": 0}},
    "truncation": {"baseline/harmful": {"condition": "baseline", "set": "harmful", "n": 10, "max_new_tokens": 1024,
                                        "cut": 6, "cut_share": 0.6, "cut_no_refusal": 5, "late_refusal": 1,
                                        "late_refusal_share": 0.1, "mean_new_tokens": 900.25}},
    "judge_cross": {"substring/llamaguard3/baseline/harmful": {
        "refusal_judge": "substring", "harm_judge": "llamaguard3", "question_refusal": "refusal",
        "question_harm": "harm", "condition": "baseline", "set": "harmful", "n": 7, "complied_safe": 1,
        "complied_unsafe": 2, "refused_safe": 3, "refused_unsafe": 1, "complied_safe_share": 1 / 3,
        "refused_unsafe_share": 0.25, "skipped": 3}},
    "conditions": [{"condition": "baseline", "judge": "substring", "question": "refusal", "measure": "refusal rate",
                    "set": "harmful", "total": 10, "n": 7, "refused": 6, "rate": 6 / 7, "ci_low": 0.5, "ci_high": 0.97,
                    "no_answer": 3, "unparseable": 0},
                   {"condition": "baseline", "judge": "llamaguard3", "question": "harm", "measure": "unsafe rate",
                    "set": "harmful", "total": 10, "n": 6, "unsafe": 2, "rate": 2 / 6, "ci_low": 0.1, "ci_high": 0.7,
                    "no_answer": 3, "unparseable": 1}],
}


def test_report_sections_and_results(tmp_path):
    path = write_report(tmp_path, {"experiment": "x", "rehearsal": "tiny"}, CLAIMS, ARTIFACTS)
    md = path.read_text()
    for section in ("## Claims", "## Chat format", "## Judges", "## Prompt filtering (reference)", "## Reasoning",
                    "## Completions without a judgment", "## Rehearsal"):
        assert section in md, section
    assert "| harmful_train | 128 | 97 |" in md and "| baseline | harmful | 10 | 3 | 212.5 | 1024 |" in md
    assert "| llamaguard3 | baseline | harmful | 10 | 3 | 1 |" in md
    assert "| llamaguard3 | substring | baseline | harmful | 7 | 71.4% | 0.440 | 2 | 0 | 3 |" in md
    assert "| llamaguard3 | substring | baseline | harmless | 4 | 100.0% | n/a | 0 | 0 | 0 |" in md
    assert "*A refused, B complied* are refusals the keyword list misses" in md
    # the refusal headline's refusal rate (never the guard's unsafe rate) beside the cut share, bold from CUT_FLAG_SHARE
    assert "| baseline | harmful | 10 | 85.7% | **6 (60.0%)** | 5 | 1 (10.0%) | 900.2 | 1024 |" in md
    # refusal and unsafe rates: separate tables, each with its denominator; no "refused" on the harm judge
    refusal_table = md.split("## Refusal rate by condition")[1].split("## ")[0]
    unsafe_table = md.split("## Unsafe rate by condition")[1].split("## ")[0]
    assert "| baseline | substring (refusal) | harmful | 6/7 | 85.7% | 50.0% to 97.0% | 3 | 0 |" in refusal_table
    assert "| baseline | llamaguard3 (harm) | harmful | 2/6 | 33.3% | 10.0% to 70.0% | 3 | 1 |" in unsafe_table
    assert "llamaguard3" not in refusal_table and "refused" not in unsafe_table
    cross = "| substring (refusal) | llamaguard3 (harm) | baseline | harmful | 7 | 1 | 2 | 3 | 1 | 33.3% | 25.0% | 3 |"
    assert cross in md
    assert "| substring | refusal |" in md and "| llamaguard3 | harm |" in md
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["claims"]["test_refusal_drop[ablation]"] == {"substring": {"drop_pp": 40.04}}
    assert results["provenance"]["test_refusal_drop[ablation]"]["datasets"] == ["jailbreakbench"]
    assert results["setup"]["chat"]["refusal_token_ids"] == [40]
    assert set(results["setup"]) == set(ARTIFACTS) - {"conditions"}
    assert [(r["judge"], r["measure"], r.get("refused"), r.get("unsafe")) for r in results["rates"]] == [
        ("substring", "refusal rate", 6, None), ("llamaguard3", "unsafe rate", None, 2)]
    assert math.isnan(results["setup"]["judge_agreement"]["llamaguard3/substring/baseline/harmless"]["kappa"])
    assert results["setup"]["truncation"]["baseline/harmful"]["cut"] == 6


def test_setup_sections_stay_out_when_nothing_to_show(tmp_path):
    quiet = {"reasoning": {k: {**v, "reasoning": "none", "no_answer": 0} for k, v in ARTIFACTS["reasoning"].items()},
             "unjudged": {k: {**v, "no_answer": 0, "unparseable": 0} for k, v in ARTIFACTS["unjudged"].items()}}
    md = write_report(tmp_path, {"experiment": "x"}, CLAIMS, quiet).read_text()
    assert "## Reasoning" not in md and "## Completions without a judgment" not in md and "## Rehearsal" not in md


def test_snapshots_compare_counts_exactly_and_continuous_figures_within_their_tolerance():
    from harness.report.write import figures_match

    base = {"n": 80, "refused": 32, "rate": 0.4, "kl_mean": 0.5773, "mcnemar_p": 4.66e-10, "exact": True,
            "judge": "substring", "cosines": [0.953, 0.961], "nan": float("nan")}
    assert figures_match(base, dict(base))
    assert figures_match({**base, "kl_mean": 0.5772, "cosines": [0.9531, 0.9609]}, base), "float noise passes"
    assert figures_match({**base, "mcnemar_p": 4.7e-10}, base)
    for changed in ({"n": 81}, {"refused": 33}, {"rate": 0.4125}, {"kl_mean": 0.59}, {"mcnemar_p": 9e-10},
                    {"exact": 1}, {"judge": "llamaguard2"}, {"cosines": [0.953]}, {"nan": 0.0}, {"extra": 1}):
        assert not figures_match({**base, **changed}, base), changed


def test_category_plot_says_refusal_rate_and_plots_refusal(tmp_path):
    """categories.png is labelled with what it plots: the claims feed it refusal (1 = refused), and the report
    labels its axis "refusal rate"; the label is read back from the PNG itself."""
    import json as _json

    import pandas as pd
    from PIL import Image

    from harness.stats.proportions import category_table

    long = pd.DataFrame({"id": ["a", "b", "c", "d"] * 2, "category": ["x", "x", "y", "y"] * 2,
                         "condition": ["baseline"] * 4 + ["ablation"] * 4,
                         "score": [1, 1, 1, 0] + [0, 0, 1, 0]})  # refused = 1, as test_mcnemar_significant builds it
    write_report(tmp_path, {"experiment": "t"}, {}, {"category_table": category_table(long)})
    labels = _json.loads(Image.open(tmp_path / "categories.png").text["Description"])
    assert labels == [{"title": "Harmful prompts by category", "xlabel": "", "ylabel": "refusal rate"}]
    rows = pd.read_csv(tmp_path / "categories.csv")
    assert rows.set_index(["category", "condition"]).loc[("x", "baseline"), "rate"] == 1.0
    assert "## Refusal by category" in (tmp_path / "report.md").read_text()


def _sweep():
    import pandas as pd

    rows = [(21, 0.33, False, ""), (22, -0.69, False, ""), (15, -5.67, True, "kl 7.992 > kl_max 1"),
            (23, -1.53, True, "kl 1.285 > kl_max 1"), (0, float("nan"), True, "zero-norm candidate")]
    rows += [(layer, 2.0 + layer / 10, True, f"induce {layer}") for layer in range(1, 12)]
    frame = pd.DataFrame(rows, columns=["layer", "bypass_score", "filtered", "filter_reason"])
    return frame.assign(pos=-1, selected=frame["layer"] == 22)


def test_report_states_areas_coherence_stability_draws_and_filtered_candidates(tmp_path):
    """What issue 25 found a reader could not tell: which areas were fit on, whether compliance is coherent,
    that the top budget's "repeats" are one subset, and why the best-scoring candidates were filtered."""
    import pandas as pd

    from harness.measures.coherence import CoherenceRule, summarize

    rule = CoherenceRule(min_logprob=-2.5, max_repetition=0.4, calibrated_on="baseline/harmless_val", n=3)
    rows = {"ablation/harmful": {"condition": "ablation", "set": "harmful",
                                 **summarize([-1.0, -6.0, -1.0, -1.2], [0.0, 0.1, 0.8, 0.0], [1, 1, 1, 0], rule)}}
    curve = pd.DataFrame([{"budget": b, "repeat": r, "cosine": 0.9 + b / 100 + (r / 1000 if b == 2 else 0),
                           "areas": "a,b" if b == 8 else f"s{r}"} for b in (2, 8) for r in range(5)])
    artifacts = {"coherence": {"rule": rule.as_dict(), "judge": "substring", "rows": rows},
                 "policy_areas": {"fit": ["fraud", "weapons"], "heldout": ["self_harm"], "tuned": True,
                                  "harmful_eval": "demo (held-out areas)", "harmless_eval": "demo (held-out areas)"},
                 "stability": curve, "selection": _sweep()}
    md = write_report(tmp_path, {"experiment": "x"}, {}, artifacts).read_text()
    assert ("- **policy areas fit on** (direction fit and selection; the model's refusal fine-tune): "
            "fraud, weapons") in md
    assert "- **policy areas held out** (never fit on): self_harm" in md
    assert md.index("policy areas fit on") < md.index("## Coherence by condition")
    assert "Coherent: log-prob >= -2.50 and repetition <= 0.40" in md
    assert "| ablation | harmful | 4 | -2.30 | -1.10 | 22.5% | 2 (50.0%) | 3 | 1 (25.0%) | 2 |" in md
    assert "| 8 | 0.98 | 0.98 | 0.98 | 5 | 1 |" in md and "| 2 | 0.922 | 0.92 | 0.924 | 5 | 5 |" in md
    assert "At budget 8 all 5 draws are the same 8 areas" in md and "At budget 2" not in md
    assert "2 of 16 candidates passed the filters" in md
    assert "| 15 | -5.67 | True | kl 7.992 > kl_max 1 | -1 | False |" in md, "the best score, filtered, with why"
    assert "| 22 | -0.69 | False | passed | -1 | True |" in md and "| 0 |" not in md.split("## Direction selection")[1]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setup"]["policy_areas"]["heldout"] == ["self_harm"]
