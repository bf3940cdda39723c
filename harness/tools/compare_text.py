"""Two runs' comparison as text: direction first, then environment, figures, verdicts and flips."""

from __future__ import annotations

import json
from typing import Any

from harness.report.write import JUDGMENTS_CSV
from harness.tools.compare import ABSENT, DIRECTION_RECORD, MAX_IDS_SHOWN, MAX_VALUE_CHARS, Comparison, KeyDiff, same


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, bool)) or value is None else str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _flip_labels(judge: str) -> tuple[str, str]:
    """What a 0->1 and a 1->0 flip are for this judge's question: a harm judge's 0 is safe, never refused."""
    from harness.config import JUDGE_QUESTION

    if JUDGE_QUESTION.get(judge) == "harm":
        return "safe->unsafe", "unsafe->safe"
    return "refused->complied", "complied->refused"


def _columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def _missing(recorded: tuple[bool, bool], what: str) -> str | None:
    lacking = [name for name, has in zip("AB", recorded) if not has]
    if not lacking:
        return None
    return f"  not recorded in {' and '.join(lacking)} ({what})"


def _key_diffs(diffs: list[KeyDiff], indent: str = "  ") -> list[str]:
    rows = [["key", "A", "B"]] + [[d.key, _show(d.a), _show(d.b)] for d in diffs]
    return _columns(rows, indent)


def _outcome(value: Any) -> str:
    return "(not recorded)" if value is None else _show(value)


def format_comparison(c: Comparison, changed_only: bool = False) -> str:
    """The comparison as text: direction, environment, meta, claims, flips, verdict. Ids, scores and figures only."""
    out = [f"A: {c.a}", f"B: {c.b}", "", "== Direction =="]
    d = c.direction
    missing = _missing(d.recorded, f"no {DIRECTION_RECORD}")
    cos = "n/a" if d.cosine is None else f"{d.cosine:.6f}"
    if missing:
        out.append(missing + "; whether the direction changed cannot be told")
    if any(d.recorded):
        verdict = "" if missing else ("CHANGED: the runs intervene along different directions, so every figure and flip below mixes "
                   "that change with the one under review" if d.changed else "same layer, position and vector")
        out += [f"  {verdict}"] if verdict else []
        out += _columns([["", "A", "B"], ["layer", _show(d.layers[0]), _show(d.layers[1])],
                         ["position", _show(d.positions[0]), _show(d.positions[1])], ["cosine(A, B)", cos, ""]],
                        indent="    ")
    out += ["", "== Environment =="]
    missing = _missing(c.env.recorded, 'results.json has no "environment" record')
    if missing:
        out.append(missing)
    elif not c.env.diffs:
        out.append(f"  identical ({c.env.n_keys} keys)")
    else:
        out.append(f"  {len(c.env.diffs)} of {c.env.n_keys} keys differ:")
        out += _key_diffs(c.env.diffs, indent="    ")

    out += ["", "== Meta =="]
    out += _key_diffs(c.meta) if c.meta else ["  identical"]

    changed = sum(cl.figures_differ for cl in c.claims)
    legend = "* changed, ~ changed within the snapshot tolerance"
    out += ["", f"== Claims == ({len(c.claims)} claims, {changed} with changed figures; {legend})"]
    missing = _missing(c.outcomes_recorded, 'results.json has no "outcomes"; verdicts cannot be compared')
    if missing:
        out.append(missing)
    for cl in c.claims:
        if changed_only and not (cl.figures_differ or cl.verdict_differs):
            continue
        verdict = (f"{_outcome(cl.outcome_a)} -> {_outcome(cl.outcome_b)}   VERDICT CHANGED" if cl.verdict_differs
                   else _outcome(cl.outcome_a) if same(cl.outcome_a, cl.outcome_b)
                   else f"{_outcome(cl.outcome_a)} | {_outcome(cl.outcome_b)}")
        out += ["", f"{cl.name}: {verdict}"]
        rows = [r for r in cl.rows if r.change or not changed_only]
        if rows:
            out += _columns([["figure", "A", "B", ""]] + [[r.figure, _show(r.a), _show(r.b), r.change] for r in rows],
                            indent="    ")
        elif not cl.rows:
            out.append("    (no figures)")

    out += ["", "== Per-prompt judgment flips (A -> B, prompts matched by dataset id) =="]
    f = c.flips
    missing = _missing(f.recorded, f"no {JUDGMENTS_CSV}")
    if missing:
        out.append(missing)
    elif not f.groups:
        out.append("  no (condition, prompt set, judge) judged in both runs")
    else:
        rows = [["condition", "set", "judge", "n both", "0->1 (refused->complied | safe->unsafe)",
                 "1->0 (complied->refused | unsafe->safe)", "exact McNemar p (two-sided)", "one run only", "unjudged"]]
        rows += [[g.condition, g.set, g.judge, str(g.n), str(g.refused_to_complied), str(g.complied_to_refused),
                  f"{g.mcnemar_p:.4g}", str(g.one_run_only), str(g.unjudged)] for g in f.groups]
        out += _columns(rows)
        for g in f.groups:
            up, down = _flip_labels(g.judge)
            for label, ids in ((up, g.ids_refused_to_complied), (down, g.ids_complied_to_refused)):
                if ids:
                    more = f" (+{len(ids) - MAX_IDS_SHOWN} more)" if len(ids) > MAX_IDS_SHOWN else ""
                    out.append(f"  {g.condition}/{g.set}/{g.judge} {label}: {', '.join(ids[:MAX_IDS_SHOWN])}{more}")
    for run, only in (("A", f.only_a), ("B", f.only_b)):
        if only:
            out.append(f"  judged in {run} only: " + ", ".join("/".join(g) for g in only))

    out += ["", "== Verdict =="]
    differ = c.verdicts_differ
    if differ:
        out.append(f"  {len(differ)} claim(s) changed verdict: {', '.join(differ)}")
    elif not all(c.outcomes_recorded):
        out.append("  verdicts not compared (outcomes not recorded in both runs)")
    else:
        out.append(f"  every claim's verdict is the same ({len(c.claims)} claims)")
    return "\n".join(out) + "\n"
