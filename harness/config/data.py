"""The data section of an experiment: dataset references (pinned) and the construction split."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, Field, model_serializer, model_validator

from harness.config.base import Revision, Sha256, Strict


class DatasetRef(Strict):
    """A dataset by registry name (see harness.data.loading), optionally a revision override and a subset."""

    name: str
    revision: Revision = None
    split: str | None = None
    n: int | None = Field(None, ge=1)
    path: str | None = None
    sha256: Sha256 = Field(None, description="SHA-256 of the file, pinning a registry entry that has no pin of its "
                               "own (MMLU, SORRY-Bench): an unpinned local copy is never loaded")
    system_prompt: str | None = Field(
        None, description="registry name of a system-prompt file (harness.data.loading, e.g. `agent_system_prompt`): "
        "every prompt of this set is formatted with it as the system turn; data.harmful_train / harmless_train only"
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """An absent pin or system prompt is left out of the dump (cache keys are built from it): a config without
        one keys its stages as before the field existed, and one with it keys them by it."""
        out = handler(self)
        if isinstance(out, dict):
            for optional in ("sha256", "system_prompt"):
                if out.get(optional) is None:
                    out.pop(optional, None)
        return out


def dataset_refs(obj: BaseModel, prefix: str = "") -> Iterator[tuple[str, DatasetRef]]:
    """(field path, ref) for every dataset an experiment names, in field order (a set's system-prompt file too)."""
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        path = f"{prefix}{name}"
        if isinstance(value, DatasetRef):
            yield path, value
            if value.system_prompt is not None:
                yield f"{path}.system_prompt", DatasetRef(name=value.system_prompt)
        elif isinstance(value, BaseModel):
            yield from dataset_refs(value, f"{path}.")


class ConstructionConfig(Strict):
    """Policy-area-disjoint split of a safe/unsafe construction dataset."""

    dataset: DatasetRef
    fit_areas: int = Field(8, ge=1)
    fit_area_names: list[str] | None = Field(
        None, description="the fit areas by name, as a published study used them; overrides the seeded choice"
    )
    split_seed: int = 0
    val_fraction: float = Field(0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _names(self) -> "ConstructionConfig":
        if self.fit_area_names is not None and len(set(self.fit_area_names)) != self.fit_areas:
            raise ValueError(f"fit_area_names lists {len(set(self.fit_area_names))} distinct areas but fit_areas = "
                             f"{self.fit_areas}")
        return self


class DataConfig(Strict):
    construction: ConstructionConfig | None = None
    harmful_train: DatasetRef | None = None
    harmless_train: DatasetRef | None = None
    harmful_val: DatasetRef | None = None
    harmless_val: DatasetRef | None = None
    harmful_eval: DatasetRef | None = None
    harmless_eval: DatasetRef | None = None
    benign_task_eval: DatasetRef | None = Field(
        None, description="benign task requests the base model declines (e.g. agent/shell requests without an agent "
        "system prompt), generated bare; test_benign_tasks_answered claims refusal on them falls under each condition"
    )
    filter_prompts: bool = Field(
        False, description="reference filtering (Arditi et al.): keep harmful train/val prompts the base model "
        "refuses (refusal score > 0) and harmless ones it answers (< 0)"
    )

    @model_validator(mode="after")
    def _sources(self) -> "DataConfig":
        if self.construction is None and (self.harmful_train is None or self.harmless_train is None):
            raise ValueError("data needs a `construction` split or both `harmful_train` and `harmless_train`")
        carrying = [k for k in ("harmful_train", "harmless_train")
                    if getattr(self, k) is not None and getattr(self, k).system_prompt is not None]
        if carrying and self.filter_prompts:
            raise ValueError(f"{', '.join(carrying)}: `system_prompt` cannot be combined with filter_prompts, "
                             "which scores every train prompt without it")
        return self
