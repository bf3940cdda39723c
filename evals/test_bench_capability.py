"""Benchmark of MMLU shared-prefix scoring (issue 23) on the CPU: the demo model on the MMLU stand-in with its dev
shots, each subject's shared prefix computed once, against one forward pass per whole prompt. Prints both times,
the share of prompt tokens that are unique, and the agreement of the two paths; the GPU figures are the `speed`
engineer's (reports/bench/). Run: pytest -m bench evals/test_bench_capability.py -p no:xdist -s
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.bench


def test_shared_prefix_speedup_on_the_demo_model():
    from harness.config import DatasetRef, load_experiment
    from harness.data.capability_sets import questions_from_frame
    from harness.data.loading import load_dataset, shots_ref
    from harness.measures.capability import few_shot_sets, mmlu_prompt, multiple_choice_accuracy
    from harness.models.loading import load_model

    model, tok = load_model(load_experiment("demo").model, device="cpu")
    questions = questions_from_frame(load_dataset("mmlu_demo"), with_subject=True)
    pool = questions_from_frame(load_dataset(shots_ref(DatasetRef(name="mmlu_demo"))), with_subject=True)
    shots = few_shot_sets(questions, pool, 5, same_subject=True)
    timings, results = {}, {}
    for shared in (False, True):
        start = time.perf_counter()
        results[shared] = multiple_choice_accuracy(model, tok, questions, n_shot=5, shot_sets=shots, batch_size=8,
                                                   progress=False, shared_prefix=shared)
        timings[shared] = time.perf_counter() - start
    total = sum(len(tok(mmlu_prompt(q, s))["input_ids"]) for q, s in zip(questions, shots))
    prefixes = {q["subject"]: len(tok(mmlu_prompt(dict(q, question="", choices=["x", "y"]), s))["input_ids"])
                for q, s in zip(questions, shots)}
    per_subject = {q["subject"]: 0 for q in questions}
    for q in questions:
        per_subject[q["subject"]] += 1
    unique = total - sum(prefixes[s] * (n - 1) for s, n in per_subject.items())
    gap = max(float((torch.tensor(a) - torch.tensor(b)).abs().max())
              for a, b in zip(results[True]["logprobs"], results[False]["logprobs"]))
    print(f"\nplain {timings[False]:.2f} s, shared prefix {timings[True]:.2f} s "
          f"({timings[False] / timings[True]:.2f}x); {total} prompt tokens, about {unique} unique; "
          f"same answers: {results[True]['predicted'] == results[False]['predicted']}, max |logprob gap| {gap:.2e}")
    assert results[True]["predicted"] == results[False]["predicted"]
