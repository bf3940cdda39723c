"""Capability question sets (MMLU/ARC-style items, plain texts): schema and validation."""

from __future__ import annotations

import json
import string
from pathlib import Path

LETTERS = string.ascii_uppercase[:10]
_QUESTION_KEYS = {"question", "choices", "answer", "subject", "id"}


class CapabilityDataError(ValueError):
    """A capability data file that cannot be used; the message names the file, line and field."""


def validate_question(item: object, where: str) -> dict:
    """Check one multiple-choice item; `where` (e.g. "file.jsonl:3") prefixes every error."""
    if not isinstance(item, dict):
        raise CapabilityDataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    unknown = set(item) - _QUESTION_KEYS
    if unknown:
        raise CapabilityDataError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_QUESTION_KEYS)}")
    for key in ("question", "choices", "answer"):
        if key not in item:
            raise CapabilityDataError(f"{where}: missing field {key!r}")
    question, choices, answer = item["question"], item["choices"], item["answer"]
    if not isinstance(question, str) or not question.strip():
        raise CapabilityDataError(f"{where}: field 'question' must be a non-empty string, got {question!r}")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise CapabilityDataError(f"{where}: field 'choices' must be a list of 2-{len(LETTERS)} strings, got {choices!r}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise CapabilityDataError(f"{where}: field 'choices[{i}]' must be a non-empty string, got {choice!r}")
    if len(set(choices)) != len(choices):
        raise CapabilityDataError(f"{where}: field 'choices' has duplicates: {choices!r}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise CapabilityDataError(
            f"{where}: field 'answer' must be an integer index in [0, {len(choices) - 1}], got {answer!r}"
        )
    if "subject" in item and (not isinstance(item["subject"], str) or not item["subject"].strip()):
        raise CapabilityDataError(f"{where}: field 'subject' must be a non-empty string, got {item['subject']!r}")
    return item


def load_capability_set(path: str | Path) -> list[dict]:
    """Read a JSONL multiple-choice set ({"question", "choices", "answer", "subject"?}); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CapabilityDataError(f"{path}: no such file")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise CapabilityDataError(f"{path}:{lineno}: not valid JSON: {err.msg}") from err
        items.append(validate_question(raw, f"{path}:{lineno}"))
    if not items:
        raise CapabilityDataError(f"{path}: no questions")
    return items


def questions_from_frame(frame, *, with_subject: bool, source: str = "frame") -> list[dict]:
    """Rows of a `harness.data.loading` MMLU/ARC frame (prompt, choices, label, category) -> question dicts.

    `with_subject` turns `category` into the MMLU subject header; ARC's category is the set's
    name, not a subject, so it is left out there.
    """
    missing = [c for c in ("prompt", "choices", "label") + (("category",) if with_subject else ()) if c not in frame]
    if missing:
        raise CapabilityDataError(f"{source}: missing column(s) {missing}; has {list(frame.columns)}")
    items = []
    for i, row in enumerate(frame.to_dict("records")):
        label = row["label"]
        item = {
            "question": row["prompt"],
            "choices": [str(c) for c in row["choices"]],
            "answer": int(label) if hasattr(label, "__index__") and not isinstance(label, bool) else label,
        }
        if with_subject:
            item["subject"] = row["category"]
        items.append(validate_question(item, f"{source} row {i} (id {row.get('id', '?')})"))
    if not items:
        raise CapabilityDataError(f"{source}: no questions")
    return items


def load_text_set(path: str | Path) -> list[str]:
    """Read paragraphs separated by blank lines (the CE-loss text file)."""
    path = Path(path)
    if not path.is_file():
        raise CapabilityDataError(f"{path}: no such file")
    paragraphs = [" ".join(block.split()) for block in path.read_text(encoding="utf-8").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise CapabilityDataError(f"{path}: no paragraphs")
    return paragraphs
