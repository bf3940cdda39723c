"""Experiment configuration: one TOML per model, validated on load (the schema, split by section).

Imports nothing else from harness. Public names are importable from `harness.config`.
"""

from harness.config.base import (
    CLAIM_ID,
    HEX40,
    HEX64,
    ExperimentError,
)
from harness.config.claims import (
    CapabilityConfig,
    KnownFailure,
    ReferenceConfig,
    StabilityConfig,
    StatisticsConfig,
    Thresholds,
)
from harness.config.data import (
    ConstructionConfig,
    DataConfig,
    DatasetRef,
    dataset_refs,
)
from harness.config.experiment import (
    EXPERIMENTS_DIR,
    Experiment,
    available_experiments,
    load_experiment,
    resolve_experiment_path,
)
from harness.config.judging import (
    DEFAULT_HEADLINE_ORDER,
    HEADLINE_QUESTIONS,
    JUDGE_QUESTION,
    MEASURE,
    HeadlineKey,
    JudgeConfig,
    JudgeName,
    Question,
    judge_question,
    meaningful,
)
from harness.config.model import (
    ChatConfig,
    GenerationConfig,
    ModelConfig,
    RefusalTune,
)
from harness.config.steering import (
    GRID_COUNTERPART,
    GRID_METHOD,
    SINGLE_LAYER,
    DirectionConfig,
    EditModule,
    GridConfig,
    GridIntervention,
    InterventionConfig,
    ReadPoint,
    Scope,
    SelectionConfig,
    parse_cell,
)

__all__ = [
    "HEX40",
    "HEX64",
    "ExperimentError",
    "CLAIM_ID",
    "RefusalTune",
    "ModelConfig",
    "GenerationConfig",
    "ChatConfig",
    "DatasetRef",
    "dataset_refs",
    "ConstructionConfig",
    "DataConfig",
    "SelectionConfig",
    "ReadPoint",
    "EditModule",
    "DirectionConfig",
    "Scope",
    "GridIntervention",
    "GRID_METHOD",
    "GRID_COUNTERPART",
    "SINGLE_LAYER",
    "GridConfig",
    "parse_cell",
    "InterventionConfig",
    "JudgeName",
    "Question",
    "JUDGE_QUESTION",
    "MEASURE",
    "HeadlineKey",
    "HEADLINE_QUESTIONS",
    "DEFAULT_HEADLINE_ORDER",
    "judge_question",
    "meaningful",
    "JudgeConfig",
    "KnownFailure",
    "ReferenceConfig",
    "StabilityConfig",
    "CapabilityConfig",
    "Thresholds",
    "StatisticsConfig",
    "EXPERIMENTS_DIR",
    "Experiment",
    "available_experiments",
    "resolve_experiment_path",
    "load_experiment",
]
