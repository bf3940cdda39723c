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


def test_exchange_rejects_unscored_items(tmp_path):
    from harness.judges.sorry_bench import JudgeScoreError

    judge = SorryBenchExchange(tmp_path)
    with pytest.raises(JudgmentsPending):
        judge(["p"], ["c"])
    answers = next(tmp_path.glob("answers-*.jsonl"))
    write_judgments(answers.with_name(answers.name.replace("answers", "judgments")), [1], [None], ["no score"])
    with pytest.raises(JudgeScoreError, match="question ids \\[1\\]"):
        judge(["p"], ["c"])


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
