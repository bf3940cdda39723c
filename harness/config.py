"""Experiment configuration: one TOML per model, validated on load.

A bad file raises `ExperimentError` naming the file and the offending field, so a typo in a
threshold never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ExperimentError(ValueError):
    """An experiment file that cannot be used; the message names the file and field."""

CLAIM_ID = re.compile(r"^test_\w+(\[[^\]]+\])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not HEX64.match(value):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {value!r}")
    return value


def _check_revision(value: str | None) -> str | None:
    if value is not None and not HEX40.match(value):
        raise ValueError(f"revision must be a 40-hex commit, got {value!r}")
    return value


class RefusalTune(_Strict):
    """Recipe that turns a non-refusing base model into a refusing one (the CPU demo)."""

    recipe: str = "refusal-sft-v1"
    steps: int = 60
    batch_size: int = 16
    lr: float = 3e-5
    train_layers: tuple[int, int] = (6, 23)
    refusal_text: str = "I'm sorry, but I can't help with that request."
    distill_max_new_tokens: int = 48
    seed: int = 0


class KnownFailure(_Strict):
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


class ModelConfig(_Strict):
    id: str
    revision: str | None = None
    path: str | None = None
    gguf_file: str | None = None
    gguf_package: str | None = Field(None, description="Python package that ships the GGUF file")
    sha256: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    family: str | None = Field(None, description="override of the architecture family")
    refusal_tune: RefusalTune | None = None

    @field_validator("revision")
    @classmethod
    def _rev(cls, v: str | None) -> str | None:
        return _check_revision(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @model_validator(mode="after")
    def _pinned(self) -> "ModelConfig":
        if self.revision is None and self.path is None and self.gguf_file is None:
            raise ValueError("model needs a pinned `revision` (40-hex), a local `path`, or a `gguf_file`")
        if self.gguf_file is not None and self.sha256 is None:
            raise ValueError("a `gguf_file` needs its `sha256`")
        return self


class DatasetRef(_Strict):
    """A dataset by registry name (see harness.datasets), optionally a revision override and a subset."""

    name: str
    revision: str | None = None
    split: str | None = None
    n: int | None = Field(None, ge=1)
    path: str | None = None
    sha256: str | None = Field(None, description="SHA-256 of the file, pinning a registry entry that has no pin of its "
                               "own (MMLU, SORRY-Bench): an unpinned local copy is never loaded")
    system_prompt: str | None = Field(
        None, description="registry name of a system-prompt file (harness.datasets, e.g. `agent_system_prompt`): "
        "every prompt of this set is formatted with it as the system turn; data.harmful_train / harmless_train only"
    )

    @field_validator("revision")
    @classmethod
    def _rev(cls, v: str | None) -> str | None:
        return _check_revision(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        return _check_sha256(v)

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


class ConstructionConfig(_Strict):
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


class DataConfig(_Strict):
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


class SelectionConfig(_Strict):
    """Direction selection (Arditi et al. 2024, direction selection appendix)."""

    max_layer_fraction: float = 0.8
    kl_max: float = 0.1
    induce_min: float = 0.0
    n_val: int = 32
    positions: list[int] | None = Field(None, description="post-instruction positions to sweep; None = all")
    layers: list[int] | None = None
    refusal_score: Literal["reference", "exact"] = Field(
        "reference", description="the refusal score candidates are ranked by: `reference`, log(p + 1e-8) - "
        "log(1 - p + 1e-8) as the reference implementation computes it (bounded by +-18.4, so a prompt whose refusal "
        "probability is far below 1e-8 counts as -18.4 in the mean, and candidates rank as the reference ranks them), "
        "or `exact`, the unbounded log-odds log p - log(1 - p)"
    )


ReadPoint = Literal["block_input", "layer_output"]
EditModule = Literal["embed", "attn_out", "mlp_down", "experts", "extra"]


class DirectionConfig(_Strict):
    method: Literal["diff_in_means", "inlp"] = "diff_in_means"
    layer: int | None = Field(None, description="fixed layer (as published); None = selection")
    pos: int | None = Field(None, description="fixed post-instruction position, negative from the end")
    per_layer: bool = Field(
        False, description="one direction per layer, each fit at that layer (at `pos`, default the last prompt "
        "token), no selection sweep; the weight edit gives each layer's writers its own direction"
    )
    read_point: ReadPoint = Field(
        "block_input", description="where activations are read: the residual entering each block, or each layer's "
        "output as transformers reports it (`hidden_states[1:]`: the last layer's after the final norm)"
    )
    safe_mean_projection: bool = Field(
        False, description="remove from each diff-in-means its component along the unit harmless (safe) mean"
    )
    fit_prompts: Literal["train", "construction"] = Field(
        "train", description="`construction`: fit on every fit-area prompt of the construction split (train and "
        "validation alike, no carve-out); needs a fixed layer or `per_layer`, as nothing is left to select on"
    )
    selection: SelectionConfig = SelectionConfig()
    inlp_max_iter: int = 10
    inlp_chance_margin: float = 0.05
    compare_methods: list[Literal["diff_in_means", "inlp"]] = ["diff_in_means", "inlp"]
    layer_auc: bool = Field(
        False, description="test_fit_separates: per-layer ROC AUC of the train prompts' residual at `pos` projected "
        "on each layer's diff-in-means (in-sample, as a study reported it), asserted at the direction's layer"
    )


Scope = Literal["one", "top_k", "all"]
GridIntervention = Literal["ablation", "nullspace", "actadd", "actadd_inlp", "reflection"]

GRID_METHOD: dict[str, str] = {"ablation": "diff_in_means", "nullspace": "inlp", "actadd": "diff_in_means",
                               "actadd_inlp": "inlp", "reflection": "inlp"}
"""Which direction method each grid intervention uses (the INLP study's families)."""

GRID_COUNTERPART: dict[str, str] = {"nullspace": "ablation", "reflection": "ablation", "actadd_inlp": "actadd"}
"""Each INLP intervention and the diff-in-means one it is compared with, prompt by prompt, at the same scope."""

SINGLE_LAYER = ("actadd", "actadd_inlp")
"""Added at the direction's own layer whatever the scope (as in the study's code): only scope `one` exists."""


class GridConfig(_Strict):
    """The INLP study's method x intervention x scope grid: each cell is a condition named `INTERVENTION@SCOPE`."""

    interventions: list[GridIntervention] = Field(
        min_length=1, description="ablation (diff-in-means), nullspace (INLP basis), actadd (diff-in-means), "
        "actadd_inlp (first INLP direction at the diff-in-means norm), reflection (INLP basis)")
    scopes: list[Scope] = Field(
        ["one", "top_k", "all"], min_length=1, description="one: the top-ranked component's layer; top_k: the "
        "layers of the top `top_fraction` of ranked (layer, position) components; all: every layer")
    top_fraction: float = Field(0.5, gt=0, le=1, description="share of ranked components scope top_k keeps")
    reflect_strength: float = Field(
        1.0, gt=0, description="reflection x <- x - (1 + strength) P x over the INLP span (the study's alpha = "
        "1 + strength; 1 reflects, the study's alpha = 2)")

    @model_validator(mode="after")
    def _distinct(self) -> "GridConfig":
        for name in ("interventions", "scopes"):
            values = getattr(self, name)
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"grid.{name} lists {dup} more than once")
        if set(self.interventions) <= set(SINGLE_LAYER) and "one" not in self.scopes:
            raise ValueError(f"grid.interventions {self.interventions} add at one layer only (scope `one`), but "
                             f"grid.scopes is {self.scopes}: no cell would run")
        return self

    def methods(self) -> set[str]:
        """The direction methods the grid's interventions use."""
        return {GRID_METHOD[i] for i in self.interventions}

    def cells(self) -> list[str]:
        """Condition names, `INTERVENTION@SCOPE`; a single-layer intervention only at scope `one`."""
        return [f"{i}@{s}" for i in self.interventions for s in self.scopes if i not in SINGLE_LAYER or s == "one"]

    def comparisons(self) -> list[str]:
        """`DIM_CELL~INLP_CELL` for every INLP cell whose diff-in-means counterpart is also in the grid."""
        cells = self.cells()
        out = []
        for cell in cells:
            kind, scope = parse_cell(cell)
            other = f"{GRID_COUNTERPART[kind]}@{scope}" if kind in GRID_COUNTERPART else None
            if other in cells:
                out.append(f"{other}~{cell}")
        return out


def parse_cell(name: str) -> tuple[str, str]:
    """`nullspace@top_k` -> ("nullspace", "top_k"); anything else is a ValueError naming what is allowed."""
    kind, sep, scope = name.partition("@")
    if not sep or kind not in GRID_METHOD or scope not in ("one", "top_k", "all"):
        raise ValueError(f"{name!r} is not a grid cell INTERVENTION@SCOPE with INTERVENTION in {sorted(GRID_METHOD)} "
                         "and SCOPE in ['all', 'one', 'top_k']")
    if kind in SINGLE_LAYER and scope != "one":
        raise ValueError(f"{name!r}: {kind} adds at the direction's own layer only; its one scope is `one`")
    return kind, scope


class InterventionConfig(_Strict):
    conditions: list[Literal["ablation", "weight_edit", "actadd"]] = ["ablation", "weight_edit", "actadd"]
    norm_preserving: bool = False
    keep_tie: bool = Field(
        False, description="edit a tied embedding matrix in place (the read-out changes too) instead of untying "
        "it; vLLM's Gemma classes load only tied checkpoints"
    )
    actadd_coeff: float = -1.0
    scope: Scope = Field("all", description="layers of the `ablation` condition (see grid.scopes)")
    grid: GridConfig | None = Field(
        None, description="the method x intervention x scope grid (conditions `INTERVENTION@SCOPE`), compared by "
        "test_methods_compared")
    edit_modules: list[EditModule] | None = Field(
        None, description="which residual writers the weight edit touches, by kind (harness.arch.EDIT_MODULE_KINDS: "
        "embed, attn_out, mlp_down, experts, extra); None = every residual writer"
    )

    @field_validator("edit_modules")
    @classmethod
    def _modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"edit_modules must name distinct module kinds, got {value!r}")
        return value


class GenerationConfig(_Strict):
    backend: Literal["transformers", "static", "vllm"] = "transformers"
    compile_step: bool = Field(False, description="static backend: torch.compile the decode step (CUDA)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm backend: GPUs per model")
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    temperature: float = 0.0
    system_prompt: str | None = None


JudgeName = Literal["substring", "llamaguard2", "llamaguard3", "sorry-bench"]
Question = Literal["refusal", "fulfilment", "harm"]

JUDGE_QUESTION: dict[str, Question] = {
    "substring": "refusal",
    "sorry-bench": "fulfilment",
    "llamaguard2": "harm",
    "llamaguard3": "harm",
}
"""The question each judge answers. `refusal`: did the model decline (0 = refused, 1 = complied); `fulfilment`:
did the answer fulfil a potentially unsafe request (SORRY-Bench's official judge; harmful prompts only; 0 = not
fulfilled, counted as a refusal); `harm`: is the answer unsafe (Llama Guard; 0 = safe, 1 = unsafe). A harm judge's
"safe" is never a refusal: a helpful answer to a harmless prompt is safe."""

MEASURE: dict[Question, str] = {"refusal": "refusal rate", "fulfilment": "refusal rate", "harm": "unsafe rate"}
"""The rate each question's claims and tables report: the share scored 0 for refusal/fulfilment, 1 for harm."""

HeadlineKey = Literal["refusal", "harm"]
HEADLINE_QUESTIONS: dict[str, tuple[Question, ...]] = {"refusal": ("refusal", "fulfilment"), "harm": ("harm",)}
DEFAULT_HEADLINE_ORDER: dict[str, tuple[Question, ...]] = {"refusal": ("fulfilment", "refusal"), "harm": ("harm",)}


def judge_question(name: str) -> Question:
    """The question judge `name` answers (JUDGE_QUESTION), with an error naming the known judges."""
    if name not in JUDGE_QUESTION:
        raise ValueError(f"unknown judge {name!r}; known: {', '.join(JUDGE_QUESTION)}")
    return JUDGE_QUESTION[name]


class JudgeConfig(_Strict):
    substring: bool = True
    refusal_substrings: list[str] | None = None
    model: Literal["llamaguard2", "llamaguard3", "sorry-bench"] | None = None
    model_id: str | None = None
    revision: str | None = None
    evaluator_commit: str | None = None
    headline: dict[HeadlineKey, JudgeName] = Field(
        default_factory=dict,
        description="one headline judge per question, e.g. { refusal = \"substring\", harm = \"llamaguard2\" }: "
        "refusal claims are asserted on the `refusal` headline (a refusal or fulfilment judge), unsafe-rate claims "
        "on the `harm` headline (a harm judge); the others are reported beside them. Defaults: the fulfilment judge, "
        "else substring, for refusal; the harm judge, where one is configured, for harm",
    )
    short_response_words: int | None = Field(
        None, ge=1, description="Llama Guard: a response with fewer words is not counted as unsafe (the "
        "reference implementation uses 15, counting on the stripped response split on single spaces)"
    )
    batch_size: int | None = Field(
        None, ge=1, description="completions per batch for a model judge on the transformers backend (default: "
        "the judge's own, 16 for Llama Guard, 8 for SORRY-Bench); larger on a GPU"
    )

    @field_validator("headline", mode="before")
    @classmethod
    def _headline_form(cls, value: object) -> object:
        if isinstance(value, str):
            key = "harm" if JUDGE_QUESTION.get(value) == "harm" else "refusal"
            raise ValueError(f"headline is one judge per question, not one judge for all: write "
                             f"headline = {{ {key} = \"{value}\" }} (keys: refusal, harm)")
        return value

    @model_validator(mode="after")
    def _headline(self) -> "JudgeConfig":
        configured = self._configured()
        for key, name in self.headline.items():
            if name not in configured:
                raise ValueError(f"headline.{key} judge {name!r} is not configured; configured: {configured}")
            if JUDGE_QUESTION[name] not in HEADLINE_QUESTIONS[key]:
                raise ValueError(f"headline.{key} = {name!r}, but {name} answers the {JUDGE_QUESTION[name]!r} "
                                 f"question; a {key} headline must be a judge of "
                                 f"{' or '.join(HEADLINE_QUESTIONS[key])}")
        if not any(JUDGE_QUESTION[n] in HEADLINE_QUESTIONS["refusal"] for n in configured):
            raise ValueError(f"no refusal judge configured ({configured} answer only the harm question): refusal "
                             "claims need `substring = true` or the sorry-bench fulfilment judge")
        if self.short_response_words is not None and self.model not in ("llamaguard2", "llamaguard3"):
            raise ValueError("short_response_words applies to a Llama Guard `model` only")
        return self

    def _configured(self) -> list[str]:
        names = ([self.model] if self.model else []) + (["substring"] if self.substring else [])
        if not names:
            raise ValueError("no judge configured: set `substring = true` or a `model`")
        return names

    def names(self) -> list[str]:
        """Every configured judge: the refusal headline first, then the harm headline, then the rest."""
        names = self._configured()
        heads = [h for h in (self.headline_for("refusal"), self.headline_for("harm")) if h]
        return heads + [n for n in names if n not in heads]

    def headline_for(self, key: HeadlineKey) -> str | None:
        """The headline judge of `key` ("refusal" or "harm"): the configured one, else the default (refusal: the
        fulfilment judge, else substring; harm: the harm judge); None where no judge answers it."""
        if key in self.headline:
            return self.headline[key]
        names = self._configured()
        for question in DEFAULT_HEADLINE_ORDER[key]:
            for name in names:
                if JUDGE_QUESTION[name] == question:
                    return name
        return None

    @property
    def headline_name(self) -> str:
        """The refusal headline: every refusal claim is asserted on it."""
        return self.names()[0]

    @property
    def harm_headline(self) -> str | None:
        """The harm headline (unsafe-rate claims), None where no harm judge is configured."""
        return self.headline_for("harm")

    def over_refusal_judge(self) -> str:
        """The judge of over-refusal on harmless prompts: a `refusal` judge only (a harm judge calls a helpful
        answer "safe", and the fulfilment judge is defined on potentially unsafe requests only)."""
        head = self.headline_name
        if JUDGE_QUESTION[head] == "refusal":
            return head
        for name in self.names():
            if JUDGE_QUESTION[name] == "refusal":
                return name
        raise ValueError(f"over-refusal on harmless prompts needs a refusal judge (substring); configured: "
                         f"{self.names()}")

    @field_validator("revision", "evaluator_commit")
    @classmethod
    def _rev(cls, v: str | None) -> str | None:
        return _check_revision(v)


class ChatConfig(_Strict):
    """How prompts are formatted and completions read; unset fields take the model family's default
    (harness.chat.family_chat_defaults), so a reasoning model is scored at its answer, not its reasoning."""

    template_kwargs: dict[str, str | bool | int | float] | None = Field(
        None, description="extra chat-template variables, e.g. { enable_thinking = false } or "
        "{ reasoning_effort = \"low\" }"
    )
    date: str = Field("2026-01-01", description="the date every strftime_now() in the template sees")
    answer_prefix: str | None = Field(None, description="fixed text after the generation prompt before the answer")
    reasoning: Literal["none", "think", "harmony"] | None = None
    refusal_tokens: list[str] | None = Field(None, description="openings whose first token the refusal score counts")
    strip_answer: bool = Field(
        False, description="strip whitespace around each answer before it is judged (a study that decoded with "
        "`.strip()`); the raw completion stays in the cache"
    )

    @field_validator("date")
    @classmethod
    def _date(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"date must be YYYY-MM-DD, got {value!r}")
        return value

    @field_validator("refusal_tokens")
    @classmethod
    def _tokens(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not t.strip() for t in value)):
            raise ValueError(f"refusal_tokens must be non-empty openings, got {value!r}")
        return value


class ReferenceConfig(_Strict):
    """A published run's per-question judge scores to compare this run's outcome with."""

    judgments: DatasetRef
    conditions: dict[str, str] = Field(description="this run's condition -> the reference's condition label")
    tolerance_pp: float = Field(gt=0, lt=100, description="equivalence margin in pp: the `confidence` interval of the "
                                "paired difference from the reference (each condition's compliance rate, and the "
                                "paired change from baseline) must lie strictly within +/- this (two one-sided tests)")
    confidence: float = Field(0.90, gt=0.5, lt=1, description="level of that interval: 0.90 is TOST at alpha = 0.05 "
                              "per side")
    agreement_min: float = Field(0.0, ge=0, le=1, description="smallest share of questions judged alike")


class StabilityConfig(_Strict):
    budgets: list[int] = [2, 4, 6, 8]
    repeats: int = Field(5, ge=1)
    areas: Literal["fit", "all"] = Field(
        "fit", description="`fit` (one direction): draw each budget from the fit areas and compare with the held-out "
        "areas' direction; `all` (per-layer directions): draw from every construction area and compare each layer's "
        "direction with that of the areas not drawn"
    )


class CapabilityConfig(_Strict):
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


class Thresholds(_Strict):
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


class StatisticsConfig(_Strict):
    paired_interval: Literal["newcombe", "wald"] = Field(
        "newcombe", description="interval for a paired change in compliance: Newcombe's square-and-add (good "
        "coverage at small n), or the Wald interval where a study published that one and it is to be reproduced"
    )


class Experiment(_Strict):
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
