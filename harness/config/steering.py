"""How the direction is selected and fit, and how it is removed (conditions, scopes, the INLP study's grid)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Strict


class SelectionConfig(Strict):
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
    candidates_per_forward: int = Field(
        1, ge=1, description="candidates ablated in one forward over as many copies of the validation prompts, "
        "and added (the induce pass) to as many copies where they share a layer "
        "(harness.steering.selection.select_direction): fewer, larger forwards where the sweep is bound by per-forward "
        "overhead; the same arithmetic per row in another batch shape"
    )
    packed: bool = Field(
        False, description="every pass packs the validation prompts into rows (harness.models.packing): no padding, "
        "and the prefix they all share (a chat template's system turn) computed once per row; equal to the padded "
        "pass to float tolerance; attention-only models (with candidates_per_forward, copies of the packed rows)"
    )

    @model_validator(mode="before")
    @classmethod
    def _shared_prefix_is_packed(cls, data):
        if isinstance(data, dict) and "shared_prefix" in data:
            raise ValueError("shared_prefix was replaced by packed = true, which also shares the prompts' common "
                             "prefix and drops their padding")
        return data


ReadPoint = Literal["block_input", "layer_output"]
EditModule = Literal["embed", "attn_out", "mlp_down", "experts", "extra"]


class DirectionConfig(Strict):
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


class GridConfig(Strict):
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


class InterventionConfig(Strict):
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
        None, description="which residual writers the weight edit touches, by kind (harness.models.arch.EDIT_MODULE_KINDS: "
        "embed, attn_out, mlp_down, experts, extra); None = every residual writer"
    )

    @field_validator("edit_modules")
    @classmethod
    def _modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"edit_modules must name distinct module kinds, got {value!r}")
        return value
