"""Every experiment rehearsed end to end on random weights of its pinned architecture, with its own
tokenizer and chat template (`--rehearse tiny`): a mis-wired TOML fails here, before anyone pays for a pod.

A rehearsal asserts no claim threshold. What it must show is what the real run needs: every stage ran,
every dataset, judge and condition the experiment names was used, a second rehearsal recomputes nothing,
the report is written where the README says, and no completion to a harmful prompt is in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import available_experiments, load_experiment

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("activations", "selection", "completions", "judgments", "logits", "capability", "coherence")
# Per-layer directions: per-prompt captures at every layer, no mean activations and no selection sweep.
PER_LAYER_STAGES = ("prompt_activations", "construction_acts", "completions", "judgments", "logits", "capability",
                    "coherence")


def _run(name: str, work: Path, reports: Path) -> tuple[int, str]:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(work / "cache"), "HARNESS_REPORTS_DIR": str(reports),
           "PYTHONHASHSEED": "0"}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One thread per rehearsal while xdist runs a worker per core: two threads each oversubscribe the cores.
        env.setdefault("HARNESS_NUM_THREADS", "1")
    env.setdefault("HARNESS_TOKENIZERS_DIR", str(ROOT.parent / "shared" / "tokenizers"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--experiment", name, "--rehearse", "tiny", "-q",
         "-p", "no:xdist", "-p", "no:cacheprovider", "-p", "no:randomly", "evals/test_claims.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rehearsals(tmp_path_factory):
    """name -> ((first run, second run), cache), each run (exit code, output, report dir); one cache for both,
    a report folder each; run lazily per experiment."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            work = tmp_path_factory.mktemp(name)
            runs = []
            for i in range(2):
                code, out = _run(name, work, work / f"reports{i}")
                runs.append((code, out, work / f"reports{i}" / f"{name}-rehearse-tiny"))
            done[name] = (runs, work / "cache")
        return done[name]

    return get


def _expected(name: str) -> dict[str, set[str]]:
    """The datasets, judges and conditions the experiment's TOML names."""
    exp = load_experiment(name)
    d = exp.data
    refs = [d.harmful_train, d.harmless_train, d.harmful_val, d.harmless_val, d.harmful_eval, d.harmless_eval,
            d.benign_task_eval, exp.capability.mmlu, exp.capability.arc_challenge, exp.capability.text]
    datasets = {r.name for r in refs if r is not None} | {r.system_prompt for r in refs if r and r.system_prompt}
    if d.construction is not None:
        datasets.add(d.construction.dataset.name)
    if exp.reference is not None:
        datasets.add(exp.reference.judgments.name)
    return {"datasets": datasets, "judges": set(exp.judges.names()),
            "conditions": {"baseline", *exp.intervention.conditions,
                           *(exp.intervention.grid.cells() if exp.intervention.grid else [])}}


def _base(name: str) -> str:
    """`sorry_bench (placeholder)`, `policy_prompts, held-out areas` -> the registry name."""
    return name.split(" (")[0].split(",")[0]


@pytest.mark.parametrize("name", available_experiments())
def test_rehearsal_runs_every_stage_and_uses_everything_named(name, rehearsals):
    (first, second), cache = rehearsals(name)
    code, out, report_dir = first
    assert code == 0, out[-6000:]
    results = json.loads((report_dir / "results.json").read_text())
    assert results["meta"]["rehearsal"] == "tiny" and (report_dir / "report.md").is_file()
    assert "REHEARSAL (tiny)" in results["meta"]["model"]
    outcomes = {c: results["claims"][c] for c in results["claims"]}
    assert outcomes, "no claim ran"
    report = (report_dir / "report.md").read_text()
    assert "| rehearsed |" in report and "failed" not in report.split("## Claims")[1].split("\n## ")[0]
    used = {kind: {_base(n) for n in names} for kind, names in results["meta"]["used"].items()}
    for kind, names in _expected(name).items():
        missing = names - used.get(kind, set())
        assert not missing, f"{name}: {kind} named in the TOML but used by no claim: {sorted(missing)}"
    computed = json.loads((report_dir / "stages.json").read_text())["computed"]
    reasoning = results["setup"]["reasoning"].values()
    answered = sum(s["n"] - s["no_answer"] for s in reasoning)
    # Random weights may never leave a reasoning channel (gpt-oss): then nothing is there to judge.
    stages = PER_LAYER_STAGES if load_experiment(name).direction.per_layer else STAGES
    for stage in stages if answered else [s for s in stages if s != "judgments"]:
        assert computed.get(stage), f"{name}: stage {stage!r} computed nothing on a cold cache: {computed}"
    # Each judge scores the prompt sets it reads and no other (a harm judge skips harmless prompts where the study's
    # recipe does, e.g. gemma-2b-it's Llama Guard 2; a fulfilment judge never reads them).
    judged = _judged_pairs(report_dir / "judgments.csv")
    cfg = load_experiment(name).judges
    unread = sorted(pair for pair in judged if not cfg.reads(pair[1], pair[0]))
    assert not unread, f"{name}: judges scored prompt sets the experiment's judges do not read: {unread}"
    if answered:
        missing = sorted({("harmful", j) for j in cfg.names()} - judged)
        assert not missing, f"{name}: judges that read harmful prompts scored none: {missing}"
    chat = results["setup"]["chat"]
    assert chat["refusal_token_ids"] and chat["date"]
    if "## Capability" in report:  # each set named with its size, not as the benchmark it stands in for
        capability = report.split("## Capability")[1].split("\n## ")[0]
        assert "| set | size |" in capability and (" questions |" in capability or " texts |" in capability)


def _judged_pairs(path: Path) -> set[tuple[str, str]]:
    """(prompt set, judge) of every score in a run's judgments.csv."""
    import csv

    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        return {(row["set"], row["judge"]) for row in csv.DictReader(f)}


@pytest.mark.parametrize("name", available_experiments())
def test_second_rehearsal_recomputes_nothing_and_leaks_nothing(name, rehearsals):
    from harness.report.write import harmful_text_in

    (first, second), cache = rehearsals(name)
    code, out, report_dir = second
    assert code == 0, out[-6000:]
    stages = json.loads((report_dir / "stages.json").read_text())
    assert stages["computed"] == {}, f"{name}: a warm rehearsal recomputed {stages['computed']}"
    assert stages["reused"], "the warm rehearsal reused nothing"
    # Compared as text: random weights leave NaN rates, and NaN != NaN as floats.
    assert (first[2] / "results.json").read_text() == (report_dir / "results.json").read_text()
    assert harmful_text_in(report_dir, cache) == []


def test_gemma4_rehearsal_shows_the_studys_recipe(rehearsals):
    """gemma-4-e4b-it runs the Gemma-4 study's recipe: per-layer directions read at each layer's output, an edit
    that changed only o_proj and down_proj of every layer, the study's stability table, no selection sweep."""
    (first, _), _ = rehearsals("gemma-4-e4b-it")
    code, out, report_dir = first
    assert code == 0, out[-6000:]
    report = (report_dir / "report.md").read_text()
    results = json.loads((report_dir / "results.json").read_text())
    assert results["meta"]["direction"].startswith("one direction per layer (")
    assert "read at each layer's output" in results["meta"]["direction"]
    note = results["setup"]["generation_paths"]["weight_edit"]["condition"]
    changed = note.split("changed: ")[1].split(";")[0]
    assert [part.split(" (")[0] for part in changed.split(", ")] == ["mlp.down_proj.weight", "self_attn.o_proj.weight"]
    assert note.endswith("embeddings and read-out unchanged") and note in report
    assert "test_direction_selected" not in results["claims"] and "## Direction selection sweep" not in report
    assert {f"test_direction_stability[budget={b}]" for b in (2, 4, 6, 8)} <= set(results["claims"])
    import pandas as pd

    ours = pd.read_csv(report_dir / "category_generalization_table.csv")
    fit_report = pd.read_csv(report_dir / "direction_fit_report.csv")
    study_dir = Path(os.environ.get("HARNESS_DATA_DIR") or ROOT.parent / "shared" / "data") / "gemma4_policy_reference"
    study_table = study_dir / "results" / "category_generalization_table.csv"
    if not study_table.is_file():
        pytest.skip(f"{study_table} absent: the row-by-row comparison with the study's table needs it")
    # Same columns, and row by row the same design (areas, prompt counts, repeats, reference); only figures differ.
    study = pd.read_csv(study_table)
    assert list(ours.columns) == list(study.columns)
    design = [c for c in study.columns if not c.endswith("_to_heldout")]
    assert ours[design].equals(study[design])
    assert list(fit_report.columns) == list(pd.read_csv(study_dir / "results" / "direction_fit_report.csv").columns)


@pytest.mark.parametrize("name", ["gemma-2b-it", "llama-3-8b-instruct"])
def test_rehearsal_fills_both_questions_and_keeps_the_reference_rules(name, rehearsals):
    """Refusal rates (substring) and unsafe rates (Llama Guard 2, scripted where random weights give one verdict)
    are separate rows and claims, never a "refused" count on the harm judge; the agreement of two questions is shown
    as refusal-vs-harm pairs; reference filtering and the 15-word rule are on, as the studies ran them."""
    (first, _), _ = rehearsals(name)
    code, out, report_dir = first
    assert code == 0, out[-6000:]
    results = json.loads((report_dir / "results.json").read_text())
    harm = [r for r in results["rates"] if r["judge"] == "llamaguard2"]
    refusal = [r for r in results["rates"] if r["judge"] == "substring"]
    assert harm and refusal
    assert all(r["measure"] == "unsafe rate" and "refused" not in r and r["question"] == "harm" for r in harm)
    assert all(r["measure"] == "refusal rate" and "unsafe" not in r for r in refusal)
    assert 0 < sum(r["unsafe"] for r in harm) < sum(r["n"] for r in harm)  # both verdicts: the tables are exercised
    unsafe_claims = [c for c in results["outcomes"] if c.startswith("test_unsafe_rate_rises[")]
    assert unsafe_claims and all(results["outcomes"][c] == "rehearsed" for c in unsafe_claims)
    assert all("unsafe" in results["claims"][c] and "refused" not in results["claims"][c] for c in unsafe_claims)
    assert results["setup"]["judge_cross"] and "judge_agreement" not in results["setup"]
    assert results["claims"]["test_baseline_refuses"]["harmless"]["judge"] == "substring"
    assert results["setup"]["filtering"]["counts"]
    assert results["setup"]["judges"]["llamaguard2"]["short_response_words"] == 15
    assert "stand_in" in results["setup"]["judges"]["llamaguard2"]
    report = (report_dir / "report.md").read_text()
    assert "## Unsafe rate by condition" in report and "## Refusal rate by condition" in report
    assert "llamaguard2 (harm)" not in report.split("## Refusal rate by condition")[1].split("\n## ")[0]


def test_reasoning_models_are_rehearsed_with_their_parsers(rehearsals):
    """gpt-oss completions are parsed by channel, Qwen3's by think block; random weights rarely reach an answer,
    and the report counts those instead of judging reasoning text."""
    for name, kind in (("gpt-oss-20b", "harmony"), ("qwen3-8b", "think")):
        (first, _), _ = rehearsals(name)
        results = json.loads((first[2] / "results.json").read_text())
        stats = results["setup"]["reasoning"]
        assert {s["reasoning"] for s in stats.values()} == {kind}
        assert all(0 <= s["no_answer"] <= s["n"] for s in stats.values())
        assert "## Reasoning" in (first[2] / "report.md").read_text()


@pytest.mark.parametrize("name", available_experiments())
def test_environment_record_is_complete_and_real(name, rehearsals):
    """Every field of results.json's environment record is there and says what this run used: the running
    library versions, this checkout's commit, the pinned model, the template as this tokenizer renders it,
    the hash of each dataset file read (absent ones named as such), every judge, seed and mode."""
    import hashlib

    import torch
    import transformers

    from harness.data.loading import local_copy
    from harness.report.environment import dataset_refs, git_state
    from harness.run.pins import sha256_file

    (first, _), _ = rehearsals(name)
    env = json.loads((first[2] / "results.json").read_text())["environment"]
    exp = load_experiment(name)
    sw = env["software"]
    assert (sw["torch"], sw["transformers"]) == (torch.__version__, transformers.__version__)
    assert sw["python"] and sw["harness"] and sw["device"].startswith("CPU: ")
    assert env["code"] == git_state()
    assert len(env["code"]["commit"]) == 40
    model = env["model"]
    assert (model["id"], model["revision"]) == (exp.model.id, exp.model.revision)
    assert len(model["weights_sha256"]) == 64 and "random init" in model["weights"]
    tpl = env["chat_template"]
    assert len(tpl["template_sha256"]) == 64 and len(tpl["rendered_sha256"]) == 64 and tpl["post_instruction"]
    assert env["experiment"] == {"name": f"{exp.name}-rehearse-tiny", "file_sha256": sha256_file(exp.source_file),
                                 "seed": exp.seed, "limit": env["experiment"]["limit"], "rehearsal": "tiny"}
    refs = dict(dataset_refs(exp))
    assert set(env["datasets"]) == set(refs) and refs
    for path, ref in refs.items():
        copy = local_copy(ref.name, ref)
        assert env["datasets"][path]["sha256"] == (sha256_file(copy) if copy else None), path
        assert env["datasets"][path]["revision"]
    assert sorted(env["judges"]) == sorted(exp.judges.names())  # results.json sorts its keys
    for judge in env["judges"].values():
        assert judge["name"] and judge["code"]
    rendered = hashlib.sha256(tpl["post_instruction"].encode()).hexdigest()
    assert rendered != tpl["rendered_sha256"]
