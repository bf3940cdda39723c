"""`python -m harness compare RUN_A RUN_B` on two small fake run directories with known differences: the
environment diff, figures side by side, per-prompt flips with an exact McNemar p checked against a hand value,
and the exit status (0 same verdicts, 1 a verdict differs, 2 a bad path); plus what a run writes for it
(results.json "outcomes", judgments.csv with prompt ids and scores only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.__main__ as cli
from harness.report.write import JUDGMENTS_CSV, judgments_csv, write_report
from harness.tools.compare import ABSENT, CompareError, compare_runs, flatten, load_run
from harness.tools.compare_text import format_comparison

ROOT = Path(__file__).resolve().parent.parent

ENV_A = {"software": {"torch": "2.11.0", "transformers": "5.17.0"}, "code": {"commit": "a" * 40, "dirty": False},
         "judges": {"substring": {"sha256": "1" * 64}}, "experiment": {"seed": 0, "limit": None, "rehearsal": None}}
ENV_B = {"software": {"torch": "2.11.0", "transformers": "5.18.0"}, "code": {"commit": "b" * 40, "dirty": False},
         "judges": {"substring": {"sha256": "1" * 64}, "llamaguard3": {"revision": "c" * 40}},
         "experiment": {"seed": 0, "limit": None, "rehearsal": None}}

CLAIMS = {
    "test_baseline_refuses": {"harmful": {"n": 10, "rate": 0.6, "refused": 6}, "other_judges": {}},
    "test_refusal_drop[ablation]": {"substring": {"drop_pp": 40.04, "mcnemar_p": 0.03125}, "curve": [0.5, 0.25]},
}
OUTCOMES = {"test_baseline_refuses": "passed", "test_refusal_drop[ablation]": "passed"}

IDS = [f"jbb-{i}" for i in range(10)]
# baseline/harmful/substring: the first 6 prompts complied in A and are refused in B (b = 0, c = 6); jbb-9 is
# unjudged in B; B judged jbb-10, which A never saw. ablation/harmful/substring: 2 refused->complied, 1 back.
A_SCORES = {("baseline", "harmful", "substring"): [1, 1, 1, 1, 1, 1, 0, 0, 0, 1],
            ("ablation", "harmful", "substring"): [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]}
B_SCORES = {("baseline", "harmful", "substring"): [0, 0, 0, 0, 0, 0, 0, 0, 0, None, 1],
            ("ablation", "harmful", "substring"): [1, 1, 0, 1, 1, 1, 1, 1, 0, 0]}


def _judgments(scores: dict) -> dict[str, dict]:
    """What the judgments fixture hands write_report: per (condition, set, judge), dataset ids and scores."""
    ids = IDS + ["jbb-10"]
    return {"/".join(k): {"condition": k[0], "set": k[1], "judge": k[2], "ids": ids[:len(v)], "scores": v}
            for k, v in scores.items()}


def _run(path: Path, *, claims=CLAIMS, outcomes=OUTCOMES, env=ENV_A, scores=A_SCORES, meta=None) -> Path:
    path.mkdir(parents=True)
    results = {"meta": meta or {"experiment": "x", "limit": None}, "claims": claims}
    if outcomes is not None:
        results["outcomes"] = outcomes
    if env is not None:
        results["environment"] = env
    (path / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    if scores is not None:
        (path / JUDGMENTS_CSV).write_text(judgments_csv(_judgments(scores)))
    return path


def _compare(a: Path, b: Path):
    return compare_runs(load_run(a), load_run(b))


def test_flatten_makes_dotted_paths_of_nested_dicts_and_lists():
    assert flatten({"a": {"b": 1, "c": [2, {"d": 3}]}, "e": {}, "f": []}) == {
        "a.b": 1, "a.c[0]": 2, "a.c[1].d": 3, "e": {}, "f": []}


def test_flips_counts_and_exact_mcnemar_p(tmp_path):
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", scores=B_SCORES))
    groups = {(g.condition, g.set, g.judge): g for g in c.flips.groups}
    base = groups["baseline", "harmful", "substring"]
    assert (base.n, base.refused_to_complied, base.complied_to_refused) == (9, 0, 6)
    assert base.mcnemar_p == pytest.approx(0.03125, abs=1e-12)  # 2 * (1/2)**6, by hand
    assert (base.one_run_only, base.unjudged) == (1, 1)
    assert base.ids_complied_to_refused == IDS[:6] and base.ids_refused_to_complied == []
    abl = groups["ablation", "harmful", "substring"]
    assert (abl.n, abl.refused_to_complied, abl.complied_to_refused) == (10, 2, 1)
    assert abl.mcnemar_p == pytest.approx(1.0)  # 2 * P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4/8
    assert abl.ids_refused_to_complied == ["jbb-0", "jbb-1"] and abl.ids_complied_to_refused == ["jbb-2"]
    text = format_comparison(c)
    assert "0.03125" in text and "baseline/harmful/substring complied->refused: jbb-0, jbb-1" in text


def test_flips_against_itself_are_none(tmp_path):
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b"))
    assert [(g.refused_to_complied, g.complied_to_refused, g.mcnemar_p) for g in c.flips.groups] == [(0, 0, 1.0)] * 2


def test_flips_only_on_groups_judged_in_both_runs(tmp_path):
    b_scores = {**A_SCORES, ("baseline", "harmful", "llamaguard3"): [0] * 10}
    del b_scores["ablation", "harmful", "substring"]
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", scores=b_scores))
    assert [(g.condition, g.judge) for g in c.flips.groups] == [("baseline", "substring")]
    assert c.flips.only_a == [("ablation", "harmful", "substring")]
    assert c.flips.only_b == [("baseline", "harmful", "llamaguard3")]


def test_environment_diff_lists_only_differing_or_missing_keys(tmp_path):
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", env=ENV_B))
    diffs = {d.key: (d.a, d.b) for d in c.env.diffs}
    assert diffs == {"code.commit": ("a" * 40, "b" * 40), "software.transformers": ("5.17.0", "5.18.0"),
                     "judges.llamaguard3.revision": (ABSENT, "c" * 40)}
    text = format_comparison(c)
    assert "3 of 9 keys differ" in text and "judges.llamaguard3.revision" in text and "software.torch" not in text


def test_environment_absent_in_one_run_is_said_not_fatal(tmp_path):
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", env=None, scores=None))
    assert c.env.recorded == (True, False) and c.env.diffs == []
    text = format_comparison(c)
    assert 'not recorded in B (results.json has no "environment" record)' in text
    assert f"not recorded in B (no {JUDGMENTS_CSV})" in text


def test_claims_side_by_side_mark_changed_figures(tmp_path):
    moved = {"test_baseline_refuses": {"harmful": {"n": 10, "rate": 0.7, "refused": 7}, "other_judges": {}},
             "test_refusal_drop[ablation]": {"substring": {"drop_pp": 40.05, "mcnemar_p": 0.03125}, "curve": [0.5]}}
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", claims=moved))
    rows = {(cl.name, r.figure): (r.a, r.b, r.change) for cl in c.claims for r in cl.rows}
    assert rows["test_baseline_refuses", "harmful.rate"] == (0.6, 0.7, "*")
    assert rows["test_baseline_refuses", "harmful.n"] == (10, 10, "")
    assert rows["test_baseline_refuses", "other_judges"] == ({}, {}, "")
    assert rows["test_refusal_drop[ablation]", "substring.drop_pp"] == (40.04, 40.05, "~")  # within tolerance
    assert rows["test_refusal_drop[ablation]", "curve[1]"] == (0.25, ABSENT, "*")
    assert c.verdicts_differ == [] and c.exit_code == 0
    assert [cl.name for cl in c.claims if cl.figures_differ] == list(CLAIMS)


def test_a_rehearsal_against_itself_shows_no_change(tmp_path):
    """Random weights leave NaN rates (written as NaN in results.json); NaN against NaN is no change."""
    nan = {"test_baseline_refuses": {"harmful": {"n": 0, "rate": float("nan")}}}
    outcomes = {"test_baseline_refuses": "rehearsed"}
    c = _compare(_run(tmp_path / "a", claims=nan, outcomes=outcomes), _run(tmp_path / "b", claims=nan, outcomes=outcomes))
    assert not any(cl.figures_differ for cl in c.claims) and c.meta == [] and c.exit_code == 0


def test_verdict_change_and_claim_absent_in_one_run(tmp_path):
    failed = {**OUTCOMES, "test_refusal_drop[ablation]": "failed"}
    c = _compare(_run(tmp_path / "a"), _run(tmp_path / "b", outcomes=failed))
    assert c.verdicts_differ == ["test_refusal_drop[ablation]"] and c.exit_code == 1
    assert "test_refusal_drop[ablation]: passed -> failed   VERDICT CHANGED" in format_comparison(c)
    fewer = {"test_baseline_refuses": CLAIMS["test_baseline_refuses"]}
    c = _compare(_run(tmp_path / "c"), _run(tmp_path / "d", claims=fewer, outcomes={"test_baseline_refuses": "passed"}))
    assert c.verdicts_differ == ["test_refusal_drop[ablation]"]


def test_exit_codes(tmp_path, capsys):
    a = _run(tmp_path / "a")
    assert cli.main(["compare", str(a), str(_run(tmp_path / "same"))]) == 0
    out = capsys.readouterr().out
    assert "every claim's verdict is the same (2 claims)" in out and "identical (8 keys)" in out
    # Figures, environment and judgments all changed, verdicts not: 0.
    assert cli.main(["compare", str(a), str(_run(tmp_path / "moved", env=ENV_B, scores=B_SCORES))]) == 0
    known = {**OUTCOMES, "test_baseline_refuses": "known failure"}
    assert cli.main(["compare", str(a), str(_run(tmp_path / "xfail", outcomes=known))]) == 1
    capsys.readouterr()
    for bad, why in ((tmp_path / "nowhere", "no such directory"), (tmp_path, "no results.json here")):
        assert cli.main(["compare", str(a), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {bad}: {why} (not a run's results directory, e.g. reports/demo)\n" or \
            err == f"error: {bad}: {why}\n"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    assert cli.main(["compare", str(tmp_path / "broken"), str(a)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_exit_status_of_the_command(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", outcomes={**OUTCOMES, "test_baseline_refuses": "failed"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = [subprocess.run([sys.executable, "-m", "harness", "compare", str(x), str(y)], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False).returncode
             for x, y in ((a, a), (a, b), (a, tmp_path / "none"))]
    assert codes == [0, 1, 2]


def test_old_runs_without_outcomes_compare_without_a_verdict(tmp_path):
    c = _compare(_run(tmp_path / "a", outcomes=None), _run(tmp_path / "b"))
    assert c.outcomes_recorded == (False, True) and c.verdicts_differ == [] and c.exit_code == 0
    assert "verdicts not compared" in format_comparison(c)
    # A claim only one run has changed verdict (absent -> passed) even where the other run records no outcomes.
    fewer = {"test_baseline_refuses": CLAIMS["test_baseline_refuses"]}
    c = _compare(_run(tmp_path / "c", claims=fewer, outcomes=None), _run(tmp_path / "d"))
    assert c.verdicts_differ == ["test_refusal_drop[ablation]"] and c.exit_code == 1


def test_load_run_errors_are_one_line(tmp_path):
    with pytest.raises(CompareError, match="no such directory"):
        load_run(tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(CompareError, match="not a directory"):
        load_run(tmp_path / "f")
    run = _run(tmp_path / "r")
    assert load_run(run / "results.json").path == run  # the file itself names its run
    (run / JUDGMENTS_CSV).write_text("id,score\n")
    with pytest.raises(CompareError, match="missing column"):
        load_run(run)


CLAIM_STATE = {
    "test_baseline_refuses": {"figures": {"harmful": {"n": 3}}, "outcome": "passed", "headline": ""},
    "test_refusal_drop[ablation]": {"figures": {"x": 1.0}, "outcome": "known failure", "known_failure": "why"},
    "test_kl[ablation]": {"outcome": "failed"},  # a setup error: no figures
}


def test_a_run_writes_outcomes_and_per_prompt_scores_only(tmp_path):
    """What the report writer hands compare: outcomes in results.json, judgments.csv with ids and scores, sorted, the
    same bytes on a rerun; no judgments, no stale judgments.csv."""
    arts = {"judgments": {"b/harmful/s": {"condition": "b", "set": "harmful", "judge": "s", "ids": ["7", "x-1"],
                                          "scores": [1, None]},
                          "a/harmless/s": {"condition": "a", "set": "harmless", "judge": "s", "ids": ["h0"],
                                           "scores": [0]}}}
    write_report(tmp_path, {"experiment": "x"}, CLAIM_STATE, arts)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["outcomes"] == {"test_baseline_refuses": "passed", "test_refusal_drop[ablation]": "known failure",
                                   "test_kl[ablation]": "failed"}
    first = (tmp_path / JUDGMENTS_CSV).read_bytes()
    assert first.decode() == "id,condition,set,judge,score\nh0,a,harmless,s,0\n7,b,harmful,s,1\nx-1,b,harmful,s,\n"
    write_report(tmp_path, {"experiment": "x"}, CLAIM_STATE, arts)
    assert (tmp_path / JUDGMENTS_CSV).read_bytes() == first
    assert [(r["id"], r["score"]) for r in load_run(tmp_path).judgments] == [("h0", 0), ("7", 1), ("x-1", None)]
    write_report(tmp_path, {"experiment": "x"}, CLAIM_STATE, {})
    assert not (tmp_path / JUDGMENTS_CSV).exists()


def _with_direction(path: Path, layer: int, pos: int, unit: list[float]) -> Path:
    import torch

    from harness.tools.compare import DIRECTION_RECORD, direction_record

    (path / DIRECTION_RECORD).write_text(json.dumps(direction_record(layer, pos, "selected", torch.tensor(unit))))
    return path


def test_a_changed_direction_is_named_first(tmp_path):
    """A --limit run refits its direction: compare says so, with layer, position and cosine, before any figure."""
    a = _with_direction(_run(tmp_path / "a"), 22, -1, [0.6, 0.8, 0.0])
    b = _with_direction(_run(tmp_path / "b", env=ENV_B, scores=B_SCORES), 20, -1, [0.8, 0.6, 0.0])
    c = _compare(a, b)
    assert c.direction.changed and c.direction.layers == (22, 20) and c.direction.cosine == pytest.approx(0.96)
    text = format_comparison(c)
    first = text.index("== Direction ==")
    assert first < text.index("== Environment ==") and first < text.index("== Claims ==")
    section = text[first:text.index("== Environment ==")]
    assert "CHANGED" in section and "22" in section and "20" in section and "0.960000" in section, section


def test_the_same_direction_is_said_to_be_the_same(tmp_path):
    a = _with_direction(_run(tmp_path / "a"), 22, -1, [0.6, 0.8, 0.0])
    b = _with_direction(_run(tmp_path / "b"), 22, -1, [0.6, 0.8, 0.0])
    c = _compare(a, b)
    assert not c.direction.changed and c.direction.cosine == pytest.approx(1.0)
    assert "same layer, position and vector" in format_comparison(c)
    # Same layer and position, a refit vector: still a change.
    d = _with_direction(_run(tmp_path / "d"), 22, -1, [0.8, 0.6, 0.0])
    assert _compare(a, d).direction.changed and "CHANGED" in format_comparison(_compare(a, d))


def test_a_run_without_a_direction_record_says_so(tmp_path):
    a = _with_direction(_run(tmp_path / "a"), 22, -1, [1.0, 0.0])
    text = format_comparison(_compare(a, _run(tmp_path / "b")))
    assert "not recorded in B (no direction.json); whether the direction changed cannot be told" in text
    assert "CHANGED" not in text


def test_flips_of_a_harm_judge_are_named_safe_and_unsafe():
    from harness.tools.compare_text import _flip_labels

    assert _flip_labels("llamaguard2") == ("safe->unsafe", "unsafe->safe")
    assert _flip_labels("substring") == _flip_labels("sorry-bench") == ("refused->complied", "complied->refused")
