"""The data stage of an experiment: which prompts fit the direction, select it, and evaluate it.

Two shapes of experiment feed the same downstream stages: a construction dataset split by policy
area (fit areas -> train/val, held-out areas -> eval), or named benchmark splits (Arditi et al.).
A named train set may carry a system prompt (a contrast of the same prompts without and with it), and an
experiment may add a set of benign tasks the base model declines (`benign_task_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.config import DatasetRef, Experiment
from harness.data.loading import seeded_subset

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
    benign_task_eval: pd.DataFrame | None = None  # id, prompt, category: benign tasks the base model declines
    systems: dict[str, str] = field(default_factory=dict)  # train set -> the system prompt its prompts carry
    fit_areas: list[str] = field(default_factory=list)
    heldout_areas: list[str] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)


def load_named(ref: DatasetRef, seed: int, limit: int | None, placeholders: bool = False) -> pd.DataFrame:
    """A registered dataset by name; with `placeholders` (rehearsals) one absent here is replaced by a
    placeholder of its real schema (`frame.attrs["placeholder"]`)."""
    from harness.data.loading import is_available, load_dataset
    from harness.data.placeholders import placeholder_frame
    from harness.data.registry import resolve_name

    if placeholders and not is_available(resolve_name(ref), ref):
        frame = placeholder_frame(resolve_name(ref), ref.n)
        subset = seeded_subset(frame, limit, seed + 1)
        subset.attrs.update(frame.attrs)
        return subset
    return seeded_subset(load_dataset(ref, seed=seed), limit, seed + 1)


def dataset_label(ref: DatasetRef, frame: pd.DataFrame) -> str:
    """The dataset's registry name as reports show it, marked where a rehearsal used a placeholder."""
    return f"{ref.name} (placeholder)" if frame.attrs.get("placeholder") else ref.name


def _system_prompts(exp: Experiment, placeholders: bool) -> tuple[dict[str, str], dict[str, str]]:
    """(train set -> system prompt text, provenance) for the train sets whose ref names a `system_prompt`."""
    from harness.data.parsers import parse_system_prompt
    from harness.data.registry import DATASETS, resolve_name

    systems, provenance = {}, {}
    for key in ("harmful_train", "harmless_train"):
        ref = getattr(exp.data, key)
        if ref is None or ref.system_prompt is None:
            continue
        system_ref = DatasetRef(name=ref.system_prompt)
        if DATASETS[resolve_name(system_ref)].parse is not parse_system_prompt:
            raise ValueError(f"experiment {exp.name!r}: data.{key}.system_prompt {ref.system_prompt!r} is not a "
                             "system-prompt file (a registry entry read by harness.data.parsers.parse_system_prompt)")
        frame = load_named(system_ref, exp.seed, None, placeholders)
        systems[key] = str(frame["prompt"].iloc[0])
        provenance[f"{key}:system_prompt"] = dataset_label(system_ref, frame)
    return systems, provenance


def _benign_tasks(exp: Experiment, limit: int | None, placeholders: bool) -> tuple[pd.DataFrame | None, dict]:
    ref = exp.data.benign_task_eval
    if ref is None:
        return None, {}
    frame = load_named(ref, exp.seed, limit, placeholders)
    return _eval_frame(frame), {"benign_task_eval": dataset_label(ref, frame)}


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


def _from_construction(exp: Experiment, limit: int | None, placeholders: bool) -> PromptSets:
    """Fit areas -> train/val; held-out areas -> eval, unless the experiment names its eval sets
    (a benchmark such as SORRY-Bench), which then replace the held-out prompts of that side."""
    from harness.data.policy import area_split

    con = exp.data.construction
    assert con is not None
    loaded = load_named(con.dataset, exp.seed, None, placeholders)
    frame = loaded[["id", "prompt", "label", "category"]]
    split = area_split(frame, con.fit_areas, con.split_seed, con.fit_area_names)
    fit, held = split.fit, split.heldout
    sets: dict[str, object] = {}
    provenance = {"construction": dataset_label(con.dataset, loaded)}
    for label, name in (("unsafe", "harmful"), ("safe", "harmless")):
        part = seeded_subset(fit[fit["label"] == label], limit, exp.seed)
        train, val = _train_val(part, con.val_fraction, exp.seed)
        sets[f"{name}_train"], sets[f"{name}_val"] = train, val
        named = getattr(exp.data, f"{name}_eval")
        if named is not None:
            frame_eval = load_named(named, exp.seed, limit, placeholders)
            sets[f"{name}_eval"] = _eval_frame(frame_eval)
            provenance[f"{name}_eval"] = dataset_label(named, frame_eval)
        else:
            sets[f"{name}_eval"] = _eval_frame(seeded_subset(held[held["label"] == label], limit, exp.seed))
            provenance[f"{name}_eval"] = f"{provenance['construction']}, held-out areas"
    tasks, task_provenance = _benign_tasks(exp, limit, placeholders)
    provenance.update(task_provenance)
    return PromptSets(
        **sets,  # type: ignore[arg-type]
        construction=frame,
        benign_task_eval=tasks,
        fit_areas=list(split.fit_areas),
        heldout_areas=list(split.heldout_areas),
        provenance=provenance,
    )


def _from_named(exp: Experiment, limit: int | None, placeholders: bool) -> PromptSets:
    d = exp.data
    frames: dict[str, pd.DataFrame] = {}

    def load(key: str) -> pd.DataFrame:
        frames[key] = load_named(getattr(d, key), exp.seed, limit, placeholders)
        return frames[key]

    harmful_train = load("harmful_train")
    harmless_train = load("harmless_train")
    n_val = exp.direction.selection.n_val

    def val(key: str, train: pd.DataFrame) -> tuple[list[str], list[str]]:
        if getattr(d, key) is not None:
            return train["prompt"].tolist(), load(key)["prompt"].tolist()
        fraction = min(0.5, n_val / max(len(train), 1))
        return _train_val(train, fraction, exp.seed)

    htr, hval = val("harmful_val", harmful_train)
    btr, bval = val("harmless_val", harmless_train)
    if d.harmful_eval is None or d.harmless_eval is None:
        raise ValueError(f"experiment {exp.name!r}: data needs `harmful_eval` and `harmless_eval`")
    systems, system_provenance = _system_prompts(exp, placeholders)
    tasks, task_provenance = _benign_tasks(exp, limit, placeholders)
    return PromptSets(
        harmful_train=htr,
        harmless_train=btr,
        harmful_val=hval,
        harmless_val=bval,
        harmful_eval=_eval_frame(load("harmful_eval")),
        harmless_eval=_eval_frame(load("harmless_eval")),
        benign_task_eval=tasks,
        systems=systems,
        provenance={**{k: dataset_label(getattr(d, k), frame) for k, frame in frames.items()}, **system_provenance,
                    **task_provenance},
    )


def prompt_sets(exp: Experiment, limit: int | None = None, placeholders: bool = False) -> PromptSets:
    """Every prompt set of the experiment; `limit` takes a seeded subset of each (smoke runs);
    `placeholders` stands in for datasets absent here (rehearsals only)."""
    if exp.data.construction is not None:
        return _from_construction(exp, limit, placeholders)
    return _from_named(exp, limit, placeholders)
