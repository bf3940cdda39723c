"""What the claims assert: thresholds, declared known failures, reference run, stability, capability and statistics
settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from harness.config.base import Strict
from harness.config.data import DatasetRef


class KnownFailure(Strict):
    """A claim the experiment does not meet: which threshold it misses, why, and in which runs."""

    threshold: str = Field(description="the threshold the claim misses (a `thresholds` field, or reference.FIELD); "
                           "a miss of any other threshold still fails the run")
    reason: str = Field(description="why, with the measured figure")
    runs: Literal["all", "full", "limited"] = Field(
        "all", description="`full`: only runs without --limit; `limited`: only --limit runs"
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the reason must state the measured figure, got an empty string")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: str) -> str:
        known = [*Thresholds.model_fields, *(f"reference.{f}" for f in ReferenceConfig.model_fields)]
        if value not in known:
            raise ValueError(f"threshold {value!r} is not a threshold; one of: {', '.join(known)}")
        return value


class ReferenceConfig(Strict):
    """A published run's per-question judge scores to compare this run's outcome with."""

    judgments: DatasetRef
    conditions: dict[str, str] = Field(description="this run's condition -> the reference's condition label")
    tolerance_pp: float = Field(gt=0, lt=100, description="equivalence margin in pp: the `confidence` interval of the "
                                "paired difference from the reference (each condition's compliance rate, and the "
                                "paired change from baseline) must lie strictly within +/- this (two one-sided tests)")
    confidence: float = Field(0.90, gt=0.5, lt=1, description="level of that interval: 0.90 is TOST at alpha = 0.05 "
                              "per side")
    agreement_min: float = Field(0.0, ge=0, le=1, description="smallest share of questions judged alike")


class StabilityConfig(Strict):
    budgets: list[int] = [2, 4, 6, 8]
    repeats: int = Field(5, ge=1)
    areas: Literal["fit", "all"] = Field(
        "fit", description="`fit` (one direction): draw each budget from the fit areas and compare with the held-out "
        "areas' direction; `all` (per-layer directions): draw from every construction area and compare each layer's "
        "direction with that of the areas not drawn"
    )


class CapabilityConfig(Strict):
    mmlu: DatasetRef | None = None
    arc_challenge: DatasetRef | None = None
    mmlu_shots: DatasetRef | None = Field(None, description="where MMLU's shots come from; default: the split the "
                                          "registry names for the `mmlu` set (its dev split), same subject, first n")
    arc_challenge_shots: DatasetRef | None = Field(None, description="where ARC's shots come from; default: the split "
                                                   "the registry names for the `arc_challenge` set (its train split)")
    text: DatasetRef | None = None
    n_shot: int = 5
    kl_prompts: int = 64
    batch_size: int = Field(16, ge=1, description="prompts per forward pass for multiple choice and CE; larger on a GPU")


class Thresholds(Strict):
    """Every claim reads its bound from here; none is defaulted, so a missing one is a visible error."""

    baseline_refusal_harmful_min: float
    baseline_refusal_harmless_max: float
    refusal_drop_pp_min: dict[str, float]
    mcnemar_alpha: float = 0.05
    stability_cosine_min: float
    harmless_refusal_max: float
    harmless_kl_max: float
    capability_max_drop: float
    ce_max_delta: float
    edit_logit_gap_max: float | None = Field(None, description="test_edit_fidelity: largest |logit gap| edited vs ablated")
    stability_p10_cosine_min: float | None = Field(
        None, description="test_direction_stability with per-layer directions: smallest 10th percentile of the "
        "per-layer cosines (the median is bounded by stability_cosine_min)"
    )
    selection_score_drop_min: float | None = Field(
        None, description="test_direction_selected: how far (log-odds) ablating the selected direction must lower the "
        "mean refusal score on harmful validation prompts"
    )
    fixed_direction_cosine_min: float | None = Field(
        None, description="test_direction_selected, where the experiment fixes (layer, pos): smallest cosine "
        "between the selected and the fixed direction"
    )
    judge_unparseable_max: float = Field(
        0.0, ge=0, le=1, description="largest share of a judge's outputs that may be unparseable before a "
        "judge-based claim fails (they are counted and reported, never scored)"
    )
    no_answer_max: float = Field(
        0.0, ge=0, le=1, description="largest share of a claim's completions that may have no answer (a reasoning "
        "model cut inside its reasoning, or no final channel) before the claim fails; they are counted, stated "
        "beside the denominator and never judged"
    )
    unsafe_rate_min: dict[str, float] = Field(
        default_factory=dict, description="test_unsafe_rate_rises: per condition, the smallest unsafe rate on harmful "
        "prompts the harm headline judge must find under it (with a significant paired rise, exact McNemar); a "
        "condition without a bound fails its case with a message naming this field"
    )
    methods_drop_pp_min: dict[str, float] = Field(
        default_factory=dict,
        description="test_methods_compared: minimum refusal drop (pp) per direction method; a method "
        "without a bound fails its case with a message naming this field",
    )
    methods_kl_max: float | None = Field(
        None, gt=0, description="test_methods_compared: the KL budget (mean next-token KL on harmless prompts) "
        "within which the methods are compared; a method over it fails, whatever its drop"
    )
    methods_ce_max: float | None = Field(
        None, gt=0, description="test_methods_compared with a grid: the CE budget (rise in cross-entropy on the "
        "capability text set) within which two cells are compared, where the experiment has that set"
    )
    methods_winner: dict[str, Literal["diff_in_means", "inlp", "neither"]] = Field(
        default_factory=dict, description="test_methods_compared with a grid: per comparison `DIM~INLP` "
        "interventions (e.g. `ablation~nullspace`, any scope), the method whose refusal drop is larger with an "
        "exact McNemar p below mcnemar_alpha on the same prompts, or `neither` (p >= alpha)"
    )
    edit_leak_max: float | None = Field(
        None, gt=0, description="test_edit_fidelity: largest |component along r-hat| left in the edited model's "
        "residual stream, as a share of the unedited model's largest component"
    )
    fit_auc_min: float | None = Field(
        None, gt=0.5, le=1, description="test_fit_separates: smallest per-layer AUC at the direction's layer (needs "
        "direction.layer_auc)"
    )
    benign_task_refusal_drop_pp_min: float | None = Field(
        None, gt=0, description="test_benign_tasks_answered: smallest fall (pp) in refusal on data.benign_task_eval "
        "under each condition, with a paired exact McNemar p below mcnemar_alpha"
    )
    capability_chance_alpha: float = Field(
        0.05, gt=0, lt=1, description="test_capability_retention: a multiple-choice set on which the baseline is "
        "not above chance at this level (one-sided exact binomial) cannot detect a loss, and the claim fails"
    )


class StatisticsConfig(Strict):
    paired_interval: Literal["newcombe", "wald"] = Field(
        "newcombe", description="interval for a paired change in compliance: Newcombe's square-and-add (good "
        "coverage at small n), or the Wald interval where a study published that one and it is to be reproduced"
    )
