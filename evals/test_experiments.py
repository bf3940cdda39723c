"""Every seed experiment TOML loads through the schema, and its datasets and judges resolve."""

from __future__ import annotations

import pytest

from harness.config import available_experiments, load_experiment
from harness.datasets import DATASETS, resolve_name
from harness.judges import JUDGE_NAMES

SEEDS = ["gemma-2b-it", "gemma-4-e4b-it", "qwen3-8b", "gpt-oss-20b", "qwen3.5-4b", "llama-3-8b-instruct"]


@pytest.mark.parametrize("name", SEEDS)
def test_seed_experiment_loads(name):
    assert name in available_experiments()
    exp = load_experiment(name)
    assert exp.model.revision is not None and len(exp.model.revision) == 40
    refs = [r for r in (exp.data.harmful_train, exp.data.harmless_train, exp.data.harmful_val, exp.data.harmless_val,
                        exp.data.harmful_eval, exp.data.harmless_eval, exp.capability.mmlu,
                        exp.capability.arc_challenge, exp.capability.text) if r is not None]
    for ref in refs:
        source = DATASETS[resolve_name(ref)]
        assert ref.revision in (None, source.revision), f"{name}: {ref.name} revision differs from the registry pin"
    if exp.judges.model is not None:
        assert exp.judges.model in JUDGE_NAMES
    for condition in exp.intervention.conditions:
        if condition != "actadd":
            assert condition in exp.thresholds.refusal_drop_pp_min, f"{name}: no drop bound for {condition}"


def test_gemma2b_is_the_published_setup():
    exp = load_experiment("gemma-2b-it")
    assert (exp.direction.layer, exp.direction.pos) == (10, -2)
    assert (exp.data.harmful_train.n, exp.data.harmless_train.n) == (128, 128)
    assert (exp.data.harmful_val.n, exp.data.harmless_val.n) == (32, 32)
    assert exp.data.harmful_eval.name == "jailbreakbench" and exp.generation.max_new_tokens == 512
    assert exp.judges.model == "llamaguard2" and exp.intervention.scope == "all"


def test_gemma4_pins():
    exp = load_experiment("gemma-4-e4b-it")
    assert exp.seed == 2445 and exp.model.revision == "fee6332c1abaafb77f6f9624236c63aa2f1d0187"
    assert exp.data.construction.fit_areas == 8 and exp.intervention.norm_preserving
    assert exp.stability.budgets == [2, 4, 6, 8] and exp.stability.repeats == 5
    assert exp.judges.revision == "79ab44668cef557414cb5e15c726a56ebca9cf1e"
    assert exp.judges.evaluator_commit == "7da10addffb6790cfeb75281eaffb5a176861653"
    assert exp.data.harmful_eval.revision == "612a4e1f45db8adf884fa62318ddf9fa1c6e75e9"
    assert exp.generation.max_new_tokens == 4096
