"""Readers of each dataset's file format into one frame schema (id, prompt, category, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

LETTERS = "ABCDEFGHIJ"


class DatasetError(RuntimeError):
    """A dataset that cannot be used: unknown name, missing file, pin mismatch or bad format."""


def id_frame(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Give a frame stable string ids and put the common columns first."""
    out = rows.reset_index(drop=True)
    if "id" not in out:
        out.insert(0, "id", [f"{prefix}-{i}" for i in range(len(out))])
    out["id"] = out["id"].astype(str)
    if "category" not in out:
        out["category"] = None
    first = [c for c in ("id", "prompt", "category", "label") if c in out]
    return out[first + [c for c in out.columns if c not in first]]


def _read_json_list(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _require(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")


def parse_instructions(path: Path) -> pd.DataFrame:
    """refusal_direction `{"instruction", "category"}` JSON lists (splits/ and processed/)."""
    frame = pd.DataFrame(_read_json_list(path))
    _require(frame, ["instruction"], path)
    frame = frame.rename(columns={"instruction": "prompt"})
    return id_frame(frame, path.stem)


def parse_jbb_csv(path: Path) -> pd.DataFrame:
    """JBB-Behaviors CSV (Goal, Target, Behavior, Category, Source); the vendored copy has an index column."""
    frame = pd.read_csv(path)
    _require(frame, ["Goal", "Behavior", "Category"], path)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed") or c == "Index"])
    frame = frame.rename(columns={"Goal": "prompt", "Category": "category", "Target": "target", "Behavior": "behavior", "Source": "source"})
    return id_frame(frame, "jbb")


def parse_advbench(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    _require(frame, ["goal", "target"], path)
    return id_frame(frame.rename(columns={"goal": "prompt"}), "advbench")


def parse_harmbench(path: Path) -> pd.DataFrame:
    """HarmBench behaviors CSV; `category` is SemanticCategory, `functional_category` keeps standard/contextual/copyright."""
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"], path)
    frame = frame.rename(
        columns={
            "Behavior": "prompt",
            "SemanticCategory": "category",
            "FunctionalCategory": "functional_category",
            "BehaviorID": "id",
            "ContextString": "context",
            "Tags": "tags",
        }
    )
    return id_frame(frame, "harmbench")


def parse_xstest(path: Path) -> pd.DataFrame:
    """XSTest v2: `label` is safe/unsafe, `category` the prompt type."""
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["id", "prompt", "type", "label"], path)
    return id_frame(frame.rename(columns={"type": "category"}), "xstest")


def parse_policy_prompts(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["id", "prompt", "label", "category", "policy_area"], path)
    return id_frame(frame, "policy")


def parse_sorry_bench(path: Path) -> pd.DataFrame:
    """SORRY-Bench question.jsonl: `{"question_id", "category", "turns": [prompt], "prompt_style"}`."""
    records = _read_jsonl(path)
    rows = []
    for rec in records:
        missing = [k for k in ("question_id", "category", "turns") if k not in rec]
        if missing:
            raise DatasetError(f"{path}: question record {rec.get('question_id')!r} lacks {missing}")
        if len(rec["turns"]) != 1:
            raise DatasetError(f"{path}: question {rec['question_id']} has {len(rec['turns'])} turns, expected 1")
        rows.append(
            {
                "id": str(rec["question_id"]),
                "question_id": int(rec["question_id"]),
                "prompt": rec["turns"][0],
                "category": str(rec["category"]),
                "prompt_style": rec.get("prompt_style", "base"),
            }
        )
    return id_frame(pd.DataFrame(rows), "sorry")


def parse_sorry_judgments(path: Path) -> pd.DataFrame:
    """The reference experiment's per-question official-judge scores (no answer text): one row per question x condition."""
    frame = pd.read_csv(path)
    _require(frame, ["question_id", "condition", "category", "score"], path)
    frame.insert(0, "id", frame["condition"].astype(str) + "-" + frame["question_id"].astype(str))
    frame["category"] = frame["category"].astype(str)
    return id_frame(frame, "judgment")


def _read_table(path: Path) -> pd.DataFrame:
    """HF dataset rows: the pinned parquet, or the same columns as JSON lines (what fixtures use)."""
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise DatasetError(f"{path}: reading parquet needs `pyarrow` (pip install pyarrow): {err}") from err
    return pd.DataFrame(_read_jsonl(path))


def parse_mmlu(path: Path) -> pd.DataFrame:
    """cais/mmlu rows `{question, subject, choices: [4], answer: int}` -> prompt, category=subject, choices, label."""
    frame = _read_table(path)
    _require(frame, ["question", "subject", "choices", "answer"], path)
    frame = frame.rename(columns={"question": "prompt", "subject": "category", "answer": "label"})
    frame["choices"] = frame["choices"].map(list)
    frame["label"] = frame["label"].astype(int)
    bad = frame[(frame["label"] < 0) | (frame["label"] >= frame["choices"].map(len))]
    if len(bad):
        raise DatasetError(f"{path}: answer index out of range in rows {bad.index.tolist()[:5]}")
    return id_frame(frame, "mmlu")


def parse_arc(path: Path) -> pd.DataFrame:
    """allenai/ai2_arc rows `{id, question, choices: {text, label}, answerKey}` -> choices, label (index of answerKey)."""
    frame = _read_table(path)
    _require(frame, ["id", "question", "choices", "answerKey"], path)
    labels, texts, answers = [], [], []
    for row in frame.itertuples():
        letters, options = list(row.choices["label"]), list(row.choices["text"])
        if row.answerKey not in letters:
            raise DatasetError(f"{path}: question {row.id}: answerKey {row.answerKey!r} not among {letters}")
        labels.append(letters)
        texts.append(options)
        answers.append(letters.index(row.answerKey))
    out = pd.DataFrame(
        {"id": frame["id"], "prompt": frame["question"], "category": "ARC-Challenge", "label": answers,
         "choices": texts, "choice_labels": labels}
    )
    return id_frame(out, "arc")


def parse_project_policy(path: Path) -> pd.DataFrame:
    """The project's construction CSV through `harness.data.policy.load_policy_prompts` (its validation and
    content-hash ids), unchanged, so results computed from it before the registry existed do not move."""
    from harness.data.policy import PolicyDataError, load_policy_prompts

    try:
        return load_policy_prompts(path)
    except PolicyDataError as err:
        raise DatasetError(str(err)) from err


def parse_project_prompts(path: Path) -> pd.DataFrame:
    """A project prompt set (`id`, `prompt`, `category`), validated: ids unique, no empty or repeated prompt."""
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    _require(frame, ["id", "prompt", "category"], path)
    empty = frame.index[(frame["prompt"].str.strip() == "") | (frame["category"].str.strip() == "")].tolist()
    if empty:
        raise DatasetError(f"{path}: empty prompt or category in rows {empty[:5]}")
    for column in ("id", "prompt"):
        repeated = frame[column][frame[column].duplicated()].tolist()
        if repeated:
            raise DatasetError(f"{path}: repeated {column} {repeated[:3]}")
    return id_frame(frame, path.stem)


def parse_system_prompt(path: Path) -> pd.DataFrame:
    """A system prompt file: one row whose `prompt` is the whole text, stripped of surrounding whitespace."""
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise DatasetError(f"{path}: the system prompt file is empty")
    return id_frame(pd.DataFrame({"id": [path.stem], "prompt": [text]}), path.stem)


def _capability_items(path: Path) -> list[dict]:
    from harness.data.capability_sets import CapabilityDataError, load_capability_set

    try:
        return load_capability_set(path)
    except CapabilityDataError as err:
        raise DatasetError(str(err)) from err


def _choice_frame(items: list[dict], prefix: str, category: str | None) -> pd.DataFrame:
    """Multiple-choice items -> the frame shape of parse_mmlu / parse_arc; `category` None takes the subject."""
    rows = [
        {
            "id": str(item.get("id", f"{prefix}-{i}")),
            "prompt": item["question"],
            "category": category or item.get("subject") or prefix,
            "choices": list(item["choices"]),
            "label": int(item["answer"]),
        }
        for i, item in enumerate(items)
    ]
    return id_frame(pd.DataFrame(rows), prefix)


def parse_mmlu_demo(path: Path) -> pd.DataFrame:
    """The project's MMLU-style stand-in set: category = subject, as in the real MMLU frame."""
    return _choice_frame(_capability_items(path), "mmlu_demo", None)


def parse_arc_demo(path: Path) -> pd.DataFrame:
    """The project's ARC-style stand-in set: category is the set's name (as "ARC-Challenge" in the real frame)."""
    frame = _choice_frame(_capability_items(path), "arc_demo", "ARC-demo")
    frame["choice_labels"] = frame["choices"].map(lambda c: list(LETTERS[: len(c)]))
    return frame


def parse_text_demo(path: Path) -> pd.DataFrame:
    """Paragraphs of the project's CE-loss text file, one per row in `prompt`."""
    from harness.data.capability_sets import CapabilityDataError, load_text_set

    try:
        paragraphs = load_text_set(path)
    except CapabilityDataError as err:
        raise DatasetError(str(err)) from err
    return id_frame(pd.DataFrame({"prompt": paragraphs}), "text_demo")
