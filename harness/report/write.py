"""A run's report on disk: results.json (figures rounded), report.md, CSVs and plots; the check that no
completion to a harmful prompt leaked into it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.sections import (
    SECTION_NOTES,
    SETUP_ARTIFACTS,
    headline_rates,
    markdown_table,
    section_agreement,
    section_claims,
    section_coherence,
    section_conditions,
    section_cross,
    section_environment,
    section_flips,
    section_generation,
    section_policy_areas,
    section_selection,
    section_setup,
    section_stability,
    section_truncation,
    unique_rows,
)
from harness.run.cache import atomic_write_bytes

SIG_DIGITS = 4
MIN_LEAK_CHARS = 40  # shorter strings (a stock refusal sentence) are not evidence of a leak


def round_figures(obj: Any, sig: int = SIG_DIGITS) -> Any:
    """Round every float to `sig` significant digits so a rerun on the same hardware is identical."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj) or obj == 0.0:
            return obj
        return float(f"{obj:.{sig}g}")
    if isinstance(obj, dict):
        return {str(k): round_figures(v, sig) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_figures(v, sig) for v in obj]
    if hasattr(obj, "item"):  # numpy / torch scalars
        return round_figures(obj.item(), sig)
    raise TypeError(f"cannot put {type(obj).__name__} into results.json")


# How far a snapshotted continuous figure may move before the snapshot fails: (relative, absolute). Counts,
# booleans and strings compare exactly; a rate is a count over n, so one flipped prompt (>= 1/n) always fails.
# Figures not named here take DEFAULT_TOLERANCE: enough for float noise across BLAS kernels and thread counts
# (the 4th significant digit of a KL or CE), far below any change a claim is about.
DEFAULT_TOLERANCE = (2e-3, 1e-6)
TOLERANCES: dict[str, tuple[float, float]] = {
    "mcnemar_p": (0.05, 1e-12),
    "mcnemar_p_vs_reference": (0.05, 1e-12),
    "kl_max": (0.01, 1e-6),
    "bypass_score": (0.01, 1e-3),
    "induce_score": (0.01, 1e-3),
    "baseline_harmful_score": (0.01, 1e-3),
    "score_drop": (0.01, 1e-3),
    # An exact edit's gap and leak are floating-point noise (1e-4 in fp32): compared to 1e-3 absolute; a non-exact
    # edit's to 5%.
    "max_logit_gap": (0.05, 1e-3),
    "leak_share": (0.05, 1e-3),
    "above_chance_p": (0.05, 1e-12),
}


def figures_match(new: Any, old: Any, key: str = "") -> bool:
    """Whether snapshotted figures agree: same structure, equal counts and labels, and each float within its
    tolerance (TOLERANCES by the figure's name, else DEFAULT_TOLERANCE)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return new.keys() == old.keys() and all(figures_match(new[k], old[k], k) for k in new)
    if isinstance(new, list) and isinstance(old, list):
        return len(new) == len(old) and all(figures_match(a, b, key) for a, b in zip(new, old))
    if isinstance(new, float) and isinstance(old, (int, float)) and not isinstance(old, bool) \
            or isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        if math.isnan(new) or math.isnan(old):
            return math.isnan(new) and math.isnan(old)
        rel, abs_ = TOLERANCES.get(key, DEFAULT_TOLERANCE)
        return math.isclose(new, old, rel_tol=rel, abs_tol=abs_)
    return type(new) is type(old) and new == old


JUDGMENTS_CSV = "judgments.csv"
JUDGMENTS_COLUMNS = ("id", "condition", "set", "judge", "score")


def judgments_csv(judgments: dict[str, dict]) -> str:
    """Per-prompt judgments as CSV text: the dataset's prompt id, condition, prompt set, judge and score (1 complied,
    0 refused, empty when unjudged). Ids and scores only, never a completion; groups in sorted order, prompts in
    dataset order, so a rerun writes the same bytes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(JUDGMENTS_COLUMNS)
    for _, g in sorted(judgments.items()):
        for pid, score in zip(g["ids"], g["scores"], strict=True):
            writer.writerow([pid, g["condition"], g["set"], g["judge"], "" if score is None else f"{score:g}"])
    return buf.getvalue()


def write_report(run_dir: Path, meta: dict, claims: dict[str, dict], artifacts: dict[str, Any]) -> Path:
    """Write results.json, report.md, tables and plots under `run_dir`; returns report.md's path."""
    from harness.report import plots

    run_dir.mkdir(parents=True, exist_ok=True)
    results = round_figures({
        "meta": meta,
        "claims": {k: v.get("figures", {}) for k, v in claims.items()},
        "outcomes": {k: v.get("outcome", "not run") for k, v in claims.items()},
        "provenance": {k: v["provenance"] for k, v in claims.items() if "provenance" in v},
        "setup": {k: _jsonable(artifacts[k]) for k in SETUP_ARTIFACTS if k in artifacts},
        "rates": unique_rows(artifacts.get("conditions", [])),
        "environment": _jsonable(artifacts.get("environment", {})),
        **({"grid": _jsonable(artifacts["grid"])} if artifacts.get("grid") else {}),
    })
    atomic_write_bytes(run_dir / "results.json", (json.dumps(results, indent=1, sort_keys=True) + "\n").encode())
    if artifacts.get("judgments"):
        atomic_write_bytes(run_dir / JUDGMENTS_CSV, judgments_csv(artifacts["judgments"]).encode())
    else:  # never leave a previous run's judgments beside this run's results.json
        (run_dir / JUDGMENTS_CSV).unlink(missing_ok=True)

    md = [f"# Refusal-direction report: {meta.get('experiment')}", ""]
    for k in ("model", "about", "direction", "judges", "device", "limit", "rehearsal", "trust_remote_code"):
        if meta.get(k) is not None:
            md.append(f"- **{k.replace('_', ' ')}**: {meta[k]}")
    md += section_policy_areas(artifacts.get("policy_areas"))
    md.append("")
    md += section_claims(claims)
    md += section_environment(artifacts.get("environment"))
    md += section_setup(artifacts)
    md += section_conditions(artifacts.get("conditions", []))
    md += section_agreement(artifacts.get("judge_agreement", {}))
    md += section_cross(artifacts.get("judge_cross", {}))
    md += section_truncation(artifacts.get("truncation", {}), headline_rates(artifacts))
    md += section_coherence(artifacts.get("coherence"))
    md += section_generation(artifacts.get("generation_paths", {}))
    md += section_flips(artifacts.get("flips", {}))

    category = artifacts.get("category_table")
    if isinstance(category, pd.DataFrame) and len(category):
        category.to_csv(run_dir / "categories.csv", index=False)
        plots.plot_category_bars(category, run_dir / "categories.png", ylabel="refusal rate")
        md += ["## Refusal by category (harmful prompts)", "", "![categories](categories.png)", "",
               markdown_table(category), ""]

    curve = artifacts.get("stability")
    if isinstance(curve, pd.DataFrame) and len(curve):
        curve.to_csv(run_dir / "stability.csv", index=False)
        plots.plot_stability(curve, run_dir / "stability.png", threshold=artifacts.get("stability_threshold"))
        layer_table = artifacts.get("stability_table")
        if isinstance(layer_table, pd.DataFrame) and len(layer_table):
            # The columns of a per-layer study's category_generalization_table.csv, to compare row by row.
            layer_table.to_csv(run_dir / "category_generalization_table.csv", index=False)
            fit_report = artifacts.get("direction_fit_report")
            if isinstance(fit_report, pd.DataFrame):
                fit_report.to_csv(run_dir / "direction_fit_report.csv", index=False)
            md += ["## Direction stability", "",
                   "Per-layer directions fit from k policy areas drawn from all of them and from the areas not drawn: "
                   "median and 10th percentile of every layer's cosine over the repeats (plot: the median per "
                   "repeat). Table: category_generalization_table.csv.", "", "![stability](stability.png)", "",
                   markdown_table(layer_table), ""]
        else:
            md += section_stability(curve)

    sweep = artifacts.get("selection")
    if isinstance(sweep, pd.DataFrame) and len(sweep):
        sweep.to_csv(run_dir / "selection.csv", index=False)
        plots.plot_selection_heatmap(sweep, run_dir / "selection.png")
        md += section_selection(sweep)

    for title, key in (("Capability", "capability"), ("Edit fidelity", "fidelity"), ("Methods compared", "methods"),
                       ("Method x intervention x scope", "grid_table"),
                       ("Methods compared at a matched budget", "grid_comparisons_table"),
                       ("Fit separation per layer (ROC AUC)", "layer_auc")):
        frame = artifacts.get(key)
        if isinstance(frame, pd.DataFrame) and len(frame):
            md += [f"## {title}", "", *SECTION_NOTES.get(key, []), markdown_table(frame), ""]

    examples = artifacts.get("harmless_examples", [])
    if examples:
        md += ["## Example completions (harmless prompts only)", ""]
        for ex in examples:
            md += [f"**{ex['condition']}** — *{ex['prompt']}*", "", "> " + ex["completion"].replace("\n", "\n> "), ""]

    path = run_dir / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode())
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _cached_completions(cache: Path, which: str) -> set[str]:
    texts: set[str] = set()
    for part in cache.glob(f"completions/*/{which}/*/part-*.json"):
        texts.update(v.strip() for v in json.loads(part.read_text()).values() if isinstance(v, str))
    return texts


def harmful_text_in(report_dir: Path, cache: Path) -> list[tuple[str, str]]:
    """(file, excerpt) for every cached completion to a harmful prompt found verbatim under `report_dir`.

    A text also produced for a harmless prompt or a benign task (a stock refusal, say) is not specific to harmful
    prompts and is not counted.
    """
    harmful = _cached_completions(cache, "harmful") - _cached_completions(cache, "harmless") - _cached_completions(
        cache, "benign_task")
    suspects = [t for t in harmful if len(t) >= MIN_LEAK_CHARS]
    found = []
    for path in sorted(report_dir.rglob("*")):
        if path.suffix not in {".md", ".json", ".csv", ".txt"} or not path.is_file():
            continue
        body = path.read_text(errors="replace")
        found += [(str(path), t[:60]) for t in suspects if t in body]
    return found
