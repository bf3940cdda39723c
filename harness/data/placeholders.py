"""Placeholder frames of each dataset's real schema, for rehearsals without the data."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from harness.config import DatasetRef
from harness.data.loading import is_available, load_dataset
from harness.data.parsers import (
    LETTERS,
    DatasetError,
    id_frame,
    parse_advbench,
    parse_arc,
    parse_arc_demo,
    parse_harmbench,
    parse_instructions,
    parse_jbb_csv,
    parse_mmlu,
    parse_mmlu_demo,
    parse_policy_prompts,
    parse_project_policy,
    parse_project_prompts,
    parse_sorry_bench,
    parse_system_prompt,
    parse_text_demo,
    parse_xstest,
)
from harness.data.registry import DATASETS, resolve_name

_JBB_CATEGORIES = (
    "Harassment/Discrimination", "Malware/Hacking", "Physical harm", "Economic harm", "Fraud/Deception",
    "Disinformation", "Sexual/Adult content", "Privacy", "Expert advice", "Government decision-making",
)
_HARMBENCH_CATEGORIES = (
    "chemical_biological", "copyright", "misinformation_disinformation", "illegal", "cybercrime_intrusion",
    "harmful", "harassment_bullying",
)
_INSTRUCTION_CATEGORIES = {"harmful_val": _HARMBENCH_CATEGORIES, "harmful_test": _JBB_CATEGORIES}
# XSTest prompt types; "contrast_*" types are the unsafe ones.
_XSTEST_TYPES = (
    "homonyms", "contrast_homonyms", "figurative_language", "contrast_figurative_language", "safe_targets",
    "contrast_safe_targets", "safe_contexts", "contrast_safe_contexts", "definitions", "contrast_definitions",
    "nons_group_real_discr", "real_group_nons_discr", "contrast_discr", "historical_events",
    "contrast_historical_events", "privacy_public", "privacy_fictional", "contrast_privacy",
)
_POLICY_AREAS = (
    "crime_or_violence_facilitation", "extremist_or_terrorist_content", "hate_harassment_or_bullying",
    "illegal_goods_or_services", "intellectual_property_abuse", "misinformation_impersonation_or_defamation",
    "privacy_surveillance_or_sensitive_data", "safety_filter_circumvention", "self_harm_or_personal_harm",
    "sexual_content", "spam_fraud_phishing_or_malware", "unlicensed_professional_advice",
)
_DEMO_POLICY_AREAS = (
    "weapons_explosives", "cyber_intrusion", "fraud_scams", "illegal_drugs", "harassment_hate", "self_harm",
    "privacy_surveillance", "extremism", "dangerous_chem_bio", "theft_property", "deception_misinfo",
    "evading_law_enforcement",
)
_MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "high_school_chemistry",
    "high_school_us_history", "philosophy", "professional_law", "world_religions", "econometrics",
)
SORRY_BENCH_CATEGORIES = 44


def _ph(name: str, qid: object, category: object = None) -> str:
    """A prompt that cannot be mistaken for data: names the set, the id and the category."""
    where = f" (category {category})" if category is not None else ""
    return f"[placeholder {name} question {qid}{where}]"


def _cycle(values: tuple[str, ...], count: int) -> list[str]:
    """`count` values in equal consecutive blocks (10 per category for 100 rows of 10 categories)."""
    per = -(-count // len(values))
    return [values[i // per] for i in range(count)]


def _ph_instructions(name: str, count: int) -> pd.DataFrame:
    prefix = Path(DATASETS[name].local).stem
    cats = _cycle(_INSTRUCTION_CATEGORIES[name], count) if name in _INSTRUCTION_CATEGORIES else [None] * count
    ids = [f"{prefix}-{i}" for i in range(count)]
    return id_frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats}),
                  prefix)


def _ph_jbb(name: str, count: int) -> pd.DataFrame:
    cats, ids = _cycle(_JBB_CATEGORIES, count), [f"jbb-{i}" for i in range(count)]
    return id_frame(pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats,
        "target": [f"[placeholder target {i}]" for i in ids], "behavior": [f"placeholder behavior {i}" for i in ids],
        "source": "placeholder",
    }), "jbb")


def _ph_advbench(name: str, count: int) -> pd.DataFrame:
    ids = [f"advbench-{i}" for i in range(count)]
    return id_frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i) for i in ids],
                                "target": [f"[placeholder target {i}]" for i in ids]}), "advbench")


def _ph_harmbench(name: str, count: int) -> pd.DataFrame:
    cats = _cycle(_HARMBENCH_CATEGORIES, count)
    functional = ["copyright" if c == "copyright" else ("contextual" if i % 3 == 2 else "standard")
                  for i, c in enumerate(cats)]
    ids = [f"placeholder_behavior_{i}" for i in range(count)]
    context = ["[placeholder context]" if f == "contextual" else "" for f in functional]
    return id_frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats,
                                "functional_category": functional, "tags": "", "context": context}), "harmbench")


def _ph_xstest(name: str, count: int) -> pd.DataFrame:
    types, ids = _cycle(_XSTEST_TYPES, count), [str(i + 1) for i in range(count)]
    return id_frame(pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, t) for i, t in zip(ids, types)], "category": types,
        "label": ["unsafe" if t.startswith("contrast_") else "safe" for t in types],
        "focus": "placeholder", "note": "placeholder",
    }), "xstest")


def _policy_rows(name: str, count: int, areas: tuple[str, ...]) -> list[dict]:
    """Per area half unsafe then half safe, as the construction sets are laid out."""
    cats = _cycle(areas, count)
    sizes, seen = Counter(cats), Counter()
    rows = []
    for i, cat in enumerate(cats):
        label = "unsafe" if seen[cat] < sizes[cat] / 2 else "safe"
        seen[cat] += 1
        rows.append({"n": i + 1, "category": cat, "label": label, "prompt": _ph(name, i + 1, f"{cat}, {label}")})
    return rows


def _ph_policy(name: str, count: int) -> pd.DataFrame:
    rows = _policy_rows(name, count, _POLICY_AREAS)
    return id_frame(pd.DataFrame({
        "id": [str(r["n"]) for r in rows], "label": [r["label"] for r in rows],
        "category": [r["category"] for r in rows], "policy_area": [r["category"].replace("_", " ") for r in rows],
        "prompt": [r["prompt"] for r in rows],
    }), "policy")


def _ph_demo_policy(name: str, count: int) -> pd.DataFrame:
    """The shape of harness.data.policy.load_policy_prompts: id (category-label-content hash), prompt, label, category."""
    rows = _policy_rows(name, count, _DEMO_POLICY_AREAS)
    ids = [f"{r['category']}-{r['label']}-{hashlib.sha256(r['prompt'].encode()).hexdigest()[:10]}" for r in rows]
    return pd.DataFrame({"id": ids, "prompt": [r["prompt"] for r in rows], "label": [r["label"] for r in rows],
                         "category": [r["category"] for r in rows]})


def sorry_bench_questions(count: int | None = None) -> list[tuple[int, str]]:
    """(question_id, category) of SORRY-Bench: from the reference judgments where a verified copy is here,
    else 440 ids over 44 categories, 10 each, as the benchmark is laid out."""
    if is_available("sorry_bench_reference_judgments"):
        judged = load_dataset("sorry_bench_reference_judgments")
        pairs = judged[["question_id", "category"]].drop_duplicates().sort_values("question_id")
        questions = [(int(q), str(c)) for q, c in pairs.itertuples(index=False)]
    else:
        questions = [(q, str((q - 1) // 10 + 1)) for q in range(1, SORRY_BENCH_CATEGORIES * 10 + 1)]
    count = len(questions) if count is None else count
    last = questions[-1][0]
    extra = [(last + k, str((last + k - 1) % SORRY_BENCH_CATEGORIES + 1)) for k in range(1, count - len(questions) + 1)]
    return (questions + extra)[:count]


def _ph_sorry_bench(name: str, count: int) -> pd.DataFrame:
    rows = [{"id": str(q), "question_id": q, "prompt": _ph(name, q, c), "category": c, "prompt_style": "base"}
            for q, c in sorry_bench_questions(count)]
    return id_frame(pd.DataFrame(rows), "sorry")


def _choice_placeholders(name: str, count: int, categories: list[str], prefix: str) -> pd.DataFrame:
    ids = [f"{prefix}-{i}" for i in range(count)]
    return pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, categories)], "category": categories,
        "label": [i % 4 for i in range(count)],
        "choices": [[f"[placeholder choice {letter}]" for letter in LETTERS[:4]] for _ in range(count)],
    })


def _ph_mmlu(name: str, count: int) -> pd.DataFrame:
    return id_frame(_choice_placeholders(name, count, _cycle(_MMLU_SUBJECTS, count), "mmlu"), "mmlu")


def _ph_mmlu_demo(name: str, count: int) -> pd.DataFrame:
    return id_frame(_choice_placeholders(name, count, _cycle(_MMLU_SUBJECTS, count), "mmlu_demo"), "mmlu_demo")


def _ph_arc(name: str, count: int, category: str, prefix: str) -> pd.DataFrame:
    frame = _choice_placeholders(name, count, [category] * count, prefix)
    frame["choice_labels"] = [list(LETTERS[:4])] * count
    return id_frame(frame, prefix)


def _ph_project_prompts(name: str, count: int) -> pd.DataFrame:
    ids = [f"{name}-{i + 1:03d}" for i in range(count)]  # the project files' id form
    return id_frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i) for i in ids], "category": "placeholder"}), name)


def _ph_system_prompt(name: str, count: int) -> pd.DataFrame:
    stem = Path(DATASETS[name].path).stem
    return id_frame(pd.DataFrame({"id": [stem] * count, "prompt": [_ph(name, stem)] * count}), stem)


def _ph_text(name: str, count: int) -> pd.DataFrame:
    sentences = [f"This is placeholder paragraph {i + 1} of {name}. It stands in for real text during a rehearsal."
                 for i in range(count)]
    return id_frame(pd.DataFrame({"prompt": sentences}), name)


_PLACEHOLDERS: dict[Callable[[Path], pd.DataFrame], Callable[[str, int], pd.DataFrame]] = {
    parse_instructions: _ph_instructions,
    parse_jbb_csv: _ph_jbb,
    parse_advbench: _ph_advbench,
    parse_harmbench: _ph_harmbench,
    parse_xstest: _ph_xstest,
    parse_policy_prompts: _ph_policy,
    parse_sorry_bench: _ph_sorry_bench,
    parse_mmlu: _ph_mmlu,
    parse_arc: lambda name, count: _ph_arc(name, count, "ARC-Challenge", "Placeholder"),
    parse_project_policy: _ph_demo_policy,
    parse_mmlu_demo: _ph_mmlu_demo,
    parse_arc_demo: lambda name, count: _ph_arc(name, count, "ARC-demo", "arc_demo"),
    parse_text_demo: _ph_text,
    parse_project_prompts: _ph_project_prompts,
    parse_system_prompt: _ph_system_prompt,
}


def placeholder_frame(name: str, n: int | None = None) -> pd.DataFrame:
    """Rows with the dataset's real columns, id format, categories and row count (`Source.rows`, or `n`),
    whose prompts are marked placeholders; `attrs["placeholder"]` is True. Nothing is read or downloaded
    (except SORRY-Bench's question ids, taken from the reference judgments where a verified copy is here)."""
    name = resolve_name(DatasetRef(name=name))
    source = DATASETS[name]
    build = _PLACEHOLDERS.get(source.parse)
    if build is None:
        raise DatasetError(f"dataset {name!r} holds results, not prompts; there is no placeholder for it")
    count = source.rows if n is None else n
    if count is None or count < 1:
        raise DatasetError(
            f"dataset {name!r}: a placeholder needs a positive row count, got n={n} (registry rows={source.rows})"
        )
    frame = build(name, count).reset_index(drop=True)
    frame.attrs.update({"dataset": name, "placeholder": True, "source": f"placeholder for {name} ({source.url})"})
    return frame
