"""Dataset loaders: shared offline copies (row counts from each SOURCE.md), pins, fixtures, subsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.config import DatasetRef
from harness.datasets import DATASETS, DatasetError, load_dataset, parse_arc, parse_mmlu, parse_sorry_bench

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
# Row counts as stated in shared/data/*/SOURCE.md and README.md.
SOURCE_ROWS = {
    "harmful_train": 260, "harmful_val": 39, "harmful_test": 572,
    "harmless_train": 18793, "harmless_val": 6264, "harmless_test": 6266,
    "alpaca": 31323, "jailbreakbench": 100, "advbench": 520, "xstest": 450,
    "policy_prompts": 480, "sorry_bench_reference_judgments": 880,
}


def _shared(name: str) -> Path:
    root = os.environ.get("HARNESS_DATA_DIR")
    if not root:
        pytest.skip("HARNESS_DATA_DIR is not set: no offline dataset copies")
    path = Path(root) / DATASETS[name].local
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", sorted(SOURCE_ROWS))
def test_shared_copy_loads_with_source_row_count(name):
    _shared(name)
    frame = load_dataset(name)
    assert len(frame) == SOURCE_ROWS[name]
    assert {"id", "prompt", "category"} <= set(frame.columns) or name == "sorry_bench_reference_judgments"
    assert frame["id"].is_unique
    if "prompt" in frame:
        assert frame["prompt"].map(lambda p: isinstance(p, str) and p.strip() != "").all()


def test_harmbench_val_and_test():
    _shared("harmbench_test")
    test, val = load_dataset(DatasetRef(name="harmbench", split="test")), load_dataset("harmbench_val")
    assert set(test["functional_category"]) == {"standard", "contextual", "copyright"}
    assert (test["functional_category"] == "standard").sum() == 159  # processed harmbench_test.json has 159
    assert not set(test["id"]) & set(val["id"])


def test_labels_where_relevant():
    _shared("xstest")
    xs = load_dataset("xstest")
    assert xs["label"].value_counts().to_dict() == {"safe": 250, "unsafe": 200}
    policy = load_dataset("policy_prompts")
    assert policy.groupby("category")["label"].value_counts().eq(20).all()


def test_reference_judgments_match_source_facts():
    _shared("sorry_bench_reference_judgments")
    j = load_dataset("sorry_bench_reference_judgments")
    compliant = j.groupby("condition")["score"].sum().to_dict()
    assert compliant == {"baseline": 94, "edited": 337}
    assert j["category"].nunique() == 44


def test_hash_mismatch_names_file_expected_actual(tmp_path):
    target = tmp_path / DATASETS["harmful_train"].local
    target.parent.mkdir(parents=True)
    target.write_text('[{"instruction": "tampered", "category": null}]')
    with pytest.raises(DatasetError) as err:
        load_dataset("harmful_train", data_dir=tmp_path)
    message = str(err.value)
    assert str(target) in message and DATASETS["harmful_train"].sha256 in message and "actual" in message


def test_missing_offline_copy_names_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="HARNESS_DATA_DIR") as err:
        load_dataset("sorry_bench")
    assert "sorry_bench/question.jsonl" in str(err.value)


def test_unknown_name_and_revision_override():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(DatasetError, match="registry pins"):
        load_dataset(DatasetRef(name="sorry_bench", revision="0" * 40))


def test_seeded_subset():
    _shared("harmful_train")
    ref = DatasetRef(name="harmful_train", n=16)
    a, b, c = load_dataset(ref, seed=1), load_dataset(ref, seed=1), load_dataset(ref, seed=2)
    assert len(a) == 16 and a["id"].tolist() == b["id"].tolist() and a["id"].tolist() != c["id"].tolist()
    with pytest.raises(DatasetError, match="n=261"):
        load_dataset(DatasetRef(name="harmful_train", n=261))


def test_sorry_bench_question_format():
    frame = parse_sorry_bench(FIXTURES / "sorry_bench_question.jsonl")
    assert frame["id"].tolist() == ["1", "2", "3", "4"]
    assert frame["category"].tolist() == ["1", "1", "2", "44"]
    assert frame["prompt"].iloc[3].startswith("Fixture request 4")


def test_sorry_bench_local_copy_via_path_is_loaded_unverified():
    with pytest.warns(UserWarning, match="no pinned sha256"):
        frame = load_dataset(DatasetRef(name="sorry_bench", path=str(FIXTURES / "sorry_bench_question.jsonl")))
    assert len(frame) == 4


def test_mmlu_format():
    frame = parse_mmlu(FIXTURES / "mmlu_test.jsonl")
    assert frame["label"].tolist() == [1, 2, 3]
    assert frame["category"].iloc[1] == "high_school_biology"
    assert frame["choices"].iloc[0] == ["4", "5", "6", "7"]


def test_arc_format_maps_answer_key_to_index():
    frame = parse_arc(FIXTURES / "arc_challenge_test.jsonl")
    assert frame["label"].tolist() == [1, 1]  # "B" among A-D, "2" among 1-3
    assert frame["choices"].iloc[1] == ["four", "six", "eight"]


def test_pinned_hash_applies_to_explicit_path():
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        load_dataset(DatasetRef(name="arc_challenge", path=str(FIXTURES / "arc_challenge_test.jsonl")))
