"""The construction dataset: safe/unsafe requests in named policy areas, validated on load.

Each area holds unsafe requests and benign requests on the same topic, so a direction fitted on
them separates refusal from topic. Splits are by whole area, so held-out evaluation measures
generalisation to policy areas the direction (and the demo model's fine-tune) never saw.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import REPO_ROOT

DEFAULT_PATH = REPO_ROOT / "data" / "policy_prompts.csv"
REQUIRED_COLUMNS = ("prompt", "label", "category")
LABELS = ("safe", "unsafe")


class PolicyDataError(ValueError):
    """A construction file that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class AreaSplit:
    fit_areas: tuple[str, ...]
    heldout_areas: tuple[str, ...]
    fit: pd.DataFrame
    heldout: pd.DataFrame


def _row(i: int) -> int:
    """File line number of data row i (header is line 1)."""
    return i + 2


def _prompt_id(category: str, label: str, prompt: str) -> str:
    return f"{category}-{label}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}"


def load_policy_prompts(path: str | Path | None = None) -> pd.DataFrame:
    """Columns prompt, label, category plus a stable `id` (depends only on the row's content)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise PolicyDataError(f"{path}: construction dataset not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise PolicyDataError(f"{path}: missing required column {column!r} (has {list(frame.columns)})")
    for i, rec in enumerate(frame[list(REQUIRED_COLUMNS)].itertuples(index=False)):
        for field in REQUIRED_COLUMNS:
            if not getattr(rec, field).strip():
                raise PolicyDataError(f"{path}: row {_row(i)}: empty field {field!r}")
        if rec.label not in LABELS:
            raise PolicyDataError(f"{path}: row {_row(i)}: unknown label {rec.label!r} (expected one of {LABELS})")
    first_seen: dict[str, int] = {}
    for i, prompt in enumerate(frame["prompt"]):
        key = prompt.strip()
        if key in first_seen:
            raise PolicyDataError(
                f"{path}: duplicate prompt in rows {_row(first_seen[key])} and {_row(i)}: {prompt[:60]!r}"
            )
        first_seen[key] = i
    frame = frame[list(REQUIRED_COLUMNS)].copy()
    frame.insert(0, "id", [_prompt_id(c, l, p) for p, l, c in frame.itertuples(index=False)])
    return frame


def areas(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["category"].unique())


def area_split(frame: pd.DataFrame, n_fit_areas: int, seed: int, names: list[str] | None = None) -> AreaSplit:
    """A seeded choice of `n_fit_areas` policy areas to fit on, or the named ones (as a published study
    chose them); the rest are held out whole."""
    all_areas = areas(frame)
    if not 1 <= n_fit_areas < len(all_areas):
        raise PolicyDataError(
            f"fit_areas={n_fit_areas}: must leave at least one of the {len(all_areas)} areas held out"
        )
    if names is not None:
        unknown = sorted(set(names) - set(all_areas))
        if unknown:
            raise PolicyDataError(f"fit_area_names {unknown} are not areas of the dataset; areas: {all_areas}")
        fit_areas = tuple(sorted(set(names)))
    else:
        fit_areas = tuple(sorted(random.Random(seed).sample(all_areas, n_fit_areas)))
    heldout_areas = tuple(a for a in all_areas if a not in fit_areas)
    in_fit = frame["category"].isin(fit_areas)
    return AreaSplit(
        fit_areas=fit_areas,
        heldout_areas=heldout_areas,
        fit=frame[in_fit].reset_index(drop=True),
        heldout=frame[~in_fit].reset_index(drop=True),
    )


def budget_subsets(areas: list[str] | tuple[str, ...], budget: int, repeats: int, seed: int) -> list[tuple[str, ...]]:
    """`repeats` seeded random choices of `budget` areas (direction stability versus area budget)."""
    pool = sorted(areas)
    if not 1 <= budget <= len(pool):
        raise PolicyDataError(f"budget={budget}: must be between 1 and the {len(pool)} available areas")
    rng = random.Random(f"{seed}:{budget}")
    return [tuple(sorted(rng.sample(pool, budget))) for _ in range(repeats)]
