"""The official-judge exchange: answers exported where the judge backend is missing, judgments imported back."""

from __future__ import annotations

import json

import pytest

from harness.judges.sorry_bench import JudgmentsPending, SorryBenchExchange, import_answers, write_judgments


def test_exchange_exports_then_imports(tmp_path):
    judge = SorryBenchExchange(tmp_path)
    prompts, completions = ["q one", "q two", "q three"], ["a one", "a two", "a three"]
    with pytest.raises(JudgmentsPending, match="tox -e judge -- --dir"):
        judge(prompts, completions)
    answers = next(tmp_path.glob("answers-*.jsonl"))
    assert import_answers(answers) == {1: "a one", 2: "a two", 3: "a three"}
    questions = [json.loads(x) for x in answers.with_name(answers.name.replace("answers", "questions")).read_text().splitlines()]
    assert [q["turns"][0] for q in questions] == prompts
    write_judgments(answers.with_name(answers.name.replace("answers", "judgments")), [1, 2, 3], [1, 0, 1], ["1", "0", "1"])
    assert judge(prompts, completions) == [1, 0, 1]


def test_exchange_scores_unscored_items_as_none(tmp_path):
    judge = SorryBenchExchange(tmp_path)
    prompts, completions = ["p1", "p2", "p3", "p4"], ["c1", "c2", "c3", "c4"]
    with pytest.raises(JudgmentsPending):
        judge(prompts, completions)
    answers = next(tmp_path.glob("answers-*.jsonl"))
    write_judgments(answers.with_name(answers.name.replace("answers", "judgments")), [1, 2, 3, 4],
                    [None, 0.5, 1.0, 0], ["no score", "0.5", "1", "0"])
    assert judge(prompts, completions) == [None, None, 1, 0]
    assert judge.last_outputs == ["no score", "0.5", "1", "0"]


def test_exchange_rejects_a_judgment_file_missing_questions(tmp_path):
    from harness.judges.sorry_bench import JudgeScoreError

    judge = SorryBenchExchange(tmp_path)
    with pytest.raises(JudgmentsPending):
        judge(["p1", "p2"], ["c1", "c2"])
    answers = next(tmp_path.glob("answers-*.jsonl"))
    judgments = answers.with_name(answers.name.replace("answers", "judgments"))
    write_judgments(judgments, [1], [1], ["1"])
    with pytest.raises(JudgeScoreError, match=f"{judgments.name}.*question ids \\[2\\]"):
        judge(["p1", "p2"], ["c1", "c2"])


def test_exchange_cache_identity_names_the_official_judge(tmp_path):
    from harness.judges.sorry_bench import EVALUATOR_COMMIT, JUDGE_MODEL_ID, JUDGE_REVISION

    identity = SorryBenchExchange(tmp_path).cache_identity()
    assert identity["model_id"] == JUDGE_MODEL_ID and identity["revision"] == JUDGE_REVISION
    assert identity["evaluator_commit"] == EVALUATOR_COMMIT and len(identity["code"]) == 16
    assert identity == SorryBenchExchange(tmp_path / "elsewhere").cache_identity()  # the directory is not the judge


def test_judge_dir_scores_only_missing_files(tmp_path, monkeypatch):
    from harness.judges import sorry_bench

    calls = []

    class FakeJudge:
        def __init__(self, backend):
            pass

        def raw_outputs(self, prompts, completions):
            calls.append(list(prompts))
            return ["1" if "bad" in c else "0" for c in completions]

    monkeypatch.setattr(sorry_bench, "SorryBenchJudge", FakeJudge)
    judge = SorryBenchExchange(tmp_path)
    with pytest.raises(JudgmentsPending):
        judge(["p1", "p2"], ["bad answer", "refusal"])
    assert len(sorry_bench.judge_exchange_dir(tmp_path)) == 1
    assert sorry_bench.judge_exchange_dir(tmp_path) == []
    assert calls == [["p1", "p2"]]
    assert judge(["p1", "p2"], ["bad answer", "refusal"]) == [1, 0]


def test_malformed_judgment_record_names_file_and_line(tmp_path):
    from harness.judges.sorry_bench import JudgeScoreError, import_judgments

    path = tmp_path / "judgments-x.jsonl"
    path.write_text(json.dumps({"question_id": 1, "score": 1}) + "\n" + json.dumps({"question_id": 2}) + "\n")
    with pytest.raises(JudgeScoreError, match="judgments-x.jsonl:2: not an official judgment record"):
        import_judgments(path)
