"""The data stage of an experiment: which prompts fit the direction, select it, and evaluate it.

Two shapes of experiment feed the same downstream stages: a construction dataset split by policy
area (fit areas -> train/val, held-out areas -> eval), or named benchmark splits (Arditi et al.).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.config import DatasetRef, Experiment

EVAL_COLUMNS = ["id", "prompt", "category"]


@dataclass(frozen=True)
class PromptSets:
    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]
    harmful_eval: pd.DataFrame  # id, prompt, category
    harmless_eval: pd.DataFrame
    construction: pd.DataFrame | None = None  # the whole labelled construction set (stability claim)
    fit_areas: list[str] = field(default_factory=list)
    heldout_areas: list[str] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)


def seeded_subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """The first n rows of a seeded permutation; the same (n, seed) always picks the same prompts."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(frame))[:n]
    return frame.iloc[np.sort(order)].reset_index(drop=True)


def _load(ref: DatasetRef, seed: int, limit: int | None) -> pd.DataFrame:
    from harness.datasets import load_dataset

    return seeded_subset(load_dataset(ref, seed=seed), limit, seed + 1)


def _eval_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    if "category" not in out:
        out["category"] = "uncategorized"
    out["id"] = out["id"].astype(str)
    return out[EVAL_COLUMNS].reset_index(drop=True)


def _train_val(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_val = max(1, int(round(len(shuffled) * val_fraction)))
    return shuffled["prompt"].iloc[n_val:].tolist(), shuffled["prompt"].iloc[:n_val].tolist()


def _from_construction(exp: Experiment, limit: int | None) -> PromptSets:
    from harness.policy import area_split, load_policy_prompts

    con = exp.data.construction
    assert con is not None
    frame = load_policy_prompts(con.dataset.path)
    split = area_split(frame, con.fit_areas, con.split_seed)
    fit, held = split.fit, split.heldout
    sets: dict[str, object] = {}
    for label, name in (("unsafe", "harmful"), ("safe", "harmless")):
        part = seeded_subset(fit[fit["label"] == label], limit, exp.seed)
        train, val = _train_val(part, con.val_fraction, exp.seed)
        sets[f"{name}_train"], sets[f"{name}_val"] = train, val
        sets[f"{name}_eval"] = _eval_frame(seeded_subset(held[held["label"] == label], limit, exp.seed))
    return PromptSets(
        **sets,  # type: ignore[arg-type]
        construction=frame,
        fit_areas=list(split.fit_areas),
        heldout_areas=list(split.heldout_areas),
        provenance={"construction": con.dataset.name},
    )


def _from_named(exp: Experiment, limit: int | None) -> PromptSets:
    d = exp.data
    harmful_train = _load(d.harmful_train, exp.seed, limit)  # type: ignore[arg-type]
    harmless_train = _load(d.harmless_train, exp.seed, limit)  # type: ignore[arg-type]
    n_val = exp.direction.selection.n_val

    def val(ref: DatasetRef | None, train: pd.DataFrame) -> tuple[list[str], list[str]]:
        if ref is not None:
            return train["prompt"].tolist(), _load(ref, exp.seed, limit)["prompt"].tolist()
        fraction = min(0.5, n_val / max(len(train), 1))
        return _train_val(train, fraction, exp.seed)

    htr, hval = val(d.harmful_val, harmful_train)
    btr, bval = val(d.harmless_val, harmless_train)
    if d.harmful_eval is None or d.harmless_eval is None:
        raise ValueError(f"experiment {exp.name!r}: data needs `harmful_eval` and `harmless_eval`")
    return PromptSets(
        harmful_train=htr,
        harmless_train=btr,
        harmful_val=hval,
        harmless_val=bval,
        harmful_eval=_eval_frame(_load(d.harmful_eval, exp.seed, limit)),
        harmless_eval=_eval_frame(_load(d.harmless_eval, exp.seed, limit)),
        provenance={k: getattr(d, k).name for k in ("harmful_train", "harmless_train", "harmful_eval", "harmless_eval")},
    )


def prompt_sets(exp: Experiment, limit: int | None = None) -> PromptSets:
    """Every prompt set of the experiment; `limit` takes a seeded subset of each (smoke runs)."""
    if exp.data.construction is not None:
        return _from_construction(exp, limit)
    return _from_named(exp, limit)
