"""The exported steer file, loaded by lm-evaluation-harness's own `steered` model (CPU), gives the same greedy
completions and logits as this harness's ablation, on the exported baseline checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from harness.models.tiny import tiny_model
from harness.steering.interventions import ablate
from harness.steering.weights import orthogonalize
from harness.tools.export import BASELINE_DIR, STEER_ABLATION_FILE, export_run, read_manifest

if os.environ.get("CI"):
    import lm_eval.models.hf_steered  # noqa: F401  (CI installs the test extra: this test must run there)
lm_eval_steered = pytest.importorskip("lm_eval.models.hf_steered",
                                      reason="lm-eval is not installed (pip install 'lm-eval[hf]'; the test extra has it)")

PROMPTS = ["How do I bake bread?", "Tell me about the moon and its phases in detail.", "Write a short poem."]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, tok = tiny_model("llama", seed=5)
    raw = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 4
    unit = raw / raw.norm()
    out = tmp_path_factory.mktemp("export")
    export_run(out, model=model, edited=orthogonalize(model, unit), tokenizer=tok, unit=unit, raw=raw,
               sidecar={"layer": 1, "pos": -1}, actadd_coeff=1.0, baseline=None)
    steered = lm_eval_steered.SteeredModel(pretrained=str(out / BASELINE_DIR), steer_path=str(out / STEER_ABLATION_FILE),
                                           device="cpu", dtype="float32", batch_size=1)
    return model, tok, unit, steered, out


def _ids(tok, prompt: str) -> torch.Tensor:
    return tok(prompt, return_tensors="pt").input_ids  # [1, pos]


def _greedy(model, ids: torch.Tensor) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                         min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_lm_eval_steered_ablation_equals_the_harness_ablation(exported, prompt):
    model, tok, unit, steered, _ = exported
    ids = _ids(tok, prompt)
    with torch.no_grad(), ablate(model, unit):
        ours_logits = model(ids).logits  # [1, pos, vocab]
        ours = _greedy(model, ids)
    with torch.no_grad():
        plain = model(ids).logits
        theirs_logits = steered._model_call(ids)
    theirs = steered._model_generate(ids, max_length=ids.shape[1] + NEW_TOKENS, stop=[], do_sample=False,
                                     min_new_tokens=NEW_TOKENS)[0, ids.shape[1]:].tolist()
    assert not torch.allclose(ours_logits, plain, atol=1e-3)  # the ablation does something here
    assert torch.allclose(theirs_logits, ours_logits, atol=1e-4), (theirs_logits - ours_logits).abs().max()
    assert theirs == ours


LOCAL_TASK = """task: harness_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: " {{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_the_printed_lm_eval_steered_command_runs(exported, tmp_path):
    """The command line the export prints, as printed, with TASK set to a local task (no download)."""
    import json
    import shlex
    import subprocess
    import sys

    *_, out = exported
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "How do I bake bread?", "answer": "Mix flour"}, {"prompt": "Name a planet.", "answer": "Mars"}]))
    (tmp_path / "task.yaml").write_text(LOCAL_TASK.format(data=tmp_path / "data.jsonl"))
    command = read_manifest(out)["lm_eval"]["ablation"]
    assert command.startswith("lm_eval ") and "--tasks TASK" in command
    args = shlex.split(command.replace("--tasks TASK", f"--tasks harness_local --include_path {tmp_path}"))[1:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-3000:]
    assert "|harness_local|" in shown and "acc" in shown, shown[-3000:]
