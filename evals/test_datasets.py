"""Dataset loaders: shared offline copies (row counts from each SOURCE.md), pins, fixtures, subsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.config import DatasetRef
from harness.data.loading import is_available, load_dataset
from harness.data.parsers import DatasetError, parse_arc, parse_mmlu, parse_sorry_bench
from harness.data.placeholders import placeholder_frame
from harness.data.registry import DATASETS, REPO_ROOT

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
    message = str(err.value)
    assert "sorry_bench/question.jsonl" in message and "question.jsonl" in message
    # gated: says where to ask for access and how to authenticate the pinned download
    assert "gated" in message and "https://huggingface.co/datasets/sorry-bench/sorry-bench-202503" in message
    assert "HF_TOKEN" in message and "request access" in message


def test_missing_ungated_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("mmlu")
    message = str(err.value)
    assert "HARNESS_DATA_DIR" in message and "mmlu/test-00000-of-00001.parquet" in message
    assert "request access" not in message and DATASETS["mmlu"].url in message


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


@pytest.mark.parametrize("name, fixture", [("sorry_bench", "sorry_bench_question.jsonl"), ("mmlu", "mmlu_test.jsonl"),
                                           ("mmlu_dev", "mmlu_dev.jsonl"),
                                           ("arc_challenge_train", "arc_challenge_train.jsonl")])
def test_unpinned_local_copy_is_an_error_until_pinned(name, fixture):
    """MMLU and SORRY-Bench have no registry pin: a local copy loads only once the experiment pins its SHA-256,
    and the error says which SHA-256 to pin and where."""
    from harness.run.pins import sha256_file

    path = FIXTURES / fixture
    actual = sha256_file(path)
    with pytest.raises(DatasetError, match="has no pinned SHA-256") as err:
        load_dataset(DatasetRef(name=name, path=str(path)))
    assert f'sha256 = "{actual}"' in str(err.value) and str(path) in str(err.value)
    assert not is_available(name, DatasetRef(name=name, path=str(path)))
    pinned = DatasetRef(name=name, path=str(path), sha256=actual)
    assert is_available(name, pinned) and len(load_dataset(pinned)) == len(path.read_text().splitlines())
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        load_dataset(DatasetRef(name=name, path=str(path), sha256="0" * 64))


def test_an_experiment_pin_must_agree_with_the_registry():
    with pytest.raises(DatasetError, match="must agree"):
        load_dataset(DatasetRef(name="harmful_train", sha256="0" * 64))


def test_download_of_an_unpinned_entry_records_its_sha256(tmp_path, monkeypatch):
    """A download from the pinned revision of an entry without a SHA-256 pin records the one it got, and a later
    load checks the cached file against it."""
    import harness.data.loading as datasets

    def fake_download(source, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((FIXTURES / "mmlu_test.jsonl").read_bytes())

    monkeypatch.setattr(datasets, "_download", fake_download)
    path = datasets.locate("mmlu")
    recorded = path.with_name(path.name + ".sha256")
    assert recorded.read_text().strip() == datasets.sha256_file(path) and is_available("mmlu")
    path.write_text(path.read_text() + "\n")  # the cached copy changes after the download
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        datasets.locate("mmlu")


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


# ---------------------------------------------------------------- project files, by name

PROJECT = {"demo_policy_prompts": 480, "mmlu_demo": 42, "mmlu_demo_dev": 80, "arc_demo": 41, "arc_demo_train": 20,
           "text_demo": 32, "agent_shell_contrast": 50, "agent_system_prompt": 1, "agent_shell_benign": 80}


@pytest.mark.parametrize("name", sorted(PROJECT))
def test_project_pins_match_the_repository_files(name):
    from harness.run.pins import sha256_file

    source = DATASETS[name]
    assert source.host == "project" and source.rows == PROJECT[name]
    assert sha256_file(REPO_ROOT / source.path) == source.sha256


@pytest.mark.parametrize("name", sorted(PROJECT))
def test_project_files_load_from_the_repository_wherever_the_run_is(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    frame = load_dataset(name)
    assert len(frame) == PROJECT[name] and frame["id"].is_unique
    assert frame.attrs["source"] == f"project:{DATASETS[name].path}"
    assert frame.attrs["file"] == str(REPO_ROOT / DATASETS[name].path)


def test_demo_policy_prompts_frame_is_exactly_the_policy_loader_s():
    from harness.data.policy import load_policy_prompts

    frame = load_dataset("demo_policy_prompts")
    expected = load_policy_prompts()
    assert list(frame.columns) == list(expected.columns) == ["id", "prompt", "label", "category"]
    assert frame.equals(expected)


def test_capability_demo_sets_round_trip_to_the_capability_loaders():
    from harness.data.capability_sets import load_capability_set, load_text_set, questions_from_frame

    data = REPO_ROOT / "data" / "capability"
    mmlu = load_dataset("mmlu_demo")
    assert {"id", "prompt", "category", "choices", "label"} <= set(mmlu.columns)
    assert questions_from_frame(mmlu, with_subject=True) == load_capability_set(data / "mmlu_demo.jsonl")
    arc = load_dataset("arc_demo")
    assert set(arc["category"]) == {"ARC-demo"}
    items = load_capability_set(data / "arc_demo.jsonl")
    without_subject = [{k: v for k, v in q.items() if k != "subject"} for q in items]
    assert questions_from_frame(arc, with_subject=False) == without_subject
    assert load_dataset("text_demo")["prompt"].tolist() == load_text_set(data / "text_demo.txt")


def test_project_file_changed_or_missing(tmp_path, monkeypatch):
    import shutil

    import harness.data.loading as datasets

    (tmp_path / "data").mkdir()
    shutil.copy(REPO_ROOT / "data" / "policy_prompts.csv", tmp_path / "data" / "policy_prompts.csv")
    monkeypatch.setattr(datasets, "REPO_ROOT", tmp_path)
    assert len(load_dataset("demo_policy_prompts")) == 480
    with open(tmp_path / "data" / "policy_prompts.csv", "a") as fh:
        fh.write("One more request?,safe,weapons_explosives\n")
    with pytest.raises(DatasetError, match="policy_prompts.csv: sha256 mismatch"):
        load_dataset("demo_policy_prompts")
    assert not is_available("demo_policy_prompts")
    restore = "missing file .*mmlu_demo.jsonl.*git checkout -- data/capability/mmlu_demo.jsonl"
    with pytest.raises(DatasetError, match=restore):
        load_dataset("mmlu_demo")
    with pytest.raises(DatasetError, match="no revision to override"):
        load_dataset(DatasetRef(name="demo_policy_prompts", revision="0" * 40))


def test_study_policy_prompts_columns_and_pin():
    _shared("policy_prompts")
    frame = load_dataset("policy_prompts")
    assert ["id", "prompt", "category", "label", "policy_area"] == list(frame.columns)
    assert frame.attrs["sha256"] == DATASETS["policy_prompts"].sha256
    assert set(frame["label"]) == {"safe", "unsafe"} and frame["category"].nunique() == 12


# ---------------------------------------------------------------- availability and placeholders


def test_is_available_never_downloads(tmp_path, monkeypatch):
    import harness.data.loading as datasets

    def no_download(*_):
        raise AssertionError("is_available must not download")

    monkeypatch.setattr(datasets, "_download", no_download)
    assert is_available("mmlu_demo")
    assert not is_available("sorry_bench") and not is_available("mmlu")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    assert not is_available("harmful_train")
    (tmp_path / DATASETS["harmful_train"].local).parent.mkdir(parents=True)
    (tmp_path / DATASETS["harmful_train"].local).write_text("[]")
    assert not is_available("harmful_train")  # present but not the pinned file
    fixture = DatasetRef(name="sorry_bench", path=str(FIXTURES / "sorry_bench_question.jsonl"))
    assert not is_available("sorry_bench", fixture)  # unpinned: not loadable
    from harness.run.pins import sha256_file

    pinned = fixture.model_copy(update={"sha256": sha256_file(FIXTURES / "sorry_bench_question.jsonl")})
    assert is_available("sorry_bench", pinned)


PLACEHOLDER_NAMES = sorted(n for n in DATASETS if n != "sorry_bench_reference_judgments")
# Upstream-format fixtures for the sets with no offline copy: their parsed columns are the real schema.
FIXTURE_FRAMES = {
    "sorry_bench": lambda: parse_sorry_bench(FIXTURES / "sorry_bench_question.jsonl"),
    "mmlu": lambda: parse_mmlu(FIXTURES / "mmlu_test.jsonl"),
    "mmlu_dev": lambda: parse_mmlu(FIXTURES / "mmlu_dev.jsonl"),
    "arc_challenge": lambda: parse_arc(FIXTURES / "arc_challenge_test.jsonl"),
    "arc_challenge_train": lambda: parse_arc(FIXTURES / "arc_challenge_train.jsonl"),
}


def _real_frame(name: str):
    """A parsed real file with `name`'s schema: a fixture in the upstream format, the dataset's own local
    copy, or that of another dataset read by the same parser."""
    if name in FIXTURE_FRAMES:
        return FIXTURE_FRAMES[name]()
    same_parser = [n for n in DATASETS if DATASETS[n].parse is DATASETS[name].parse]
    available = [n for n in sorted(same_parser, key=lambda n: n != name) if is_available(n)]
    if not available:
        pytest.skip(f"no local copy of {name} (or of a set with its parser) to compare the schema with")
    return load_dataset(available[0])


@pytest.mark.parametrize("name", PLACEHOLDER_NAMES)
def test_placeholder_has_the_real_schema_and_row_count(name):
    frame = placeholder_frame(name)
    assert frame.attrs["placeholder"] is True and len(frame) == DATASETS[name].rows
    assert frame["id"].is_unique and frame["prompt"].str.contains("placeholder").all()
    assert len(placeholder_frame(name, n=7)) == 7
    real = _real_frame(name)
    assert list(frame.columns) == list(real.columns)
    for column in ("label", "question_id"):
        if column in real:
            assert frame[column].dtype.kind == real[column].dtype.kind, column
    first = real["id"].iloc[0]
    if "-" in first and first[-1].isdigit():  # "<set>-<n>" ids: the same set prefix
        assert frame["id"].iloc[0].rsplit("-", 1)[0] == first.rsplit("-", 1)[0]


def test_placeholder_multiple_choice_is_usable():
    from harness.data.capability_sets import questions_from_frame

    assert len(questions_from_frame(placeholder_frame("mmlu", n=20), with_subject=True)) == 20
    arc = placeholder_frame("arc_challenge", n=5)
    assert arc["choice_labels"].iloc[0] == ["A", "B", "C", "D"] and len(arc["choices"].iloc[0]) == 4
    assert len(questions_from_frame(arc, with_subject=False)) == 5


def test_sorry_bench_placeholder_takes_ids_from_the_reference_judgments():
    _shared("sorry_bench_reference_judgments")
    frame = placeholder_frame("sorry_bench")
    judged = load_dataset("sorry_bench_reference_judgments")
    pairs = judged[["question_id", "category"]].drop_duplicates().sort_values("question_id")
    assert frame["question_id"].tolist() == pairs["question_id"].tolist()
    assert frame["category"].tolist() == pairs["category"].tolist()
    assert frame["prompt"].iloc[16] == f"[placeholder sorry_bench question 17 (category {pairs['category'].iloc[16]})]"


def test_sorry_bench_placeholder_reads_ids_from_the_reference_file(tmp_path, monkeypatch):
    """The reference's ids happen to be the synthesized ones (1..440, 10 per category); a stand-in
    reference file with other ids shows which of the two the placeholder used."""
    import dataclasses

    from harness.run.pins import sha256_file

    source_name = "sorry_bench_reference_judgments"
    source = DATASETS[source_name]
    target = tmp_path / source.local
    target.parent.mkdir(parents=True)
    rows = ["question_id,condition,category,score", "12,baseline,7,0", "5,baseline,3,1", "9,edited,7,1", "5,edited,3,0"]
    target.write_text("\n".join(rows) + "\n")
    monkeypatch.setitem(DATASETS, source_name, dataclasses.replace(source, sha256=sha256_file(target)))
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    assert is_available(source_name)
    frame = placeholder_frame("sorry_bench", n=4)
    assert frame["question_id"].tolist() == [5, 9, 12, 13] and frame["category"].tolist()[:3] == ["3", "7", "7"]


def test_sorry_bench_placeholder_without_the_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    frame = placeholder_frame("sorry_bench")
    assert len(frame) == 440 and frame["question_id"].tolist() == list(range(1, 441))
    assert frame.groupby("category").size().eq(10).all() and frame["category"].nunique() == 44
    assert frame["prompt"].iloc[16] == "[placeholder sorry_bench question 17 (category 2)]"


def test_no_placeholder_for_results():
    with pytest.raises(DatasetError, match="results, not prompts"):
        placeholder_frame("sorry_bench_reference_judgments")
    with pytest.raises(DatasetError, match="unknown dataset"):
        placeholder_frame("nope")
