"""The whole claims pipeline on a tiny random-init model saved to disk: it runs end to end on the CPU,
writes its report with no harmful completion in it, and two runs give identical results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals.test_config import STUDY_RECIPE
from harness.models.tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent

TOML = """
description = "tiny random-init llama: exercises the claims machinery, proves nothing about refusal"
seed = 7

[model]
id = "tiny-llama"
path = "{path}"
dtype = "float32"
device = "cpu"

[data.construction]
dataset = {{ name = "demo_policy_prompts" }}
fit_areas = 8

[direction]
layer = 1
pos = -1
[direction.selection]
positions = [-1]
max_layer_fraction = 1.0
kl_max = 1e9
induce_min = -1e9

[generation]
# Long enough that completions reach the leak check's minimum length (harness.report.write.MIN_LEAK_CHARS).
max_new_tokens = 16
batch_size = 8

[stability]
budgets = [2]
repeats = 2

[capability]
n_shot = 1
kl_prompts = 8

# Permissive bounds: this run checks the machinery, not a model.
[thresholds]
baseline_refusal_harmful_min = 0.0
baseline_refusal_harmless_max = 1.0
refusal_drop_pp_min = {{ ablation = -100.0, weight_edit = -100.0, actadd = -100.0 }}
mcnemar_alpha = 1.01
stability_cosine_min = -1.0
harmless_refusal_max = 1.0
harmless_kl_max = 1e9
capability_max_drop = 1.0
ce_max_delta = 1e9
edit_logit_gap_max = 1e-3
selection_score_drop_min = -1e9
fixed_direction_cosine_min = -1.0
methods_drop_pp_min = {{ diff_in_means = -100.0, inlp = -100.0 }}
methods_kl_max = 1e9
edit_leak_max = 1.0

# A random model complies with everything under every condition, so compliance cannot rise.
[known_failures]
"test_mcnemar_significant[ablation]" = {{ threshold = "mcnemar_alpha", reason = "random weights: compliance +0.0 pp" }}
"test_mcnemar_significant[weight_edit]" = {{ threshold = "mcnemar_alpha", reason = "random weights: compliance +0.0 pp" }}
"test_mcnemar_significant[actadd]" = {{ threshold = "mcnemar_alpha", reason = "random weights: compliance +0.0 pp" }}
"""


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model("llama", seed=5)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    path = root / "tiny.toml"
    path.write_text(TOML.format(path=root / "model"))
    return path


def run_claims(toml: Path, work: Path, *args: str, limit: int = 8, **extra_env: str) -> tuple[int, str]:
    """(exit code, output) of a claim run (`-m gpu`) of `toml` in a subprocess, its cache and reports under `work`;
    `args` go to pytest (e.g. `-k`)."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(work / "cache"), "HARNESS_REPORTS_DIR": str(work / "reports"),
           "PYTHONHASHSEED": "0", **extra_env}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--experiment", str(toml), "--limit", str(limit), "-q",
         "-p", "no:xdist", "-p", "no:cacheprovider", "--snapshot-update", *args, "evals/test_claims.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def two_runs(tiny_experiment, tmp_path_factory):
    runs = []
    for name in ("first", "second"):
        work = tmp_path_factory.mktemp(name)
        code, out = run_claims(tiny_experiment, work)
        runs.append((code, out, work / "reports" / "tiny-limit8"))
    return runs


def test_claims_run_end_to_end_on_a_tiny_model(two_runs):
    code, out, report_dir = two_runs[0]
    assert code == 0, out[-4000:]
    assert "error" not in out.splitlines()[-1], out[-2000:]
    for name in ("results.json", "report.md", "selection.png", "stability.png", "categories.png"):
        assert (report_dir / name).is_file(), f"{name} missing from {report_dir}"
    assert f"report: {report_dir / 'report.md'}" in out


def test_report_shows_every_condition_and_names_what_it_measures(two_runs):
    """Issue 25's reader: INLP and ActAdd in every per-condition table, coherence per condition, policy areas up
    front, fidelity rows named as residual-stream points (n_layers block inputs + the final residual), stability
    draws counted as subsets (capability sets with their size: test_rehearsal, where an experiment names them)."""
    import pandas as pd

    code, out, report_dir = two_runs[0]
    assert code == 0, out[-4000:]
    md = (report_dir / "report.md").read_text()

    def section(title: str) -> str:
        return md.split(f"## {title}")[1].split("\n## ")[0]

    conditions = ("baseline", "ablation", "weight_edit", "actadd", "inlp")
    for cond in conditions:
        for which in ("harmful", "harmless"):
            assert f"| {cond} | substring (refusal) | {which} |" in section("Refusal rate by condition"), (cond, which)
            assert f"| {cond} | {which} |" in section("Coherence by condition"), (cond, which)
        assert f"| {cond} | harmful | 8 | n/a |" not in section("Truncation and late refusals"), cond
    assert set(pd.read_csv(report_dir / "categories.csv")["condition"]) == set(conditions)
    assert md.index("- **policy areas fit on**") < md.index("## Claims")
    fidelity = [line for line in section("Edit fidelity").splitlines() if line.startswith("| input of block")]
    assert fidelity and fidelity[0].startswith("| input of block 0 |")
    assert f"| final residual (after block {len(fidelity) - 1}) |" in section("Edit fidelity")
    assert "| layer |" not in section("Edit fidelity")
    assert "draws" in section("Direction stability") and "distinct subsets" in section("Direction stability")


def test_same_seed_same_results(two_runs):
    (_, _, first), (_, _, second) = two_runs
    assert json.loads((first / "results.json").read_text()) == json.loads((second / "results.json").read_text())
    assert (first / "results.json").read_bytes() == (second / "results.json").read_bytes()


def _harmful_completions(cache) -> list[str]:
    texts = []
    for part in cache.glob("completions/*/harmful/*/part-*.json"):
        texts += [t.strip() for t in json.loads(part.read_text()).values()]
    return texts


def test_no_harmful_completion_in_reports(two_runs):
    from harness.report.write import MIN_LEAK_CHARS, harmful_text_in

    _, _, report_dir = two_runs[0]
    cache = report_dir.parent.parent / "cache"
    assert harmful_text_in(report_dir, cache) == []
    long_enough = [t for t in _harmful_completions(cache) if len(t) >= MIN_LEAK_CHARS]
    assert long_enough, "no cached harmful completion is long enough for the leak check to look for it"


def test_a_planted_leak_fails_the_run(tiny_experiment, tmp_path):
    """A completion to a harmful prompt anywhere under the run's report folder fails the run and is named."""
    from harness.report.write import MIN_LEAK_CHARS

    code, out = run_claims(tiny_experiment, tmp_path)
    assert code == 0, out[-3000:]
    leaked = next(t for t in _harmful_completions(tmp_path / "cache") if len(t) >= MIN_LEAK_CHARS)
    (tmp_path / "reports" / "tiny-limit8" / "notes.md").write_text(f"an example answer: {leaked}\n")
    code, out = run_claims(tiny_experiment, tmp_path)
    assert code != 0 and "ERROR: a completion to a harmful prompt is in" in out and "notes.md" in out, out[-3000:]


def test_tight_bounds_fail_the_claims_that_guard_them(tiny_experiment, two_runs, tmp_path):
    """The same run with bounds the tiny model cannot meet: each claim fails on the bound it guards, named in its
    message (an exact fp32 edit still leaves ~1e-7 of r-hat; ablation still moves harmless next-token KL)."""
    import shutil

    tight = tmp_path / "tiny.toml"  # same experiment name as the cached runs: only the bounds differ
    tight.write_text(tiny_experiment.read_text()
                     .replace("edit_leak_max = 1.0", "edit_leak_max = 1e-12")
                     .replace("methods_kl_max = 1e9", "methods_kl_max = 1e-12"))
    work = tmp_path / "work"
    shutil.copytree(two_runs[0][2].parent.parent / "cache", work / "cache")
    code, out = run_claims(tight, work)
    assert code != 0
    assert "[edit_leak_max]" in out and "FAILED evals/test_claims.py::test_edit_fidelity" in out, out[-4000:]
    assert "[methods_kl_max]" in out and "FAILED evals/test_claims.py::test_methods_compared[diff_in_means]" in out


FAKE_VLLM = '''"""A stand-in for vLLM in tests: the same calls, greedy decoding by transformers from a saved directory."""
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

LOADED = []


class SamplingParams:
    def __init__(self, temperature=0.0, max_tokens=16, skip_special_tokens=True):
        assert temperature == 0.0
        self.max_tokens, self.skip_special_tokens = max_tokens, skip_special_tokens


class LLM:
    def __init__(self, model, tensor_parallel_size=1, seed=0):
        LOADED.append(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def get_tokenizer(self):
        return self.tokenizer

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=False):
        outs = []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            new = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.eos_token_id)[0, ids.shape[1]:]
            text = self.tokenizer.decode(new, skip_special_tokens=params.skip_special_tokens)
            ids_out = new.tolist()
            stopped = self.tokenizer.eos_token_id in ids_out
            reason = "stop" if stopped or len(ids_out) < params.max_tokens else "length"
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=ids_out, finish_reason=reason)]))
        return outs
'''


def test_vllm_runs_ablation_as_the_exact_edit_and_the_report_says_so(tiny_experiment, tmp_path):
    """Under an engine without hooks the ablation condition runs as the saved weight-edited checkpoint
    (exact for Llama), hook conditions fall back to transformers, and the report names each path."""
    (tmp_path / "fake" / "vllm").mkdir(parents=True)
    (tmp_path / "fake" / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    toml = tmp_path / "tiny_vllm.toml"
    toml.write_text(tiny_experiment.read_text().replace("[generation]\n", '[generation]\nbackend = "vllm"\n'))
    fake_path = os.pathsep.join(p for p in (str(tmp_path / "fake"), os.environ.get("PYTHONPATH")) if p)
    code, out = run_claims(toml, tmp_path, PYTHONPATH=fake_path)
    assert code == 0, out[-4000:]
    report = (tmp_path / "reports" / "tiny_vllm-limit8" / "report.md").read_text()
    section = report.split("## How each condition was generated")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert "weight-edited checkpoint" in rows["ablation"], report
    assert "vLLM on the saved checkpoint" in rows["weight_edit"], report
    assert "transformers backend, with forward hooks (vLLM cannot run hooks)" in rows["actadd"], report
    claims = json.loads((tmp_path / "reports" / "tiny_vllm-limit8" / "results.json").read_text())["claims"]
    assert claims["test_refusal_drop[ablation]"] == claims["test_refusal_drop[weight_edit]"]


PER_LAYER_TOML = """
description = "tiny random-init Gemma-4 with the per-layer study recipe: exercises the machinery, proves nothing"
seed = 7

[model]
id = "tiny-gemma4"
path = "{path}"
dtype = "float32"
device = "cpu"

[data.construction]
dataset = {{ name = "demo_policy_prompts" }}
fit_areas = 8

""" + STUDY_RECIPE + """budgets = [2, 4]
repeats = 2

[generation]
max_new_tokens = 16
batch_size = 8

[capability]
n_shot = 1
kl_prompts = 8

# Permissive bounds but for stability: random weights give per-layer cosines far below 0.999, so that claim must fail.
[thresholds]
baseline_refusal_harmful_min = 0.0
baseline_refusal_harmless_max = 1.0
refusal_drop_pp_min = {{ weight_edit = -100.0 }}
mcnemar_alpha = 1.01
stability_cosine_min = 0.999
harmless_refusal_max = 1.0
harmless_kl_max = 1e9
capability_max_drop = 1.0
ce_max_delta = 1e9

[known_failures]
"test_mcnemar_significant[weight_edit]" = {{ threshold = "mcnemar_alpha", reason = "random weights: compliance +0.0 pp" }}
"""


def test_per_layer_recipe_runs_its_claims_and_its_stability_bound_can_fail(tmp_path):
    """The per-layer recipe end to end on a tiny Gemma-4: per-layer directions and an o_proj/down_proj-only edit
    in the report, the study's table columns, no selection or fidelity claim, and a stability bound the random
    model misses fails the claim with its figure."""
    model, tokenizer = tiny_model("gemma4", seed=5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    toml = tmp_path / "tiny-per-layer.toml"
    toml.write_text(PER_LAYER_TOML.format(path=tmp_path / "model"))
    code, out = run_claims(toml, tmp_path)
    assert code == 1, out[-4000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and all("test_direction_stability" in line for line in failed), out[-4000:]
    assert "median per-layer cosine" in out and "< 0.999" in out
    assert "test_direction_selected" not in out and "test_edit_fidelity" not in out
    report_dir = tmp_path / "reports" / "tiny-per-layer-limit8"
    report = (report_dir / "report.md").read_text()
    assert "one direction per layer (3 layers), position -1, read at each layer's output" in report
    assert ("norm-preserving weight orthogonalization against each layer's own direction; changed: "
            "mlp.down_proj.weight (3 layers), self_attn.o_proj.weight (3 layers); embeddings and read-out unchanged"
            ) in report
    header = (report_dir / "category_generalization_table.csv").read_text().splitlines()[0]
    assert header == ("used_policy_areas,held_out_policy_areas,used_prompts,held_out_prompts,repeats,cosine_reference,"
                      "median_layer_cosine_to_heldout,p10_layer_cosine_to_heldout")
