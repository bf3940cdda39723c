"""The sections of report.md, one function per section, from a run's claims and artifacts."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fmt_p(p: float) -> str:
    return f"{p:.3g}"


def markdown_table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section_claims(claims: dict[str, dict]) -> list[str]:
    out = ["## Claims", "", "| claim | outcome | headline |", "|---|---|---|"]
    for name, claim in claims.items():
        out.append(f"| `{name}` | {claim.get('outcome', 'not run')} | {claim.get('headline', '')} |")
    known = {name: claim["known_failure"] for name, claim in claims.items() if claim.get("known_failure")}
    if known:
        out += ["", "Known failures (declared in the experiment with the measured figure; run as strict xfail):", ""]
        out += [f"- `{name}`: {reason}" for name, reason in known.items()]
    return out + [""]


MEASURE_INTROS: dict[str, str] = {
    "refusal rate": "Refusal rate = share of judged completions a refusal judge scores 0 (refused), or the "
                    "SORRY-Bench fulfilment judge scores 0 (did not fulfil the request); 95% Wilson intervals.",
    "unsafe rate": "Unsafe rate = share of judged completions a harm judge scores 1 (unsafe); a harm judge's 0 is a "
                   "safe answer, not a refusal; 95% Wilson intervals.",
}
COUNT_LABELS: dict[str, str] = {"refusal rate": "refused", "unsafe rate": "unsafe"}


def unique_rows(rows: list[dict]) -> list[dict]:
    """One row per (condition, judge, prompt set), in first-recorded order (claims record shared rows again)."""
    return list({(r["condition"], r["judge"], r["set"]): r for r in reversed(rows)}.values())[::-1]


def section_conditions(rows: list[dict]) -> list[str]:
    """One table per measure: refusal rates (refusal and fulfilment judges) and unsafe rates (harm judges), each
    row with its denominator (judged completions) and the completions without a judgment."""
    rows = unique_rows(rows)
    out: list[str] = []
    for measure, intro in MEASURE_INTROS.items():
        mine = [r for r in rows if r.get("measure", "refusal rate") == measure]
        if not mine:
            continue
        count = COUNT_LABELS[measure]
        out += [f"## {measure.capitalize()} by condition", "", intro, "",
                f"| condition | judge (question) | prompt set | {count} / judged | {measure} | 95% CI | no answer "
                "| unparseable |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['condition']} | {r['judge']} ({r.get('question', 'refusal')}) | {r['set']} "
                f"| {r[count]}/{r['n']} "
                f"| {_pct(r['rate'])} | {_pct(r['ci_low'])} to {_pct(r['ci_high'])} | {r.get('no_answer', 0)} "
                f"| {r.get('unparseable', 0)} |" for r in mine]
        out.append("")
    return out


def section_generation(paths: dict[str, dict]) -> list[str]:
    if not paths:
        return []
    out = ["## How each condition was generated", "", "| condition | intervention | generation path |", "|---|---|---|"]
    out += [f"| {name} | {p['condition']} | {p['ran']} |" for name, p in paths.items()]
    return out + [""]


def section_flips(flips: dict[str, dict]) -> list[str]:
    if not flips:
        return []
    out = [
        "## Paired flips on harmful prompts (baseline -> condition)",
        "",
        "| condition | refusal->compliance | compliance->refusal | both complied | both refused "
        "| compliance change | 95% CI | exact McNemar p (two-sided) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cond, f in flips.items():
        out.append(
            f"| {cond} | {f['refusal_to_compliance']} | {f['compliance_to_refusal']} | {f['both_complied']} "
            f"| {f['both_refused']} | {100 * f['diff']:+.1f} pp | {100 * f['ci_low']:.1f} to {100 * f['ci_high']:.1f} pp "
            f"({f.get('ci_method', 'wald')}) | {_fmt_p(f['mcnemar_p'])} |"
        )
    return out + [""]


KEYWORD_JUDGES = ("substring",)
CUT_FLAG_SHARE = 0.1  # a cut share from here on is bold in the truncation table


def _disagreement_kinds(a: str, b: str) -> str:
    """What each disagreement means for this pair, in a keyword judge's terms where one is a keyword judge."""
    if b in KEYWORD_JUDGES and a not in KEYWORD_JUDGES:
        return (f"- {a} vs {b}: *A refused, B complied* are refusals the keyword list misses (phrased differently) "
                "or evasive text it counts as compliance; *A complied, B refused* are answers with a refusal phrase "
                f"that {a} judged compliant (a disclaimer before complying, or a refusal after it).")
    if a in KEYWORD_JUDGES and b not in KEYWORD_JUDGES:
        return (f"- {a} vs {b}: *A complied, B refused* are refusals the keyword list misses (phrased differently) "
                "or evasive text it counts as compliance; *A refused, B complied* are answers with a refusal phrase "
                f"that {b} judged compliant (a disclaimer before complying, or a refusal after it).")
    return f"- {a} vs {b}: *A refused, B complied* and *A complied, B refused* as named."


def _kappa(k: float) -> str:
    return "n/a" if math.isnan(k) else f"{k:.3f}"


def _share(x: float) -> str:
    """A share of nothing (n = 0) is n/a, not nan%."""
    return "n/a" if math.isnan(x) else _pct(x)


def _named(row: dict, side: str) -> str:
    """A judge with its question, e.g. `sorry-bench (fulfilment)`, where the row records it."""
    question = row.get(f"question_{side}")
    return f"{row[side]} ({question})" if question else row[side]


def section_agreement(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    intro = ("Judges of the same measure (refusal and fulfilment judges both give a refusal rate) on the same "
             "completions. Pairs either judge left unjudged are skipped and counted. Cohen's kappa is n/a where "
             "undefined: no pair, or both judges gave one verdict throughout.")
    header = ("| A | B | condition | prompt set | n | agreement | kappa | A refused, B complied "
              "| A complied, B refused | skipped |")
    out = ["## Judge agreement", "", intro, ""]
    out += list(dict.fromkeys(_disagreement_kinds(r["a"], r["b"]) for r in rows.values()))
    out += ["", header, "|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {_named(r, 'a')} | {_named(r, 'b')} | {r['condition']} | {r['set']} | {r['n']} "
            f"| {_share(r['agreement'])} "
            f"| {_kappa(r['kappa'])} | {r['a_refused_b_complied']} | {r['a_complied_b_refused']} | {r['skipped']} |"
            for r in rows.values()]
    return out + [""]


def section_cross(rows: dict[str, dict]) -> list[str]:
    """A refusal judge beside a harm judge: two questions, so no agreement figure, only what the pairs are."""
    if not rows:
        return []
    out = ["## Refusal judge beside harm judge", "",
           "Two questions on the same completions (did the model refuse? is the answer unsafe?), so there is no "
           "agreement to measure: a helpful answer to a harmless prompt is a non-refusal *and* safe. Shown: how often "
           "a non-refusal is judged safe, and a refusal judged unsafe (a refusal phrase beside harmful content, or a "
           "false alarm), over the pairs both judged.", "",
           "| refusal judge (question) | harm judge (question) | condition | prompt set | n | non-refusal, safe "
           "| non-refusal, unsafe | refusal, safe | refusal, unsafe | non-refusals judged safe "
           "| refusals judged unsafe | skipped |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['refusal_judge']} ({r['question_refusal']}) | {r['harm_judge']} ({r['question_harm']}) "
            f"| {r['condition']} | {r['set']} | {r['n']} | {r['complied_safe']} | {r['complied_unsafe']} "
            f"| {r['refused_safe']} | {r['refused_unsafe']} | {_share(r['complied_safe_share'])} "
            f"| {_share(r['refused_unsafe_share'])} | {r['skipped']} |" for r in rows.values()]
    return out + [""]


def headline_rates(artifacts: dict[str, Any]) -> dict[tuple[str, str], dict]:
    """(condition, prompt set) -> the refusal-rate row of the first judge (in headline order) that has one there:
    the refusal headline, or on harmless prompts the over-refusal judge where the headline is the fulfilment
    judge. Never a harm judge's unsafe rate."""
    order = {name: i for i, name in enumerate(artifacts.get("judges") or {})}
    rates: dict[tuple[str, str], dict] = {}
    rows = [r for r in artifacts.get("conditions", []) if r.get("measure", "refusal rate") == "refusal rate"]
    for r in sorted(rows, key=lambda r: order.get(r["judge"], len(order))):
        rates.setdefault((r["condition"], r["set"]), r)
    return rates


def section_truncation(rows: dict[str, dict], rates: dict[tuple[str, str], dict]) -> list[str]:
    if not rows:
        return []
    intro = ("Cut: the completion used all of max_new_tokens without stopping, so anything it would have written "
             "after (a refusal, say) is missing for every judge. Late refusal: a refusal phrase (the substring "
             "judge's list) after the first sentence and none in it: the model started complying, then refused. A low "
             f"refusal rate beside a high cut share may be the cap's doing; cut shares of {CUT_FLAG_SHARE:.0%} or more "
             "are bold. Token counts are what generation produced, stop token excluded; a completion cached before "
             "counts were kept is re-tokenized instead (an estimate, a token or two off at the cap; counted per row).")
    header = ("| condition | prompt set | n | refusal rate (headline) | cut by max_new_tokens | cut, no refusal phrase "
              "| late refusals | mean new tokens | max_new_tokens |")
    out = ["## Truncation and late refusals", "", intro, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        rate = rates.get((r["condition"], r["set"]))
        cut = f"{r['cut']} ({_share(r['cut_share'])})"
        cut = f"**{cut}**" if r["cut_share"] >= CUT_FLAG_SHARE else cut
        out.append(f"| {r['condition']} | {r['set']} | {r['n']} | {_share(rate['rate']) if rate else 'n/a'} | {cut} "
                   f"| {r['cut_no_refusal']} | {r['late_refusal']} ({_share(r['late_refusal_share'])}) "
                   f"| {r['mean_new_tokens']:.1f} | {r['max_new_tokens']} |")
    estimated = sum(r.get("retokenized", 0) for r in rows.values())
    return out + (["", f"{estimated} completions had no recorded count and were re-tokenized.", ""] if estimated else [""])


def _logprob(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def section_coherence(coherence: dict | None) -> list[str]:
    """Per condition and prompt set: fluency and repetition of the completions, and how much of the headline
    judge's compliance is coherent, so a refusal drop made of noise shows as such."""
    if not coherence or not coherence.get("rows"):
        return []
    rule, judge = coherence["rule"], coherence["judge"]
    q = rule["quantile"]
    intro = (f"Log-prob: mean per-token log-probability (nats) of each completion under the unmodified (baseline) "
             f"model, given its prompt; low means noise. Repetition: share of a completion's token {rule['n']}-grams "
             f"that already occurred in it; high means a loop. Coherent: log-prob >= {rule['min_logprob']:.2f} and "
             f"repetition <= {rule['max_repetition']:.2f}, bounds fixed before evaluation as the {q:.0%} and "
             f"{1 - q:.0%} quantiles over the baseline's own completions to the harmless validation prompts "
             f"({rule['calibrated_on']}); an empty completion is not coherent. Complied: the {judge} judge scored "
             "it 1. The unmodified model finds any intervened text less likely than its own, so read the log-prob "
             "against the baseline row of the same prompt set.")
    header = ("| condition | prompt set | n | mean log-prob | median log-prob | mean repetition | coherent "
              f"| complied ({judge}) | complied and coherent | complied, not coherent |")
    out = ["## Coherence by condition", "", intro, "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in coherence["rows"].values():
        out.append(f"| {r['condition']} | {r['set']} | {r['n']} | {_logprob(r['mean_logprob'])} "
                   f"| {_logprob(r['median_logprob'])} | {_share(r['mean_repetition'])} "
                   f"| {r['coherent']} ({_share(r['coherent_share'])}) | {r['complied']} "
                   f"| {r['complied_coherent']} ({_share(r['complied_coherent_share'])}) "
                   f"| {r['complied_incoherent']} |")
    return out + [""]


SETUP_ARTIFACTS = ("policy_areas", "chat", "judges", "filtering", "reasoning", "unjudged", "rehearsal_model",
                   "generation_paths", "judge_agreement", "judge_cross", "truncation", "cuda_allocator")


def section_setup(artifacts: dict[str, Any]) -> list[str]:
    out = []
    chat = artifacts.get("chat")
    if chat:
        out += ["## Chat format", "", "| setting | value |", "|---|---|"]
        out += [f"| {k} | `{json.dumps(v, ensure_ascii=False)}` |" for k, v in chat.items()]
        out.append("")
    judges = artifacts.get("judges")
    if judges:
        out += ["## Judges", "", "Each judge answers one question: refusal (did the model decline), fulfilment "
                "(did the answer fulfil a potentially unsafe request) or harm (is the answer unsafe). The first is "
                "the refusal headline (refusal claims are asserted on it; over-refusal on harmless prompts on a refusal judge "
                "only); a harm judge's headline carries the unsafe-rate claims.", "",
                "| judge | question | identity |", "|---|---|---|"]
        out += [f"| {name} | {ident.get('question', 'refusal')} | `{json.dumps(ident, sort_keys=True)}` |"
                for name, ident in judges.items()]
        out.append("")
    filtering = artifacts.get("filtering")
    if filtering:
        out += ["## Prompt filtering (reference)", "",
                "Harmful train/val prompts kept where the base model's refusal score is > 0, harmless where < 0.", "",
                "| set | before | after |", "|---|---|---|"]
        out += [f"| {name} | {before} | {after} |" for name, (before, after) in filtering["counts"].items()]
        out += (["", filtering["note"]] if filtering.get("note") else []) + [""]
    reasoning = artifacts.get("reasoning")
    if reasoning and any(r["reasoning"] != "none" for r in reasoning.values()):
        out += ["## Reasoning", "", "Judges see the answer only; a completion cut by max_new_tokens inside its "
                "reasoning (no final channel) has no answer: it is not judged, each rate states it beside its "
                "denominator, and a claim fails above thresholds.no_answer_max.", "",
                "| condition | prompt set | n | no answer | mean reasoning tokens | max reasoning tokens |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['condition']} | {r['set']} | {r['n']} | {r['no_answer']} | {r['mean_reasoning_tokens']:.1f} "
                f"| {r['max_reasoning_tokens']} |" for r in reasoning.values()]
        out.append("")
    unjudged = artifacts.get("unjudged")
    if unjudged and any(r["unparseable"] or r["no_answer"] for r in unjudged.values()):
        out += ["## Completions without a judgment", "",
                "No answer: cut inside the reasoning (a claim fails above thresholds.no_answer_max of its "
                "completions). Unparseable: the judge's output had no verdict (counted, never scored; a claim fails "
                "above thresholds.judge_unparseable_max of the judged).", "",
                "| judge | condition | prompt set | n | no answer | unparseable |", "|---|---|---|---|---|---|"]
        out += [f"| {r['judge']} | {r['condition']} | {r['set']} | {r['n']} | {r['no_answer']} | {r['unparseable']} |"
                for r in unjudged.values()]
        out.append("")
    rehearsed = artifacts.get("rehearsal_model")
    if rehearsed:
        out += ["## Rehearsal", "", "Random weights: the figures exercise the pipeline and mean nothing about the "
                "model; no threshold is asserted.", ""]
        out += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in rehearsed.items()] + [""]
    return out


def _short(value: Any) -> str:
    text = str(value)
    return f"{text[:12]}…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def section_environment(env: dict | None) -> list[str]:
    """A short table; results.json holds the full record (every dataset and judge hash)."""
    if not env:
        return []
    sw, code, model, tpl = env["software"], env["code"], env["model"], env["chat_template"]
    commit = code["commit"] or code.get("note", "unknown")
    rows = [
        ("code", f"harness {sw['harness']}, commit {_short(commit)}" + (" (dirty)" if code.get("dirty") else "")),
        ("software", f"Python {sw['python']}, torch {sw['torch']}, transformers {sw['transformers']}"
                     + (f", vLLM {sw['vllm']}" if sw.get("vllm") else "") + (f", CUDA {sw['cuda']}" if sw.get("cuda") else "")),
        ("device", sw["device"]),
        ("model", f"{model['id']} @ {_short(model.get('revision') or model.get('path') or '-')}"
                  + (f", GGUF {model['gguf_file']} {_short(model['gguf_sha256'])}" if model.get("gguf_file") else "")
                  + (f", refusal-tuned ({model['refusal_tune']})" if model.get("refusal_tune") else "")),
        ("weights sha256", _short(model.get("weights_sha256") or model.get("weights", "-"))),
        ("chat template sha256", f"{_short(tpl['template_sha256'])} (rendered {_short(tpl['rendered_sha256'])})"),
        ("datasets", ", ".join(f"{d['name']} {_short(d['sha256']) if d['sha256'] else '(absent)'}"
                               for d in env["datasets"].values())),
        ("judges", ", ".join(f"{name} @ {_short(j.get('revision') or '-')}" for name, j in env["judges"].items())),
        ("seed / limit / rehearsal", f"{env['experiment']['seed']} / {env['experiment']['limit']} / "
                                     f"{env['experiment']['rehearsal']}"),
    ]
    return ["## Environment", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


SELECTION_ROWS = 10  # candidates the report lists, best bypass score first (selection.csv has all)
SECTION_NOTES = {
    "capability": ["Each set is named with its size: a demo's own small stand-in sets are not the published "
                   "benchmarks.", ""],
    "fidelity": ["Largest |component along r-hat| over real tokens of the harmless prompts, per residual-stream "
                 "point: the input of every block, then the final residual (after the last block, before the "
                 "final norm). Edited: the weight-edited model; ablated: the original under activation ablation "
                 "(the floor); unedited: the original model (the scale the headline's share is taken against).", ""],
}


def section_stability(curve: pd.DataFrame) -> list[str]:
    """Mean/min/max cosine per budget, with how many distinct subsets the draws were: at a budget equal to the
    number of fit areas every draw is the same set, one measurement repeated."""
    summary = curve.groupby("budget")["cosine"].agg(["mean", "min", "max", "count"]).reset_index()
    summary = summary.rename(columns={"count": "draws"})
    notes = []
    if "areas" in curve:
        distinct = curve.groupby("budget")["areas"].nunique()
        summary["distinct subsets"] = summary["budget"].map(distinct).astype(int)
        notes = [f"At budget {b} all {int(n)} draws are the same {b} areas: one subset, so min = max and it is one "
                 "measurement, not repeats." for b, n, d in zip(summary["budget"], summary["draws"],
                                                               summary["distinct subsets"]) if d == 1 and n > 1]
    return ["## Direction stability", "",
            "Cosine between the direction fit from k randomly drawn fit areas and the one fit from the held-out "
            "areas, at the chosen (layer, position). Draws at one budget may repeat a subset.", "",
            "![stability](stability.png)", "", markdown_table(summary), "", *(notes and [*notes, ""])]


def section_selection(sweep: pd.DataFrame) -> list[str]:
    """The best candidates by bypass score, filtered ones included with the filter each failed, and the selected
    one even when it is not among them."""
    ranked = sweep.sort_values(["bypass_score", "layer", "pos"], na_position="last", kind="stable")
    top = ranked.head(SELECTION_ROWS)
    if not top["selected"].any() and ranked["selected"].any():
        top = pd.concat([top, ranked[ranked["selected"]]])
    top = top.assign(filter_reason=top["filter_reason"].fillna("").replace("", "passed"))
    passed = int((~sweep["filtered"].astype(bool)).sum())
    return ["## Direction selection sweep", "",
            f"{passed} of {len(sweep)} candidates passed the filters (layer below the experiment's fraction of the "
            "layers, harmless KL within its bound, refusal induced on harmless prompts). Bypass score: refusal "
            "log-odds on harmful validation prompts under ablation; lower is better. The "
            f"{SELECTION_ROWS} lowest scores are listed, filtered ones with the filter each failed; the selected "
            "candidate is the best that passed. Full table: selection.csv.", "",
            "![selection](selection.png)", "", markdown_table(top), ""]


def section_policy_areas(areas: dict | None) -> list[str]:
    if not areas or not areas.get("fit"):
        return []
    used = "direction fit and selection" + ("; the model's refusal fine-tune" if areas.get("tuned") else "")
    return [f"- **policy areas fit on** ({used}): {', '.join(areas['fit'])}",
            f"- **policy areas held out** (never fit on): {', '.join(areas['heldout'])}",
            f"- **evaluated on**: harmful {areas['harmful_eval']}; harmless {areas['harmless_eval']}"]
