"""The data stage: seeded subsets (what --limit picks), the area split, named evaluation sets replacing the
held-out ones, and placeholders only where a rehearsal asks for them."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.config import load_experiment
from harness.data.loading import is_available
from harness.data.prompt_sets import prompt_sets, seeded_subset


def test_seeded_subset_is_stable_and_nested():
    frame = pd.DataFrame({"id": [str(i) for i in range(50)], "prompt": [f"p{i}" for i in range(50)]})
    a, b = seeded_subset(frame, 20, 3), seeded_subset(frame, 20, 3)
    assert a.equals(b) and len(a) == 20
    assert set(seeded_subset(frame, 10, 3)["id"]) <= set(a["id"]), "a smaller --limit picks a subset of a larger one"
    assert not a.equals(seeded_subset(frame, 20, 4))
    assert seeded_subset(frame, None, 3).equals(frame) and seeded_subset(frame, 99, 3).equals(frame)
    assert list(a["id"]) == sorted(a["id"], key=int), "rows keep their file order"


def test_demo_sets_split_by_area_and_limit():
    exp = load_experiment("demo")
    full, small = prompt_sets(exp), prompt_sets(exp, limit=8)
    assert not set(full.fit_areas) & set(full.heldout_areas) and len(full.fit_areas) == 8
    assert set(full.harmful_eval["category"]) <= set(full.heldout_areas)
    assert set(full.harmful_train + full.harmful_val).isdisjoint(full.harmful_eval["prompt"])
    assert len(small.harmful_eval) == len(small.harmless_eval) == 8
    assert set(small.harmful_eval["id"]) <= set(full.harmful_eval["id"])
    assert full.provenance == {"construction": "demo_policy_prompts", "harmful_eval": "demo_policy_prompts, held-out areas",
                               "harmless_eval": "demo_policy_prompts, held-out areas"}


def test_named_eval_set_replaces_the_held_out_side_and_placeholders_only_when_asked():
    exp = load_experiment("gemma-4-e4b-it")
    if not is_available("policy_prompts"):
        pytest.skip("the study's policy set is not in HARNESS_DATA_DIR")
    if is_available("sorry_bench"):
        pytest.skip("SORRY-Bench is available here: no placeholder to check")
    with pytest.raises(Exception, match="sorry_bench"):
        prompt_sets(exp, limit=8)
    sets = prompt_sets(exp, limit=8, placeholders=True)
    assert sets.provenance["harmful_eval"] == "sorry_bench (placeholder)"
    assert sets.provenance["harmless_eval"] == "policy_prompts, held-out areas"
    assert sets.harmful_eval["prompt"].str.startswith("[placeholder").all()
    assert set(sets.harmless_eval["category"]) <= set(sets.heldout_areas)
    assert sorted(sets.fit_areas) == sorted(exp.data.construction.fit_area_names)
