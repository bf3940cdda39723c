"""Coherence measures: the log-probability of a completion under a model, exact against an unbatched
computation on a tiny random model; the repetition share; the rule and its aggregates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.measures.coherence import (
    CoherenceRule,
    calibrate_rule,
    completion_logprobs,
    repeated_ngram_share,
    score_completions,
    summarize,
)
from harness.models.tiny import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _one_by_one(model, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # [seq-1, vocab]
    targets = ids[0, 1:]
    token_lp = logp[torch.arange(len(targets)), targets]
    return float(token_lp[len(prompt) - 1 :].mean())


def test_logprob_batched_left_padded_equals_one_by_one(llama):
    model, tok = llama
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    completions = [[20, 21, 22, 23], [24], [25, 26, 27, 28, 29, 30, 31]]
    got = completion_logprobs(model, prompts, completions, pad_id=0, batch_size=2)
    want = [_one_by_one(model, p, c) for p, c in zip(prompts, completions)]
    assert got == pytest.approx(want, abs=1e-4)


def test_logprob_in_one_row_chunks_equals_one_by_one(llama, monkeypatch):
    """A large vocabulary forces one row per log-softmax chunk; the picked values must not move."""
    from harness.models import logits

    monkeypatch.setattr(logits, "LOGPROB_ELEMENTS", 1)
    model, _ = llama
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16]]
    completions = [[20, 21, 22, 23], [24], [25, 26, 27, 28, 29, 30, 31], []]
    got = completion_logprobs(model, prompts, completions, pad_id=0, batch_size=4)
    want = [_one_by_one(model, p, c) for p, c in zip(prompts[:3], completions[:3])]
    assert got[:3] == pytest.approx(want, abs=1e-4) and math.isnan(got[3])


def test_logits_over_budget_split_the_forward_and_values_do_not_move(llama, monkeypatch):
    """A batch whose [rows, positions, vocab] logits pass LOGITS_BYTES goes through in forwards of fewer rows (a
    256k vocabulary over 1,000-token completions asked 30 GiB); the values are those of one forward per prompt."""
    from harness.measures import coherence

    model, _ = llama
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16]]
    completions = [[20, 21, 22, 23], [24], [25, 26, 27, 28, 29, 30, 31], []]
    widths = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: widths.append(k["input_ids"].shape[0]) or real(*a, **k))
    head = model.get_output_embeddings().weight  # [vocab, d_model]
    per_row = 8 * head.shape[0] * head.element_size()
    monkeypatch.setattr(coherence, "LOGITS_BYTES", 2 * per_row)  # two rows of 7 + 1 positions fit
    got = completion_logprobs(model, prompts, completions, pad_id=0, batch_size=4)
    want = [_one_by_one(model, p, c) for p, c in zip(prompts[:3], completions[:3])]
    assert got[:3] == pytest.approx(want, abs=1e-4) and math.isnan(got[3])
    assert max(widths) <= 2 and len(widths) >= 2


def test_completion_without_prompt_scores_from_its_second_token(llama):
    """Nothing predicts a row's first token: a completion that starts the row is scored from its second."""
    model, _ = llama
    got = completion_logprobs(model, [[]], [[20, 21, 22]], pad_id=0)
    ids = torch.tensor([[20, 21, 22]])
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    assert got[0] == pytest.approx(float((logp[0, 21] + logp[1, 22]) / 2), abs=1e-5)


def test_logprob_scores_only_the_completion(llama):
    """The prompt's own tokens never count: changing the prompt's first token changes context, not the count."""
    model, tok = llama
    got = completion_logprobs(model, [[5, 6, 7]], [[20, 21]], pad_id=0)
    ids = torch.tensor([[5, 6, 7, 20, 21]])
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    assert got[0] == pytest.approx(float((logp[2, 20] + logp[3, 21]) / 2), abs=1e-5)


def test_empty_completion_is_nan_and_not_coherent(llama):
    model, tok = llama
    got = completion_logprobs(model, [[5, 6], [7, 8]], [[], [9]], pad_id=0)
    assert math.isnan(got[0]) and not math.isnan(got[1])
    rule = CoherenceRule(min_logprob=-100.0, max_repetition=1.0, calibrated_on="x", n=3)
    assert not rule.coherent(got[0], float("nan"))


def test_mismatched_lengths_raise(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        completion_logprobs(model, [[1], [2]], [[3]], pad_id=0)


def test_score_completions_uses_the_chat_prompt(llama):
    model, tok = llama
    scored = score_completions(model, tok, ["say hello", "count"], ["hello there", "one two one two one two"])
    assert len(scored["logprob"]) == 2 and all(x < 0 for x in scored["logprob"])
    bare = score_completions(model, tok, ["count"], ["one two one two one two"])
    assert bare["logprob"][0] == pytest.approx(scored["logprob"][1], abs=1e-4)
    assert scored["repetition"][1] > scored["repetition"][0]


def test_repetition_share_counts_repeated_ngrams():
    assert repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0
    assert repeated_ngram_share([1, 2, 3, 1, 2, 3, 1, 2, 3]) == pytest.approx(4 / 7)
    assert repeated_ngram_share([7] * 10) == pytest.approx(7 / 8)
    assert math.isnan(repeated_ngram_share([1, 2]))


def test_rule_is_calibrated_by_quantiles_of_the_baseline():
    logprobs = [-float(i) / 10 for i in range(1, 101)]  # -0.1 .. -10
    reps = [i / 100 for i in range(100)]
    rule = calibrate_rule(logprobs, reps, "baseline/harmless_val", quantile=0.05)
    assert rule.min_logprob == pytest.approx(-9.505) and rule.max_repetition == pytest.approx(0.9405)
    assert rule.coherent(-1.0, 0.1) and not rule.coherent(-9.6, 0.1) and not rule.coherent(-1.0, 0.95)
    assert rule.coherent(-1.0, float("nan"))  # too short to repeat: judged on log-probability
    with pytest.raises(ValueError, match="no non-empty completion in v"):
        calibrate_rule([float("nan")], [float("nan")], "v")


def test_summary_separates_coherent_from_incoherent_compliance():
    rule = CoherenceRule(min_logprob=-3.0, max_repetition=0.5, calibrated_on="v", n=3)
    logprobs = [-1.0, -5.0, -1.0, -1.0, float("nan")]
    reps = [0.0, 0.0, 0.9, 0.1, float("nan")]
    scores = [1, 1, 1, 0, None]  # coherent compliance, gibberish, a loop, a coherent refusal, unjudged
    s = summarize(logprobs, reps, scores, rule)
    assert (s["n"], s["empty"], s["complied"], s["coherent"], s["complied_coherent"], s["complied_incoherent"]) \
        == (5, 1, 3, 2, 1, 2)
    assert s["complied_coherent_share"] == pytest.approx(0.2) and s["mean_logprob"] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="one per completion"):
        summarize([-1.0], [0.0, 0.0], [1], rule)
