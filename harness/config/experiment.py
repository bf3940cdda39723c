"""One experiment TOML, validated on load: the sections together and the rules that span them.

A bad file raises `ExperimentError` naming the file and the offending field, so a typo in a
threshold never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from harness import REPO_ROOT
from harness.config.base import CLAIM_ID, ExperimentError, Strict
from harness.config.claims import (
    CapabilityConfig,
    KnownFailure,
    ReferenceConfig,
    StabilityConfig,
    StatisticsConfig,
    Thresholds,
)
from harness.config.data import DataConfig, dataset_refs
from harness.config.judging import JudgeConfig
from harness.config.model import ChatConfig, GenerationConfig, ModelConfig
from harness.config.steering import DirectionConfig, InterventionConfig, parse_cell

EXPERIMENTS_DIR = REPO_ROOT / "experiments"


class Experiment(Strict):
    name: str
    description: str = ""
    seed: int = 0
    source_file: str | None = None
    model: ModelConfig
    data: DataConfig
    direction: DirectionConfig = DirectionConfig()
    intervention: InterventionConfig = InterventionConfig()
    chat: ChatConfig = ChatConfig()
    generation: GenerationConfig = GenerationConfig()
    judges: JudgeConfig = JudgeConfig()
    reference: ReferenceConfig | None = None
    stability: StabilityConfig = StabilityConfig()
    capability: CapabilityConfig = CapabilityConfig()
    statistics: StatisticsConfig = StatisticsConfig()
    thresholds: Thresholds
    known_failures: dict[str, KnownFailure] = Field(
        default_factory=dict,
        description="claim id (e.g. `test_harmless_unchanged[ablation]`) -> {threshold, reason[, runs]}: the "
        "threshold it misses, why, with the measured figure, and `runs` when only the full run or only --limit "
        "runs miss it; the claim runs as a strict xfail that accepts only a miss of that threshold, so it fails "
        "the run once it passes or when it misses another threshold",
    )

    @field_validator("known_failures", mode="before")
    @classmethod
    def _known_failures(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        for claim, entry in value.items():
            if not CLAIM_ID.match(claim):
                raise ValueError(f"{claim!r} is not a claim id like test_name or test_name[param]")
            if isinstance(entry, str):
                raise ValueError(f"{claim!r}: name the threshold it misses: "
                                 f"{{ threshold = \"...\", reason = {entry!r} }}")
        return value

    @model_validator(mode="after")
    def _fixed_direction_bound(self) -> "Experiment":
        if self.direction.layer is not None and not self.direction.per_layer \
                and self.thresholds.fixed_direction_cosine_min is None:
            raise ValueError("direction.layer is fixed, so thresholds.fixed_direction_cosine_min must bound how far "
                             "the selected direction may stray from it")
        return self

    @model_validator(mode="after")
    def _claim_bounds(self) -> "Experiment":
        """A configured claim has its bound, and a per-set system prompt is not doubled by a global one."""
        t = self.thresholds
        misplaced = [path for path, ref in dataset_refs(self) if ref.system_prompt is not None
                     and path not in ("data.harmful_train", "data.harmless_train")]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: `system_prompt` is supported on data.harmful_train / "
                             "harmless_train only (the selection sweep, filtering and generation format every "
                             "prompt alike)")
        if self.direction.layer_auc and t.fit_auc_min is None:
            raise ValueError("direction.layer_auc is on, so thresholds.fit_auc_min must bound the AUC at its layer")
        if self.data.benign_task_eval is not None and t.benign_task_refusal_drop_pp_min is None:
            raise ValueError("data.benign_task_eval is set, so thresholds.benign_task_refusal_drop_pp_min must bound "
                             "the fall in refusal on it")
        if self.generation.system_prompt is not None and any(
                ref is not None and ref.system_prompt for ref in (self.data.harmful_train, self.data.harmless_train)):
            raise ValueError("generation.system_prompt applies to every prompt; a train set's `system_prompt` would "
                             "be ambiguous beside it")
        return self

    @model_validator(mode="after")
    def _recipe(self) -> "Experiment":
        d, iv = self.direction, self.intervention
        if d.per_layer:
            if d.layer is not None:
                raise ValueError("direction.per_layer fits every layer; drop direction.layer")
            if d.method != "diff_in_means" or d.compare_methods:
                raise ValueError("direction.per_layer supports method = \"diff_in_means\" with compare_methods = [] "
                                 "(the other methods and their ablation/INLP conditions take one direction)")
            if iv.conditions != ["weight_edit"]:
                raise ValueError(f"direction.per_layer runs the weight edit only (intervention.conditions = "
                                 f"[\"weight_edit\"]), got {iv.conditions}: ablation and ActAdd take one direction")
            if iv.grid is not None:
                raise ValueError("direction.per_layer runs the weight edit only; intervention.grid's cells take one "
                                 "direction")
            if iv.edit_modules is None or "embed" in iv.edit_modules:
                raise ValueError("direction.per_layer needs intervention.edit_modules without \"embed\": the "
                                 "embeddings belong to no layer, so no layer's direction applies to them")
        elif d.read_point != "block_input":
            raise ValueError(f"direction.read_point = {d.read_point!r} needs direction.per_layer = true: the "
                             "selection sweep, ablation and ActAdd act on block inputs")
        if d.fit_prompts == "construction":
            if self.data.construction is None:
                raise ValueError("direction.fit_prompts = \"construction\" needs a data.construction split")
            if not d.per_layer and d.layer is None:
                raise ValueError("direction.fit_prompts = \"construction\" leaves no validation prompts to select a "
                                 "direction on: fix direction.layer or set direction.per_layer")
        if iv.keep_tie and iv.edit_modules is not None and "embed" not in iv.edit_modules:
            raise ValueError("intervention.keep_tie applies to an edit of the embeddings; edit_modules leaves them "
                             "untouched, so drop keep_tie")
        t = self.thresholds
        if not d.per_layer and t.selection_score_drop_min is None:
            raise ValueError("thresholds.selection_score_drop_min is required: test_direction_selected asserts it")
        if not d.per_layer and t.edit_logit_gap_max is None:
            raise ValueError("thresholds.edit_logit_gap_max is required: test_edit_fidelity asserts it")
        if (self.stability.areas == "all") != d.per_layer:
            raise ValueError(f"stability.areas = {self.stability.areas!r} with direction.per_layer = {d.per_layer}: "
                             "per-layer directions are compared across draws from all areas (areas = \"all\", "
                             "median and 10th percentile of the per-layer cosines), one direction across fit-area "
                             "budgets against the held-out areas (areas = \"fit\")")
        return self

    @model_validator(mode="after")
    def _reference_conditions(self) -> "Experiment":
        if self.reference is not None:
            unknown = sorted(set(self.reference.conditions) - {"baseline", *self.intervention.conditions})
            if unknown:
                raise ValueError(f"reference.conditions names {unknown}, which this experiment does not run")
        return self

    @model_validator(mode="after")
    def _grid_winners(self) -> "Experiment":
        grid = self.intervention.grid
        if grid is None:
            return self
        pairs = {f"{parse_cell(a)[0]}~{parse_cell(b)[0]}" for a, b in (c.split("~") for c in grid.comparisons())}
        named = set(self.thresholds.methods_winner)
        missing, unknown = sorted(pairs - named), sorted(named - pairs)
        if missing or unknown:
            raise ValueError(f"thresholds.methods_winner must name the expected winner of each grid comparison "
                             f"{sorted(pairs)}: missing {missing}, not compared {unknown}")
        if pairs and self.thresholds.methods_kl_max is None:
            raise ValueError("intervention.grid compares methods at a matched KL budget: set thresholds.methods_kl_max")
        return self

    def known_failure(self, claim: str, limit: int | None) -> KnownFailure | None:
        """The declared failure of `claim` that applies to this run (`limit`: the --limit, None = full)."""
        entry = self.known_failures.get(claim)
        if entry is None or entry.runs == "all" or (entry.runs == "limited") == (limit is not None):
            return entry
        return None


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))


def resolve_experiment_path(name_or_path: str | Path) -> Path:
    """`demo` -> experiments/demo.toml; an existing path is taken as is."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise ExperimentError(f"experiment file {candidate} does not exist")
        return candidate
    path = EXPERIMENTS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ExperimentError(
            f"unknown experiment {str(name_or_path)!r}; available: {', '.join(available_experiments())}"
        )
    return path


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def load_experiment(name_or_path: str | Path) -> Experiment:
    path = resolve_experiment_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML: {err}") from err
    raw.setdefault("name", path.stem)
    try:
        exp = Experiment.model_validate({**raw, "source_file": str(path)})
    except ValidationError as err:
        problems = "; ".join(f"field `{_field_path(e['loc'])}`: {e['msg']}" for e in err.errors())
        raise ExperimentError(f"{path}: {problems}") from err
    return exp
